"""DTW kernels: equal to aeon's float64 reference, symmetric, zero on identical inputs, clear errors."""
import numpy as np
import pytest
from aeon.distances import dtw_distance as aeon_dtw
from hypothesis import given, settings, strategies as st

from class_ros.similarity.dtw import dtw_distance, pairwise_dtw

REL = 1e-5


def aeon_matrix(x, y):
    """Reference: aeon on (D, T) float64 arrays, one pair at a time."""
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    return np.array([[aeon_dtw(a.T, b.T) for b in y64] for a in x64])


def assert_close(ours, ref):
    ref = np.asarray(ref, np.float64)
    err = np.abs(np.asarray(ours, np.float64) - ref) / np.maximum(ref, 1e-30)
    assert np.all(err <= REL), f"max relative error {err.max():.3g}"


@pytest.mark.parametrize("n,m,T,D", [(1, 1, 1, 1), (5, 40, 16, 10), (33, 7, 16, 7), (3, 65, 5, 12), (9, 9, 32, 2)])
def test_pairwise_matches_aeon(n, m, T, D):
    rng = np.random.default_rng(n * 1000 + T)
    x = rng.normal(size=(n, T, D)).astype(np.float32)
    y = rng.uniform(-1, 1, size=(m, T, D)).astype(np.float32)
    out = pairwise_dtw(x, y)
    assert out.shape == (n, m) and out.dtype == np.float32
    assert_close(out, aeon_matrix(x, y))


@settings(max_examples=30, deadline=None)
@given(T=st.integers(1, 32), D=st.integers(1, 12), n=st.integers(1, 5), m=st.integers(1, 40), seed=st.integers(0, 2**31))
def test_hypothesis_shapes_match_aeon(T, D, n, m, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, T, D)).astype(np.float32)
    y = rng.normal(size=(m, T, D)).astype(np.float32)
    ref = aeon_matrix(x, y)
    assert_close(pairwise_dtw(x, y), ref)
    assert_close(dtw_distance(x[0], y[0]), ref[0, 0])


def test_close_pairs_keep_relative_precision():
    # Positives are the close pairs: the float32 kernel must not lose digits there (no |a|^2+|b|^2-2ab
    # cancellation). Chunks in [-1, 1] against copies moved by 1e-3.
    rng = np.random.default_rng(7)
    x = np.sin(rng.uniform(0, 6, (20, 1, 10)) + np.linspace(0, 2, 16)[None, :, None]).astype(np.float32)
    y = (x + rng.normal(0, 1e-3, x.shape)).astype(np.float32)
    ref = aeon_matrix(x, y)
    assert np.diag(ref).max() < 1e-3 * ref.mean()
    assert_close(pairwise_dtw(x, y), ref)


def test_dtw_distance_follows_the_method_recursion():
    # A hand-checked case: a = [0, 1], b = [0, 0, 1] in 1-D warps perfectly (distance 0),
    # and a = [0], b = [3] is the squared difference, no square root.
    assert dtw_distance(np.array([[0.0], [1.0], [1.0]]), np.array([[0.0], [0.0], [1.0]])) == 0.0
    assert dtw_distance(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]])) == 25.0


def test_symmetric_and_zero_on_identical():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(70, 16, 10)).astype(np.float32)
    full = pairwise_dtw(x)
    assert np.array_equal(full, full.T)
    assert np.all(np.diag(full) == 0.0)
    assert np.array_equal(pairwise_dtw(x, x.copy()), full)  # both code paths, bit for bit
    assert np.all(full[~np.eye(70, dtype=bool)] > 0)
    assert dtw_distance(x[4], x[4]) == 0.0
    assert dtw_distance(x[4], x[9]) == pytest.approx(dtw_distance(x[9], x[4]), rel=1e-12)


def test_torch_wavefront_on_cpu_tensors_matches_numba():
    from class_ros.similarity.dtw_torch import pairwise_torch
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 16, 10)).astype(np.float32)
    y = rng.normal(size=(9, 16, 10)).astype(np.float32)
    assert_close(pairwise_torch(x, y, device="cpu"), aeon_matrix(x, y))
    sym = pairwise_torch(x, device="cpu")
    assert np.array_equal(sym, sym.T) and np.all(np.diag(sym) == 0)
    np.testing.assert_allclose(sym, pairwise_dtw(x), rtol=REL)


@pytest.mark.parametrize("bad,message", [
    (np.full((2, 4, 3), np.nan), "NaN"),
    (np.full((2, 4, 3), np.inf), "inf"),
    (np.zeros((4, 3)), "3-D"),
    (np.zeros((2, 2, 4, 3)), "3-D"),
])
def test_bad_inputs_raise_value_error(bad, message):
    with pytest.raises(ValueError, match=message):
        pairwise_dtw(bad)


def test_mismatched_shapes_say_which():
    x = np.zeros((2, 4, 3), np.float32)
    with pytest.raises(ValueError, match="sequence lengths T"):
        pairwise_dtw(x, np.zeros((2, 5, 3)))
    with pytest.raises(ValueError, match="feature dims D"):
        pairwise_dtw(x, np.zeros((2, 4, 2)))
    with pytest.raises(ValueError, match="sequence lengths T"):
        dtw_distance(np.zeros((4, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="feature dims D"):
        dtw_distance(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="2-D"):
        dtw_distance(np.zeros((2, 4, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        dtw_distance(np.zeros((4, 3)), np.full((4, 3), np.nan))
    with pytest.raises(ValueError, match="device"):
        pairwise_dtw(x, device="tpu")


TRITON_CHECK = """
import numpy as np
from class_ros.similarity import dtw_triton as K
from class_ros.similarity.dtw import pairwise_dtw
K.BLOCK, K.ROWS_PER_LAUNCH = 16, 8
rng = np.random.default_rng(0)
x = rng.normal(size=(24, 4, 5)).astype(np.float32)
y = rng.normal(size=(9, 4, 5)).astype(np.float32)
np.testing.assert_allclose(K.pairwise_triton(x, y, device="cpu"), pairwise_dtw(x, y), rtol=1e-5)
sym = K.pairwise_triton(x, device="cpu")
assert np.array_equal(sym, sym.T) and np.all(np.diag(sym) == 0)
m = pairwise_dtw(x)
iu, ju = np.triu_indices(24, 1)
thr = float(np.quantile(m[iu, ju], 0.1))
i, j, d = (t.numpy() for t in K.collect_triton(x, thr, device="cpu"))
keep = m[iu, ju] <= thr
assert np.array_equal(i, iu[keep]) and np.array_equal(j, ju[keep]), "pairs differ"
np.testing.assert_allclose(d, m[iu, ju][keep], rtol=1e-5)
print("ok")
"""


def test_triton_kernel_in_the_interpreter():
    # The GPU kernel's logic (column sweep, scratch column, corner skip, abandoning), run by Triton's
    # CPU interpreter; a GPU run compiles the same source.
    import os
    import subprocess
    import sys
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
