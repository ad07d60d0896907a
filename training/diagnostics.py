"""Representation diagnostics: does the embedding know where the arm is about to go?

Retrieval grasps where its nearest demonstration went, so a representation is good for it when frames
whose next motions end in the same place sit close together. The target of frame t is the end-effector
position at the end of its action chunk (t + H - 1): the action's own position for `ee_pose` datasets,
forward kinematics of the joint targets for the built-in sim arm (other arms: no target, no diagnostics).
Three numbers, all in centimetres:

    probe_cm            held-out linear-probe error of the target from the image embedding (ridge regression
                        fitted on 4 of every 5 episodes, RMSE on the fifth): what the embedding holds
    neighbour_cm        median target distance between a frame and its nearest frame of another episode
                        (cosine over the image embedding): what retrieval would replay
    positive_pair_cm    mean target distance within DTW positive pairs, next to random pairs: what the
                        positives teach (the loss cannot make an embedding better than its positives)

    diag = diagnose(encoder, store, positives, horizon=16)    # {} when the dataset has no targets
"""
from __future__ import annotations

import numpy as np

SIM_ARM_NAMES = ("shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3", "gripper")
MAX_FRAMES = 20_000  # larger datasets are diagnosed on a random subset of frames (the neighbour search is O(N^2))


def chunk_end_positions(store, horizon: int) -> np.ndarray | None:
    """(N, 3) end-effector position (m) at the end of every frame's action chunk, or None when unknown."""
    meta = store.meta
    ends = store.action_chunks(horizon)[:, -1]  # (N, D) the last action of each chunk
    if meta.action_kind == "ee_pose":
        return ends[:, :3].astype(np.float64)
    if meta.action_kind == "joint_position" and tuple(meta.action_names) == SIM_ARM_NAMES:
        from class_ros.sim.env import ArmEnv
        from class_ros.sim.kinematics import ArmKinematics
        with ArmEnv("lift", render_images=False) as env:
            kin = ArmKinematics(env.model)
            return np.stack([kin.forward(q[:6])[0] for q in ends.astype(np.float64)])
    return None


def linear_probe_error(emb: np.ndarray, target: np.ndarray, episode: np.ndarray, ridge: float = 1e-3) -> float:
    """RMSE (target units) of a ridge regression from `emb` (N, E) to `target` (N, 3) on held-out episodes.

    Features are standardised on the training part, so `ridge` (times the frame count) means the same
    whatever the embedding's scale.
    """
    held = episode % 5 == 4
    if held.all() or not held.any():
        held = np.arange(len(emb)) % 5 == 4  # too few episodes to hold one out: hold out frames
    x = np.asarray(emb, dtype=np.float64)
    mean, std = x[~held].mean(0), np.maximum(x[~held].std(0), 1e-12)
    x = (x - mean) / std
    xt, yt = x[~held], target[~held] - target[~held].mean(0)
    w = np.linalg.solve(xt.T @ xt + ridge * len(xt) * np.eye(x.shape[1]), xt.T @ yt)
    err = x[held] @ w + target[~held].mean(0) - target[held]
    return float(np.sqrt(np.mean(np.sum(err ** 2, axis=1))))


def neighbour_target_distance(emb: np.ndarray, target: np.ndarray, episode: np.ndarray) -> float:
    """Median target distance between each frame and its nearest (cosine) frame of another episode."""
    z = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    out = np.empty(len(z))
    for start in range(0, len(z), 512):  # (512, N) similarities at a time
        sims = z[start:start + 512] @ z.T
        sims[episode[start:start + 512, None] == episode[None, :]] = -np.inf
        nearest = sims.argmax(axis=1)
        out[start:start + 512] = np.linalg.norm(target[start:start + 512] - target[nearest], axis=1)
    return float(np.median(out))


def positive_pair_target_distance(positives, target: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """(mean target distance within positive pairs, the same over as many random pairs)."""
    indptr, indices = np.asarray(positives.indptr), np.asarray(positives.indices)
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    if len(rows) == 0:
        return float("nan"), float("nan")
    pos = np.linalg.norm(target[rows] - target[indices], axis=1).mean()
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(target), len(rows)), rng.integers(0, len(target), len(rows))
    return float(pos), float(np.linalg.norm(target[a] - target[b], axis=1).mean())


def image_embeddings(encoder, store, frames: np.ndarray | None = None, batch_size: int = 256) -> np.ndarray:
    """(N, E_img) image features of `frames` (default: every frame; centre crop, no augmentation)."""
    import torch

    from class_ros.data.schema import obs_key
    names = encoder.config.image_keys
    device = next(encoder.parameters()).device
    frames = np.arange(store.n_frames) if frames is None else frames
    out = []
    with torch.no_grad():
        for start in range(0, len(frames), batch_size):
            idx = frames[start:start + batch_size]
            batch = {n: torch.from_numpy(np.asarray(store.read(obs_key(n), idx))).to(device) for n in names}
            out.append(encoder.image_features(batch, train=False).float().cpu().numpy())
    return np.concatenate(out)


def diagnose(encoder, store, positives, horizon: int, seed: int = 0) -> dict:
    """The three numbers (cm) for a trained encoder and, as the baseline, an untrained one of the same
    architecture; {} when the dataset has no end-effector targets."""
    import torch

    from class_ros.encoder.model import ObservationEncoder

    target = chunk_end_positions(store, horizon)
    if target is None:
        return {}
    rng = np.random.default_rng(seed)
    frames = np.arange(store.n_frames)
    if len(frames) > MAX_FRAMES:
        frames = np.sort(rng.choice(frames, MAX_FRAMES, replace=False))
    episode = store.episode_of(frames)
    torch.manual_seed(seed)
    untrained = ObservationEncoder(encoder.config).to(next(encoder.parameters()).device).eval()
    out = {"target": "end-effector position at the end of the action chunk", "frames": int(len(frames))}
    for name, enc in (("trained", encoder), ("untrained", untrained)):
        was = enc.training
        enc.eval()
        emb = image_embeddings(enc, store, frames)
        enc.train(was)
        out[name] = {"probe_cm": 100 * linear_probe_error(emb, target[frames], episode),
                     "neighbour_cm": 100 * neighbour_target_distance(emb, target[frames], episode)}
    if positives is not None and hasattr(positives, "indptr"):
        pos, rand = positive_pair_target_distance(positives, target, seed)
        out["positive_pair_cm"], out["random_pair_cm"] = 100 * pos, 100 * rand
    return out


def format_diagnostics(d: dict) -> str:
    """One line per number, as pretrain prints them."""
    if not d:
        return "diagnostics: none (the dataset has no end-effector positions: ee_pose actions or the sim arm)"
    t, u = d["trained"], d["untrained"]
    lines = [f"diagnostics ({d['target']}):",
             f"  linear probe error {t['probe_cm']:.2f} cm (untrained encoder {u['probe_cm']:.2f} cm)",
             f"  nearest other-episode frame's target {t['neighbour_cm']:.2f} cm away (untrained "
             f"{u['neighbour_cm']:.2f} cm): what retrieval would replay"]
    if "positive_pair_cm" in d:
        lines.append(f"  DTW positive pairs' targets {d['positive_pair_cm']:.2f} cm apart (random pairs "
                     f"{d['random_pair_cm']:.2f} cm): the best the positives can teach")
    return "\n".join(lines)
