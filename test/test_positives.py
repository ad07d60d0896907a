"""dtw_positives: exact against brute force (pairs, weights, ties), CSR batch weights, files, CLI."""
import numpy as np
import pytest
import torch

from class_ros.errors import ClassRosError
from class_ros.similarity import normalized_chunks, open_weights
from class_ros.similarity.dtw import pairwise_dtw
from class_ros.similarity.positives import Positives, dtw_positives, n_positive_pairs


def brute_force(x, quantile):
    """Dense (N, N) weights from the full distance matrix, ranked by (distance, i, j)."""
    N = len(x)
    dist = pairwise_dtw(x)
    iu, ju = np.triu_indices(N, 1)
    d = dist[iu, ju]
    k = n_positive_pairs(N, quantile)
    order = np.lexsort((ju, iu, d))[:k]
    w = np.ones(k) if k == 1 else 1.0 - np.arange(k) / max(k - 1, 1)
    W = np.zeros((N, N), np.float32)
    W[iu[order], ju[order]] = w
    W[ju[order], iu[order]] = w
    return W, d[order]


def tied_chunks(n=220, seed=0):
    """Values on a 0.5 grid (float32 sums are exact, so distances tie exactly) plus duplicated chunks."""
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(size=(n, 6, 3)) * 2) / 2
    return np.concatenate([x, x[:30], x[5:10]]).astype(np.float32)


@pytest.mark.parametrize("kwargs", [{}, {"sample_pairs": 3000}, {"initial_threshold": 0.5}])
@pytest.mark.parametrize("quantile", [0.01, 0.05])
def test_equals_brute_force_with_ties(kwargs, quantile):
    x = tied_chunks()
    W, d = brute_force(x, quantile)
    assert len(np.unique(d)) < len(d) / 3, "the data must produce many tied distances"
    pos = dtw_positives(x, quantile, **kwargs)
    assert np.array_equal(pos.dense(), W)
    assert pos.n_pairs == n_positive_pairs(len(x), quantile)
    assert pos.threshold == d[-1]
    if "initial_threshold" in kwargs:
        assert pos.passes >= 2, "a too-tight threshold must be loosened and the pass redone"


def test_sampled_threshold_on_smooth_chunks():
    # Smooth trajectories: the corner bound and early abandoning prune most pairs; still exact.
    rng = np.random.default_rng(1)
    t = np.linspace(0, 1, 16)[None, :, None]
    x = np.sin(rng.uniform(0, 6, (400, 1, 4)) + rng.uniform(0.5, 3, (400, 1, 4)) * t).astype(np.float32)
    W, _ = brute_force(x, 0.02)
    pos = dtw_positives(x, 0.02, sample_pairs=5000)
    assert pos.passes == 1 and np.array_equal(pos.dense(), W)


def test_box_bound_is_a_lower_bound_that_prunes():
    from class_ros.similarity.kernels import BOUND_SLACK, LANES, box_bound, pad_dims, to_lanes
    rng = np.random.default_rng(2)
    n = LANES * 20
    # Demonstration-like chunks move little within 16 steps: slow sines (a tenth of a cycle per chunk).
    t = np.linspace(0, 0.6, 16)[None, :, None]
    slow = np.sin(rng.uniform(0, 6, (n, 1, 10)) + rng.uniform(0.5, 1.0, (n, 1, 10)) * t).astype(np.float32)
    noise = rng.normal(size=(n, 16, 10)).astype(np.float32)
    for x, must_prune in ((slow, 0.5), (noise, 0.0)):
        x4 = pad_dims(x)
        tiles = to_lanes(x4)
        dist = pairwise_dtw(x[:10], x)
        thr = np.quantile(dist, 0.025)
        pruned = 0
        for i in range(10):
            lo, hi = x4[i].min(0), x4[i].max(0)
            lb = np.empty(LANES, np.float32)
            for b in range(len(tiles)):
                box_bound(lo, hi, tiles[b], lb)
                assert np.all(lb * BOUND_SLACK <= dist[i, b * LANES:(b + 1) * LANES])
                pruned += np.sum(lb * BOUND_SLACK > thr)
        assert pruned / dist.size >= must_prune


@pytest.mark.parametrize("n,quantile,k", [(1, 0.5, 0), (2, 0.5, 0), (2, 1.0, 1), (10, 0.025, 1), (10, 0.05, 2),
                                          (30, 0.0, 0), (12, 1.0, 66)])
def test_edge_cases_k0_k1_k2_all(n, quantile, k):
    x = np.random.default_rng(n).normal(size=(n, 4, 2)).astype(np.float32)
    pos = dtw_positives(x, quantile)
    assert pos.n_pairs == k
    W, _ = brute_force(x, quantile)
    assert np.array_equal(pos.dense(), W)
    if k == 1:
        assert pos.weight.tolist() == [1.0, 1.0]
    if k >= 2:
        assert pos.weight.max() == 1.0 and pos.weight.min() == 0.0


def test_structure_and_batch_weights():
    x = tied_chunks(seed=2)
    pos = dtw_positives(x, 0.04)
    N = len(x)
    assert pos.indptr.shape == (N + 1,) and pos.indptr[-1] == len(pos.indices)
    for a in range(N):  # rows sorted, no self pairs
        row = pos.indices[pos.indptr[a]:pos.indptr[a + 1]]
        assert np.all(np.diff(row) > 0) and a not in row
    dense = pos.dense()
    assert np.array_equal(dense, dense.T) and np.all(np.diag(dense) == 0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        idx = rng.integers(0, N, size=64)  # repeats included
        assert np.array_equal(pos.batch_weights(idx), dense[np.ix_(idx, idx)] * (idx[:, None] != idx[None, :]))
    with pytest.raises(IndexError):
        pos.batch_weights([0, N])


def test_bad_input_raises_value_error():
    with pytest.raises(ValueError, match="NaN"):
        dtw_positives(np.full((5, 4, 2), np.nan))
    with pytest.raises(ValueError, match="quantile"):
        dtw_positives(np.zeros((5, 4, 2)), 1.5)
    with pytest.raises(ValueError, match="3-D"):
        dtw_positives(np.zeros((5, 4)))


def test_torch_collect_and_csr_on_cpu_equal_numba():
    from class_ros.similarity.dtw_torch import collect_torch, positives_csr
    x = tied_chunks(seed=3)
    dist = pairwise_dtw(x)
    iu, ju = np.triu_indices(len(x), 1)
    thr = float(np.quantile(dist[iu, ju], 0.05))
    i, j, d = collect_torch(x, thr, device="cpu", block=64)
    keep = dist[iu, ju] <= thr
    assert np.array_equal(i.numpy(), iu[keep]) and np.array_equal(j.numpy(), ju[keep])
    np.testing.assert_allclose(d.numpy(), dist[iu, ju][keep], rtol=1e-5, atol=1e-6)
    # Ranking and CSR assembly of the GPU path, fed the CPU kernel's distances: identical result.
    k = n_positive_pairs(len(x), 0.03)
    exact = dtw_positives(x, 0.03)
    indptr, indices, distance, weight, last = positives_csr(
        *(torch.from_numpy(a) for a in (iu[keep].astype(np.int32), ju[keep].astype(np.int32), dist[iu, ju][keep])),
        k, len(x))
    assert np.array_equal(indptr, exact.indptr) and np.array_equal(indices, exact.indices)
    assert np.array_equal(weight, exact.weight) and np.array_equal(distance, exact.distance)
    assert last == exact.threshold


def test_save_load_roundtrip_and_refusals(tmp_path):
    x = tied_chunks(seed=4)
    pos = dtw_positives(x, 0.03)
    path = pos.save(tmp_path / "sub" / "positives.npz")
    assert sorted(p.name for p in path.parent.iterdir()) == ["positives.npz"]  # no temp file left
    back = Positives.load(path)
    for field in ("indptr", "indices", "distance", "weight"):
        assert np.array_equal(getattr(back, field), getattr(pos, field))
    assert back.threshold == pos.threshold and back.quantile == 0.03
    same = open_weights(path)
    assert isinstance(same, Positives) and np.array_equal(same.dense(), pos.dense())
    with pytest.raises(ClassRosError, match="samples"):
        open_weights(path, chunks=x[:-1])
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ClassRosError, match="readable"):
        open_weights(tmp_path / "junk.npz")
    np.savez(tmp_path / "obj.npz", kind=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ClassRosError):
        open_weights(tmp_path / "obj.npz")
    with pytest.raises(ClassRosError, match="does not exist"):
        open_weights(tmp_path / "missing.npz")


# ---------------------------------------------------------------- dataset store and CLI
def make_store(path, n_episodes=6, length=40, rot6d=False, seed=0):
    from class_ros.data.schema import DatasetMeta, KeySchema
    from class_ros.data.store import EpisodeStore
    rng = np.random.default_rng(seed)
    names = [f"a{i}" for i in range(9 if rot6d else 3)]
    meta = DatasetMeta(control_rate_hz=10, action_names=names, action_kind="ee_pose" if rot6d else "joint_position",
                       keys={"obs/joint_pos": KeySchema("float32", (2,))},
                       rot6d_dims=list(range(3, 9)) if rot6d else [])
    store = EpisodeStore.create(path, meta)
    for _ in range(n_episodes):
        t = np.linspace(0, 1, length)[:, None]
        act = (np.sin(rng.uniform(0, 6, len(names)) + 3 * t) * rng.uniform(1, 5, len(names))).astype(np.float32)
        store.append_episode({"obs/joint_pos": np.zeros((length, 2), np.float32), "action": act})
    store.finish()
    return store


def test_normalized_chunks(tmp_path):
    store = make_store(tmp_path / "ds", rot6d=True)
    chunks = normalized_chunks(store, 16)
    assert chunks.shape == (store.n_frames, 16, 9) and chunks.dtype == np.float32
    plain = chunks[..., :3]
    assert plain.min() == pytest.approx(-1, abs=1e-6) and plain.max() == pytest.approx(1, abs=1e-6)
    rot = chunks[..., 3:]
    assert rot.min() == pytest.approx(-0.5, abs=1e-6) and rot.max() == pytest.approx(0.5, abs=1e-6)
    # The chunk after the last frame of an episode repeats that frame's action.
    last = store.episode_ends[0] - 1
    assert np.all(chunks[last] == chunks[last, :1])


def test_compute_positives_and_cli(tmp_path, capsys):
    from class_ros.cli import main
    from training.dtw import compute_positives
    store = make_store(tmp_path / "ds")
    out = tmp_path / "positives.npz"
    summary = compute_positives(tmp_path / "ds", out, horizon=8, quantile=0.02)
    chunks = normalized_chunks(store, 8)
    W, d = brute_force(chunks, 0.02)
    pos = open_weights(out, chunks)
    assert np.array_equal(pos.dense(), W)
    assert summary["pairs"] == pos.n_pairs == n_positive_pairs(len(chunks), 0.02)
    assert summary["threshold"] == pytest.approx(float(d[-1]))
    capsys.readouterr()
    fly = tmp_path / "fly.npz"
    assert main(["dtw", "--dataset", str(tmp_path / "ds"), "--horizon", "8", "--quantile", "0.02",
                 "--out", str(fly), "--mode", "onthefly", "--samples", "20000"]) == 0
    printed = capsys.readouterr().out
    assert "threshold" in printed and str(fly) in printed
    assert open_weights(fly, chunks).n == len(chunks)
    assert main(["dtw", "--dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "x.npz")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not a dataset store" in err
    assert not (tmp_path / "x.npz").exists()
    assert main(["dtw", "--dataset", str(tmp_path / "ds"), "--quantile", "2", "--out", str(tmp_path / "x.npz")]) == 1
    assert "quantile" in capsys.readouterr().err


def test_positives_are_tied_to_their_dataset_and_bad_out_fails_first(tmp_path, capsys):
    from class_ros.cli import main
    from training.dtw import compute_positives
    from training.pretrain import open_positives
    store = make_store(tmp_path / "ds")
    other = make_store(tmp_path / "other", seed=1)  # the same frame count, other actions
    assert other.n_frames == store.n_frames and other.fingerprint() != store.fingerprint()
    out = tmp_path / "positives.npz"
    compute_positives(tmp_path / "ds", out, horizon=8, quantile=0.02, verbose=False)
    assert open_positives(out, store, 8).n == store.n_frames
    with pytest.raises(ClassRosError, match=f"computed from dataset {store.fingerprint()}, not from this dataset"):
        open_positives(out, other, 8)
    # --out naming a folder, or a folder that cannot be written: one line, before any DTW is computed
    (tmp_path / "adir").mkdir()
    capsys.readouterr()
    assert main(["dtw", "--dataset", str(tmp_path / "ds"), "--out", str(tmp_path / "adir")]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "is a folder" in err and "dtw:" not in capsys.readouterr().out
    # /sys refuses new files even to root (whom permission bits do not stop)
    assert main(["dtw", "--dataset", str(tmp_path / "ds"), "--out", "/sys/positives.npz"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "cannot write in /sys (Permission denied)" in err
