"""GPU DTW (Triton kernel and torch wavefront) against the CPU kernel. Skipped without CUDA.

Imports only numpy, torch and class_ros.similarity, so it runs on a GPU machine without zarr or aeon:
    python -m pytest test/test_dtw_gpu.py -m gpu -q
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from class_ros.similarity.dtw import pairwise_dtw  # noqa: E402
from class_ros.similarity.positives import dtw_positives  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]


@pytest.fixture(params=["triton", "torch"])
def backend(request, monkeypatch):
    if request.param == "torch":
        monkeypatch.setenv("CLASS_ROS_DTW_GPU", "torch")
    else:
        pytest.importorskip("triton")
    return request.param


def test_cuda_pairwise_matches_cpu(backend):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 16, 10)).astype(np.float32)
    y = rng.normal(size=(77, 16, 10)).astype(np.float32)
    np.testing.assert_allclose(pairwise_dtw(x, device="cuda"), pairwise_dtw(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pairwise_dtw(x, y, device="cuda"), pairwise_dtw(x, y), rtol=1e-5, atol=1e-5)
    odd = rng.normal(size=(40, 7, 3)).astype(np.float32)  # T and D that pad differently
    np.testing.assert_allclose(pairwise_dtw(odd, device="cuda"), pairwise_dtw(odd), rtol=1e-5, atol=1e-5)


def test_cuda_positives_match_cpu(backend):
    rng = np.random.default_rng(0)
    x = np.round(rng.normal(size=(220, 6, 3)) * 2) / 2  # a 0.5 grid: exact distances on any device, so ties match
    x = np.concatenate([x, x[:30], x[5:10]]).astype(np.float32)
    for kwargs in ({}, {"sample_pairs": 3000}, {"initial_threshold": 0.5}):
        gpu, cpu = dtw_positives(x, 0.03, device="cuda", **kwargs), dtw_positives(x, 0.03, **kwargs)
        assert np.array_equal(gpu.dense(), cpu.dense()) and gpu.threshold == cpu.threshold


def test_cuda_positives_smooth_chunks(backend):
    # Real-valued distances: the GPU sums in another order, so compare the pair sets allowing for
    # swaps at the cut-off only.
    rng = np.random.default_rng(1)
    t = np.linspace(0, 1, 16)[None, :, None]
    x = np.sin(rng.uniform(0, 6, (3000, 1, 10)) + rng.uniform(0.5, 3, (3000, 1, 10)) * t).astype(np.float32)
    gpu, cpu = dtw_positives(x, 0.02, device="cuda"), dtw_positives(x, 0.02)
    assert gpu.n_pairs == cpu.n_pairs
    assert abs(gpu.threshold - cpu.threshold) <= 1e-5 * cpu.threshold
    diff = np.abs(gpu.batch_weights(np.arange(500)) - cpu.batch_weights(np.arange(500)))
    assert diff.max() < 1e-3
