"""Retrieval index and policy: exact k=1 lookup, the weighted mean, confidence, HNSW recall, loading."""
from __future__ import annotations

import json

import numpy as np
import pytest

from class_ros.errors import ClassRosError
from test_pretrain import HORIZON, positives_of, synthetic, tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(store, run path): a briefly pre-trained run with an exact index."""
    from training.index import build_index
    from training.pretrain import pretrain

    tmp = tmp_path_factory.mktemp("retrieval")
    store, positives = synthetic(tmp, n_episodes=8, length=15)
    pretrain(tmp / "data", positives, tmp / "run", tiny_config(steps=10, batch_size=32), progress=False)
    summary = build_index(tmp / "run", tmp / "data", progress=False)
    assert summary["index_kind"] == "flat" and summary["n"] == store.n_frames
    return store, tmp / "run"


def frame_obs(store, i: int) -> dict:
    """One observation as a node hands it to the policy (names without obs/, no batch axis)."""
    return {"cam": np.asarray(store.read("obs/cam", np.array([i])))[0],
            "state": np.asarray(store.read("obs/state", np.array([i])))[0]}


def test_k1_returns_the_stored_chunk_exactly(run):
    from class_ros.policy import load_policy
    from class_ros.policy.retrieval import RetrievalPolicy

    store, path = run
    policy = RetrievalPolicy.load(path, k=1)
    chunks = store.action_chunks(HORIZON)
    for i in (0, 17, 63, store.n_frames - 1):
        got = policy.predict_action_chunk(frame_obs(store, i))
        assert got.dtype == np.float32 and got.shape == (HORIZON, 2)
        assert np.array_equal(got, chunks[i])
        assert policy.last_confidence.nearest_frame == i
        assert policy.last_confidence.nearest_distance < 1e-5
    generic = load_policy(path, kind="retrieval")
    assert (generic.action_names, generic.action_kind, generic.control_rate_hz, generic.n_action_steps) == \
        (["x", "y"], "other", 10.0, 8)
    assert generic.config.k == 64 and generic.config.tau == 0.01


def test_weighted_mean_and_sampling_follow_the_softmax(run):
    from class_ros.policy.retrieval import RetrievalPolicy, retrieval_features
    from training.index import embed_dataset

    store, path = run
    policy = RetrievalPolicy.load(path, k=5, tau=0.05)
    chunks = store.action_chunks(HORIZON)
    obs = frame_obs(store, 30)
    z = policy.embed(obs)
    raw = embed_dataset(policy.encoder, store, progress=False)
    emb = retrieval_features(raw, policy.encoder.image_dim, policy.config.proprio_weight)  # brute force, all frames
    d = 1.0 - emb @ z
    near = np.argsort(d)[:5]
    w = np.exp(-(d[near] - d[near].min()) / 0.05)
    w /= w.sum()
    want = np.tensordot(w, chunks[near].astype(np.float64), axes=1)
    np.testing.assert_allclose(policy.predict_action_chunk(obs), want, rtol=1e-4, atol=1e-5)
    conf = policy.last_confidence
    assert conf.k == 5 and 0 <= conf.weight_entropy <= np.log(5) + 1e-9
    assert conf.weight_entropy == pytest.approx(float(-(w * np.log(w)).sum()), rel=1e-3, abs=1e-6)
    sampler = RetrievalPolicy.load(path, k=5, tau=0.05, mode="sample")
    draws = [sampler.predict_action_chunk(obs) for _ in range(20)]
    assert all(any(np.array_equal(c, chunks[j]) for j in near) for c in draws)
    sampler.reset()
    assert sampler.last_confidence is None
    assert np.array_equal(sampler.predict_action_chunk(obs), draws[0])  # reset restarts the same stream
    # Batched (one encoder pass for several episodes): each row as alone, each episode's own sampling stream.
    other = frame_obs(store, 5)
    states = [sampler.new_episode_state(), sampler.new_episode_state()]
    rows = [sampler.predict_action_chunks([obs, other], states) for _ in range(3)]
    assert rows[0].shape == (2, HORIZON, 2)
    assert all(np.array_equal(r[0], d) for r, d in zip(rows, draws))
    np.testing.assert_allclose(policy.predict_action_chunks([other, obs], [None, None])[1],
                               policy.predict_action_chunk(obs), rtol=1e-4, atol=1e-5)


def test_bad_observations_are_refused(run):
    from class_ros.policy.retrieval import RetrievalPolicy

    store, path = run
    policy = RetrievalPolicy.load(path)
    obs = frame_obs(store, 0)
    with pytest.raises(ClassRosError, match="has no 'state'"):
        policy.predict_action_chunk({"cam": obs["cam"]})
    with pytest.raises(ClassRosError, match="non-finite"):
        policy.predict_action_chunk({**obs, "state": np.array([np.nan, 0.0], np.float32)})
    with pytest.raises(ClassRosError, match="index holds"):
        policy.predict_from_embedding(np.ones(5, np.float32))
    extra = {**obs, "wrist": np.zeros((4, 4, 3), np.uint8)}  # keys the encoder does not use are ignored
    assert np.array_equal(policy.predict_action_chunk(extra), policy.predict_action_chunk(obs))


def test_unfamiliar_observation_is_less_confident(run):
    from class_ros.policy.retrieval import RetrievalPolicy

    store, path = run
    policy = RetrievalPolicy.load(path)
    policy.predict_action_chunk(frame_obs(store, 5))
    seen = policy.last_confidence.nearest_distance
    odd = frame_obs(store, 5)
    odd["cam"] = np.random.default_rng(0).integers(0, 256, odd["cam"].shape, dtype=np.uint8)  # pure noise
    policy.predict_action_chunk(odd)
    assert policy.last_confidence.nearest_distance > seen + 1e-3


def test_hnsw_above_threshold_reports_recall(tmp_path, run):
    import faiss

    from class_ros.policy.retrieval import RetrievalConfig, build_faiss_index, normalize_rows, recall_at_k

    emb = normalize_rows(np.random.default_rng(0).normal(size=(3000, 32)))
    index, kind = build_faiss_index(emb, RetrievalConfig(approx_threshold=1000))
    assert kind == "hnsw" and isinstance(index, faiss.IndexHNSW)
    assert recall_at_k(index, emb, 64) > 0.9
    flat, kind = build_faiss_index(emb, RetrievalConfig())
    assert kind == "flat" and recall_at_k(flat, emb, 64) == 1.0


def test_index_cli_and_hnsw_run(tmp_path, run, capsys):
    import shutil

    from class_ros.cli import main
    from class_ros.policy.retrieval import RetrievalPolicy

    store, original = run
    path = tmp_path / "run"
    shutil.copytree(original, path)
    rc = main(["index", "--run", str(path), "--dataset", str(store.path), "--approx-threshold", "10", "--k", "4"])
    out = capsys.readouterr().out
    assert rc == 0 and "hnsw index" in out and str(path / "index") in out
    info = json.loads((path / "index" / "index.json").read_text())
    assert info["index_kind"] == "hnsw" and info["recall_at_4"] > 0.9
    policy = RetrievalPolicy.load(path)
    assert policy.config.k == 4
    assert policy.predict_action_chunk(frame_obs(store, 3)).shape == (HORIZON, 2)


def test_missing_or_damaged_index_is_refused(tmp_path, run):
    import shutil

    from class_ros.policy.retrieval import RetrievalPolicy

    store, path = run
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    data = (copy / "index" / "data.npz").read_bytes()
    (copy / "index" / "data.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ClassRosError, match="truncated"):
        RetrievalPolicy.load(copy)
    (copy / "index" / "data.npz").write_bytes(data)
    RetrievalPolicy.load(copy)  # restored
    from class_ros.data.rundir import RunDir
    run = RunDir.open(copy)
    weights = run.load_weights("encoder")
    weights["raw"] = {k: v + 1 if v.is_floating_point() else v for k, v in weights["raw"].items()}
    run.save_weights("encoder", weights)  # as if training went on after the index was built
    with pytest.raises(ClassRosError, match="other encoder weights"):
        RetrievalPolicy.load(copy)
    # an index copied into another run (same dataset, its own training) is refused too
    from training.pretrain import pretrain
    pretrain(store.path, positives_of(store), tmp_path / "other", tiny_config(steps=1, batch_size=8), progress=False)
    shutil.copytree(path / "index", tmp_path / "other" / "index")
    with pytest.raises(ClassRosError, match="index was built from another run"):
        RetrievalPolicy.load(tmp_path / "other")
    shutil.rmtree(copy / "index")
    with pytest.raises(ClassRosError, match="no retrieval index"):
        RetrievalPolicy.load(copy)
    with pytest.raises(ClassRosError, match="not one of"):
        from class_ros.policy import load_policy
        load_policy(path, kind="lookup")


def test_retrieval_features_balance_image_and_proprio():
    from class_ros.policy.retrieval import RetrievalConfig, retrieval_features

    raw = np.array([[3.0, 4.0, 0.5, -0.5, 0.5, -0.5], [0.0, 0.1, 0.0, 0.0, 0.0, 0.0]], np.float32)
    # weight 1: unit image part (0.6, 0.8) and proprio at RMS 0.5 -> norm 0.5, then all rows to unit norm
    want = np.array([0.6, 0.8, 0.25, -0.25, 0.25, -0.25]) / np.sqrt(1.25)
    np.testing.assert_allclose(retrieval_features(raw, 2, 1.0)[0], want, rtol=1e-6)
    np.testing.assert_allclose(retrieval_features(raw, 2, 0.0)[0], [0.6, 0.8, 0, 0, 0, 0], atol=1e-7)
    np.testing.assert_allclose(retrieval_features(raw, 2, 1.0)[1], [0, 1, 0, 0, 0, 0], atol=1e-7)  # small image
    with pytest.raises(ClassRosError, match="proprio_weight"):
        RetrievalConfig(proprio_weight=-1.0)


def test_view_weights_scale_each_camera_to_unit_norm_then_by_its_weight():
    from class_ros.policy.retrieval import RetrievalConfig, retrieval_features, view_scales

    raw = np.array([[3.0, 4.0, 0.0, 10.0, 0.5, -0.5]], np.float32)  # camera a (3, 4), camera b (0, 10), proprio
    # together (no weights): the image part (3, 4, 0, 10) / sqrt(125), so camera b counts more by its scale
    np.testing.assert_allclose(retrieval_features(raw, 4, 0.0)[0], [3, 4, 0, 10, 0, 0] / np.sqrt(125.0), rtol=1e-6)
    # per camera: a -> (0.6, 0.8), b -> (0, 1) * 4, then the image part to unit norm
    want = np.array([0.6, 0.8, 0.0, 4.0, 0, 0]) / np.sqrt(17.0)
    np.testing.assert_allclose(retrieval_features(raw, 4, 0.0, [1.0, 4.0])[0], want, rtol=1e-6)
    np.testing.assert_allclose(retrieval_features(raw, 4, 0.0, [0.0, 1.0])[0], [0, 0, 0, 1, 0, 0], atol=1e-7)
    cfg = RetrievalConfig(view_weights={"b": 4})
    assert view_scales(cfg, ["a", "b"]) == [1.0, 4.0] and view_scales(RetrievalConfig(), ["a", "b"]) is None
    with pytest.raises(ClassRosError, match=r"view_weights name cameras \['c'\] that the encoder does not have"):
        view_scales(RetrievalConfig(view_weights={"c": 2}), ["a", "b"])
    with pytest.raises(ClassRosError, match="give every camera weight 0"):
        view_scales(RetrievalConfig(view_weights={"a": 0, "b": 0}), ["a", "b"])
    for bad in ({"a": -1}, {"a": float("nan")}, {"a": "2"}, [2.0]):
        with pytest.raises(ClassRosError, match="view_weights must map camera names to finite weights >= 0"):
            RetrievalConfig(view_weights=bad)


def test_a_two_camera_index_with_view_weights_matches_its_queries(tmp_path):
    """The rows and the queries use the same per-camera weights; a load-time change is refused."""
    from tiny_run import make_sim_layout_run

    from class_ros.data.store import EpisodeStore
    from class_ros.policy.retrieval import RetrievalPolicy
    from training.index import build_index, parse_view_weights

    path = make_sim_layout_run(tmp_path, n_episodes=2, length=12, cameras=("agentview", "wrist"))
    assert parse_view_weights(["wrist=4"]) == {"wrist": 4.0} and parse_view_weights(None) is None
    with pytest.raises(ClassRosError, match="--view-weight wants CAMERA=WEIGHT"):
        parse_view_weights(["wrist"])
    summary = build_index(path, tmp_path / "dataset", k=1, view_weights={"wrist": 4.0}, progress=False)
    assert summary["config"]["view_weights"] == {"wrist": 4.0}
    policy = RetrievalPolicy.load(path)
    store = EpisodeStore.open(tmp_path / "dataset")
    chunks = store.action_chunks(policy.horizon)
    for i in (0, 7, store.n_frames - 1):
        obs = {name: np.asarray(store.read(f"obs/{name}", np.array([i])))[0]
               for name in ("agentview", "wrist", "joint_pos")}
        assert np.array_equal(policy.predict_action_chunk(obs), chunks[i])
        assert policy.last_confidence.nearest_distance < 1e-5  # the query is its own stored row
    with pytest.raises(ClassRosError, match="view_weights cannot change when loading"):
        RetrievalPolicy.load(path, view_weights={"wrist": 1.0})
    with pytest.raises(ClassRosError, match="name cameras \\['wirst'\\]"):
        build_index(path, tmp_path / "dataset", view_weights={"wirst": 4.0}, progress=False)


def test_load_time_overrides_change_queries_not_the_stored_rows(run):
    """Query settings may change at load; settings baked into the rows refuse (they would silently disagree)."""
    from class_ros.policy.retrieval import RetrievalPolicy, stored_config

    store, path = run
    policy = RetrievalPolicy.load(path, k=3, tau=0.5, mode="sample")
    assert (policy.config.k, policy.config.tau, policy.config.mode) == (3, 0.5, "sample")
    same = RetrievalPolicy.load(path, proprio_weight=policy.config.proprio_weight)  # no change: fine
    assert same.config.proprio_weight == policy.config.proprio_weight
    with pytest.raises(ClassRosError, match=r"proprio_weight cannot change when loading.*class-ros index"):
        RetrievalPolicy.load(path, proprio_weight=policy.config.proprio_weight + 1.0)
    with pytest.raises(ClassRosError, match="unknown retrieval config keys \\['kk'\\]"):
        RetrievalPolicy.load(path, kk=3)
    saved = json.loads((path / "index" / "index.json").read_text())["config"]
    old = {k: v for k, v in saved.items() if k != "proprio_weight"}  # an index from before proprio_weight
    with pytest.raises(ClassRosError, match="older class_ros whose index features differ; rebuild"):
        stored_config(old, path / "index", {})
    assert stored_config(saved, path / "index", {"k": 2}).k == 2
    before_relative = {k: v for k, v in saved.items() if k != "relative"}  # its chunks are absolute targets
    assert stored_config(before_relative, path / "index", {}).relative is False


def test_a_relative_index_replays_arm_offsets_from_the_measured_joints(tmp_path):
    """Arm targets are stored minus the frame's joints and come back plus the query's; the gripper stays absolute."""
    from tiny_run import make_sim_layout_run

    from class_ros.data.store import EpisodeStore
    from class_ros.policy.retrieval import RetrievalPolicy
    from training.index import build_index

    path = make_sim_layout_run(tmp_path, n_episodes=2, length=12, cameras=("agentview",))
    store = EpisodeStore.open(tmp_path / "dataset")
    arm = store.meta.action_names[:6]
    summary = build_index(path, tmp_path / "dataset", k=1, relative=True, progress=False)
    assert summary["config"]["relative"] is True and summary["relative_actions"] == arm  # not "gripper"
    policy = RetrievalPolicy.load(path)
    chunks = store.action_chunks(policy.horizon)
    i = 9
    obs = {name: np.asarray(store.read(f"obs/{name}", np.array([i])))[0] for name in ("agentview", "joint_pos")}
    stored = policy.chunks[i]
    np.testing.assert_allclose(stored[:, :6], chunks[i][:, :6] - obs["joint_pos"][:6], rtol=0, atol=1e-6)
    assert np.array_equal(stored[:, 6], chunks[i][:, 6])
    # The same neighbour seen from an arm 0.1 rad further on every joint: its motion, shifted by 0.1.
    moved = obs["joint_pos"] + np.float32(0.1)
    got = policy.predict_from_embedding(policy.embed(obs), joints=moved)
    assert policy.last_confidence.nearest_frame == i
    np.testing.assert_allclose(got[:, :6], chunks[i][:, :6] + 0.1, rtol=0, atol=1e-5)
    assert np.array_equal(got[:, 6], chunks[i][:, 6])
    for joints, why in ((None, "got none"), (moved[:3], "got 3 values"), (np.full(7, np.nan), "not all finite")):
        with pytest.raises(ClassRosError, match=f"relative to the measured joints.*{why}"):
            policy.predict_from_embedding(policy.embed(obs), joints=joints)
    with pytest.raises(ClassRosError, match="relative cannot change when loading"):
        RetrievalPolicy.load(path, relative=False)  # the rows hold offsets

    summary = build_index(path, tmp_path / "dataset", k=1, progress=False)  # the default: absolute targets
    assert summary["config"]["relative"] is False and summary["relative_actions"] == []
    absolute = RetrievalPolicy.load(path)
    assert np.array_equal(absolute.predict_from_embedding(absolute.embed(obs), joints=moved), chunks[i])


def test_every_config_refuses_unknown_keys_naming_the_valid_ones():
    from class_ros.data.schema import DatasetMeta
    from class_ros.encoder.config import EncoderConfig
    from class_ros.policy.diffusion import DiffusionConfig
    from class_ros.policy.retrieval import RetrievalConfig
    from class_ros.policy.unet import UNetConfig
    from training.finetune import FinetuneConfig
    from training.pretrain import PretrainConfig

    for cls, name in ((RetrievalConfig, "retrieval"), (UNetConfig, "unet"), (DiffusionConfig, "diffusion"),
                      (EncoderConfig, "encoder"), (PretrainConfig, "pretrain"), (FinetuneConfig, "finetune")):
        with pytest.raises(ClassRosError, match=rf"unknown {name} config keys \['bogus'\]; valid keys are \[.*\]"):
            cls.from_dict({"bogus": 1})
    with pytest.raises(ClassRosError, match=r"unknown unet config keys \['widths'\]"):
        DiffusionConfig.from_dict({"unet": {"widths": [8]}})  # nested: the U-Net's own keys
    meta = DatasetMeta(control_rate_hz=10.0, action_names=["a"], action_kind="other", keys={}).to_dict()
    with pytest.raises(ClassRosError, match=r"unknown dataset metadata config keys \['colour'\]"):
        DatasetMeta.from_dict({**meta, "colour": "red"})
