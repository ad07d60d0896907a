"""Gathering the report's inputs from a real demo run: the dataset, positives, runs and evaluation JSON.

    inputs = gather_inputs("runs/demo", cfg, stages=table)   # a ReportInputs; missing parts become notes
    write_report("runs/demo", inputs)                       # training/report.py
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from class_ros.data.schema import ACTION, OBS_PREFIX
from class_ros.errors import ClassRosError
from training.report import ReportInputs


class _Missing(Exception):
    """A report section cannot be drawn; the message says why (shown in the report)."""


def gather_inputs(demo_dir: str | os.PathLike, cfg: dict, stages: list[dict] | None = None) -> ReportInputs:
    """Read a demo folder (dataset, positives, run, evaluations) into ReportInputs; gaps are explained."""
    demo = Path(demo_dir)
    inputs = ReportInputs(title=f"class_ros demo: `{cfg['task']}` with camera shift", stages=list(stages or []),
                          config={"task": cfg["task"], "demonstrations": cfg["sim_demos"]["episodes"],
                                  "cameras": ", ".join(cfg["sim_demos"].get("cameras", ["agentview"])),
                                  "agentview poses": cfg["sim_demos"]["camera"], "seed": cfg["seed"],
                                  "DTW horizon": cfg["dtw"]["horizon"], "quantile": cfg["dtw"]["quantile"]})
    rng = np.random.default_rng(cfg["seed"])
    sections = (("dtw", _gather_dtw), ("positives", _gather_positives), ("embeddings", _gather_embeddings),
                ("diagnostics", _gather_diagnostics), ("neighbours", _gather_neighbours),
                ("success", _gather_success), ("latency", _gather_latency))
    for name, gather in sections:
        try:
            gather(demo, cfg, inputs, rng)
        except _Missing as why:
            inputs.notes[name] = str(why)
        except ClassRosError as err:  # e.g. a run without an index: the section says what is wrong
            inputs.notes[name] = str(err).rstrip(".")
    if not inputs.stages:
        inputs.notes["stages"] = "no stage table was given"
    return inputs


def _need(path: Path, stage: str) -> Path:
    if not path.exists():
        raise _Missing(f"`{path.name}` is missing: the {stage} stage did not run (see the pipeline table)")
    return path


def _store(demo: Path):
    from class_ros.data.store import EpisodeStore
    return EpisodeStore.open(_need(demo / "dataset", "convert"))


def _load_positives(demo: Path) -> dict[str, np.ndarray]:
    with np.load(_need(demo / "positives.npz", "dtw"), allow_pickle=False) as z:
        return {k: z[k] for k in ("indptr", "indices", "distance", "weight")}


def _camera_key(store) -> str:
    return store.meta.image_keys[0]


def _gather_dtw(demo, cfg, inputs, rng) -> None:
    pos = _load_positives(demo)
    store = _store(demo)
    from class_ros.similarity import normalized_chunks
    from class_ros.similarity.dtw import pairwise_dtw
    chunks = normalized_chunks(store, cfg["dtw"]["horizon"])  # (N, H, D)
    sub = chunks[np.sort(rng.choice(len(chunks), min(len(chunks), cfg["report"]["dtw_sample"]), replace=False))]
    dist = pairwise_dtw(sub)  # (M, M)
    inputs.dtw_sample = dist[np.triu_indices(len(sub), k=1)]
    inputs.dtw_threshold = float(pos["distance"].max()) if len(pos["distance"]) else 0.0
    inputs.dtw_pairs = int(len(pos["indices"]) // 2)  # the CSR holds both (i, j) and (j, i)
    inputs.dtw_quantile = float(cfg["dtw"]["quantile"])


def _gather_positives(demo, cfg, inputs, rng) -> None:
    pos = _load_positives(demo)
    store = _store(demo)
    n_anchor, n_pos = cfg["report"]["anchors"], cfg["report"]["positives"]
    episode = np.searchsorted(store.episode_ends, np.arange(store.n_frames), side="right")
    if len(pos["indices"]) == 0:
        raise _Missing("the DTW stage found no positive pairs")
    rows = np.repeat(np.arange(len(pos["indptr"]) - 1), np.diff(pos["indptr"]))
    cross = episode[pos["indices"]] != episode[rows]
    # Anchors whose positives include other episodes (other camera poses) show the point of the method;
    # neighbouring frames of one episode are positives too, but trivially so.
    if cross.any():
        # Rows whose positives span the most other episodes show the most camera poses.
        pairs = np.unique(np.stack([rows[cross], episode[pos["indices"][cross]]]), axis=1)
        n_views = np.bincount(pairs[0], minlength=store.n_frames)
        eligible = np.flatnonzero(n_views >= min(n_pos, n_views.max()))
    else:
        eligible = np.unique(rows)
    # Anchors spread over the dataset (so over episodes and task phases), not the most crowded rows.
    anchors = eligible[np.linspace(0, len(eligible) - 1, min(n_anchor, len(eligible))).astype(int)]
    chosen = []
    for a in anchors:
        lo, hi = pos["indptr"][a], pos["indptr"][a + 1]
        idx, w = pos["indices"][lo:hi], pos["weight"][lo:hi]
        # Prefer positives from other episodes (other camera poses), the best one per episode first:
        # consecutive frames of one episode are near-duplicates and would fill the row with one view.
        order = np.lexsort((-w, episode[idx] == episode[a]))  # other episodes first, then by weight
        _, first = np.unique(episode[idx[order]], return_index=True)
        lead = np.sort(first)  # positions in `order` of each episode's best positive ...
        lead = lead[episode[idx[order[lead]]] != episode[a]]  # ... from the other episodes
        order = order[np.concatenate([lead, np.setdiff1d(np.arange(len(order)), lead)])][:n_pos]
        chosen.append((idx[order], w[order]))
    k = min(len(c[0]) for c in chosen)
    key = _camera_key(store)
    inputs.anchor_images = store.read(key, anchors)
    inputs.anchor_episodes = episode[anchors]
    pos_idx = np.stack([c[0][:k] for c in chosen])
    inputs.positive_images = store.read(key, pos_idx.reshape(-1)).reshape(*pos_idx.shape, *inputs.anchor_images.shape[1:])
    inputs.positive_episodes = episode[pos_idx]
    inputs.positive_weights = np.stack([c[1][:k] for c in chosen])


PHASE_NAMES = ["approach", "descend", "grasp and lift"]


def task_phases(actions: np.ndarray, episode_ends: np.ndarray, gripper_dim: int = -1) -> np.ndarray:
    """(N,) phase per frame from the gripper command: before it closes, first half 0 and second half 1; then 2."""
    phase = np.zeros(len(actions), dtype=np.int64)
    start = 0
    for end in episode_ends:
        closed = np.flatnonzero(actions[start:end, gripper_dim] > 0.5)
        grasp = int(closed[0]) if len(closed) else end - start
        t = np.arange(end - start)
        phase[start:end] = np.where(t >= grasp, 2, np.where(t >= grasp // 2, 1, 0))
        start = end
    return phase


def _encoders(demo: Path, seed: int):
    """(random-init encoder, pre-trained EMA encoder) of the demo's CLASS run, in eval mode on the CPU."""
    import torch
    from class_ros.encoder.model import ObservationEncoder, load_encoder
    after = load_encoder(_need(demo / "class_run", "pretrain"))
    torch.manual_seed(seed)
    before = ObservationEncoder(after.config).eval()
    return before, after


def _gather_diagnostics(demo, cfg, inputs, rng) -> None:
    from class_ros.data.rundir import RunDir
    run = RunDir.open(_need(demo / "class_run", "pretrain"), kind="encoder")
    inputs.diagnostics = run.meta.get("pretrain_summary", {}).get("diagnostics") or {}
    if not inputs.diagnostics:
        raise _Missing("pre-training recorded no diagnostics (the dataset has no end-effector targets)")


def _gather_embeddings(demo, cfg, inputs, rng) -> None:
    store = _store(demo)
    before, after = _encoders(demo, cfg["seed"])
    idx = np.unique(np.linspace(0, store.n_frames - 1, min(store.n_frames, cfg["report"]["embed_frames"])).astype(int))
    from training.diagnostics import image_embeddings
    # Image features only: they are what the contrastive loss shapes (proprio would give the phase away).
    inputs.emb_before = image_embeddings(before, store, idx)
    inputs.emb_after = image_embeddings(after, store, idx)
    actions = np.asarray(store.array(ACTION)[: store.n_frames])
    inputs.phase = task_phases(actions, store.episode_ends)[idx]
    inputs.phase_names = PHASE_NAMES
    inputs.camera = np.searchsorted(store.episode_ends, idx, side="right")


def heldout_frames(task: str, n: int, seed: int, image_size, cameras=("agentview",)) -> list[dict]:
    """`n` observations from `heldout` cameras (a new pose per frame), spread over scripted-expert episodes."""
    from class_ros.sim.env import ArmEnv
    from class_ros.sim.expert import make_expert
    frames = []
    with ArmEnv(task, camera="heldout", image_size=tuple(image_size), cameras=cameras) as env:
        for q in range(n):
            obs, done = env.reset(seed + q), False
            expert = make_expert(task, np.random.default_rng(seed + q))
            episode = [obs]
            while not done:
                obs, _, done, _ = env.step(expert.act(env))
                episode.append(obs)
            frames.append(episode[int((q + 0.5) / n * len(episode))])  # query q from phase (q + 0.5) / n
    return frames


def _gather_neighbours(demo, cfg, inputs, rng) -> None:
    from class_ros.policy import load_policy
    from class_ros.policy.retrieval import normalize_rows
    store = _store(demo)
    policy = load_policy(_need(demo / "class_run", "pretrain"), kind="retrieval")
    key = _camera_key(store)
    camera = key.removeprefix(OBS_PREFIX)
    from training.evaluate import policy_cameras
    queries = heldout_frames(cfg["task"], cfg["report"]["queries"], cfg["seed"] + 777,
                             store.meta.keys[key].shape[:2], policy_cameras(policy))
    k = cfg["report"]["neighbours"]
    feats = normalize_rows(np.stack([policy.embed(obs) for obs in queries]).astype(np.float32))
    sims, ids = policy.index.search(feats, k)  # the policy's own index: what it would retrieve
    frames = policy.frames[ids]  # (Q, K) dataset frames
    inputs.query_images = np.stack([obs[camera] for obs in queries])
    inputs.neighbour_images = store.read(key, frames.reshape(-1)).reshape(*frames.shape, *inputs.query_images.shape[1:])
    inputs.neighbour_distances = 1.0 - sims.astype(np.float64)


def success_record(res: dict, via: str) -> dict:
    """An evaluation dict (direct or through ROS) as {"successes", "episodes", "ci_low", "ci_high", "via"}."""
    n = res.get("episodes", res.get("n_episodes", 0))
    n = len(n) if isinstance(n, list) else int(n)  # older closed-loop files list their episodes
    if "successes" in res:
        s = int(res["successes"])
    else:
        s = int(round(float(res["success_rate"]) * n))
    rec = {"successes": s, "episodes": n, "via": via}
    ci = res.get("ci95") or res.get("ci")
    if ci is not None:
        rec["ci_low"], rec["ci_high"] = float(ci[0]), float(ci[1])
    elif "ci_low" in res:
        rec["ci_low"], rec["ci_high"] = float(res["ci_low"]), float(res["ci_high"])
    return rec


def _gather_success(demo, cfg, inputs, rng) -> None:
    for camera in cfg["evaluate"]["cameras"]:
        path = demo / "eval" / f"{camera}.json"
        if path.exists():
            inputs.success[camera] = success_record(json.loads(path.read_text()), "direct")
    for camera in cfg["evaluate"]["cameras"]:  # the ceiling: the same scenes, driven by the true state
        path = demo / "oracle" / f"{camera}.json"
        if path.exists():
            inputs.success[f"{camera} (oracle: true cube position)"] = success_record(json.loads(path.read_text()),
                                                                                       "direct")
    loop = demo / "closed_loop.json"
    if loop.exists():
        inputs.success[f"{cfg['closed_loop']['camera']} (ROS graph)"] = success_record(
            json.loads(loop.read_text()), "ROS")
    if not inputs.success:
        raise _Missing("neither the evaluate nor the closed-loop stage ran (see the pipeline table)")


def _gather_latency(demo, cfg, inputs, rng) -> None:
    res = json.loads(_need(demo / "closed_loop.json", "closed-loop").read_text())
    if res.get("latency_ms"):
        inputs.latency_ms = np.asarray(res["latency_ms"], dtype=np.float64)
    elif res.get("latency_s"):
        inputs.latency_ms = 1000.0 * np.asarray(res["latency_s"], dtype=np.float64)
    else:
        raise _Missing("the closed-loop run recorded no latency samples")
