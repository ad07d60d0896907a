"""On-the-fly weights: within their documented tolerance of the exact weights, and refused when misused."""
import numpy as np
import pytest

from class_ros.errors import ClassRosError
from class_ros.similarity import open_weights
from class_ros.similarity.onthefly import OnTheFlyWeights
from class_ros.similarity.positives import dtw_positives


def smooth_chunks(n=1200, seed=0):
    """Chunks cut from smooth trajectories, like demonstrations: (N, 16, 4)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, 16)[None, :, None]
    phase, speed = rng.uniform(0, 6, (n, 1, 4)), rng.uniform(0.5, 3, (n, 1, 4))
    return np.sin(phase + speed * t).astype(np.float32)


def test_weights_within_tolerance_of_exact():
    x = smooth_chunks()
    q = 0.05
    exact = dtw_positives(x, q)
    fly = OnTheFlyWeights.fit(x, q, n_samples=300_000)
    tol = fly.tolerance()
    assert tol == pytest.approx(4 / np.sqrt(q * fly.n_sampled))
    assert tol < 0.05
    rng = np.random.default_rng(1)
    # Batches rich in positives: both ends of random exact positive pairs, plus random fill.
    rows = np.repeat(np.arange(exact.n), np.diff(exact.indptr))
    worst, errs = 0.0, []
    for _ in range(4):
        picks = rng.choice(len(rows), 40, replace=False)
        idx = np.concatenate([rows[picks], exact.indices[picks], rng.integers(0, exact.n, 80)])
        ours, truth = fly.batch_weights(idx), exact.batch_weights(idx)
        assert ours.shape == (160, 160) and ours.dtype == np.float32
        assert np.array_equal(ours, ours.T) and np.all(np.diag(ours) == 0)
        assert (truth > 0).sum() > 80, "the batch must hold positives to compare"
        worst = max(worst, float(np.abs(ours - truth).max()))
        errs.append(np.abs(ours - truth)[truth > 0].mean())
    assert worst <= tol, f"max deviation {worst:.4f} above the documented tolerance {tol:.4f}"
    assert np.mean(errs) < tol / 3  # typical error well inside the bound


def test_save_open_and_refusals(tmp_path):
    x = smooth_chunks(300, seed=2)
    fly = OnTheFlyWeights.fit(x, 0.05, n_samples=20_000)
    path = fly.save(tmp_path / "fly.npz")
    back = open_weights(path, chunks=x)
    idx = np.arange(0, 300, 3)
    assert np.array_equal(back.batch_weights(idx), fly.batch_weights(idx))
    with pytest.raises(ClassRosError, match="normalised action chunks"):
        open_weights(path)
    with pytest.raises(ClassRosError, match="300 chunks"):
        open_weights(path, chunks=x[:299])
    with pytest.raises(IndexError):
        back.batch_weights([300])


def test_tiny_datasets():
    x = smooth_chunks(2, seed=3)
    assert np.all(OnTheFlyWeights.fit(x, 0.5, n_samples=100).batch_weights([0, 1]) == 0)  # k = 0
    fly = OnTheFlyWeights.fit(x, 1.0, n_samples=100)  # k = 1: the one pair
    assert fly.batch_weights([0, 1]).tolist() == [[0.0, 1.0], [1.0, 0.0]]
