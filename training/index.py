"""Build the retrieval index of a pre-training run: embed every dataset frame with the EMA encoder.

Usage:
    class-ros index --run runs/class --dataset data/sim
    class-ros index --run runs/class --dataset data/sim --k 32 --tau 0.02 --mode sample
    class-ros index --run runs/class --dataset data/sim --view-weight wrist=4   # two cameras, weighted

Features are the policy's observation feature: unit-norm image features and the normalised proprio scaled
by --proprio-weight, L2-normalised together (class_ros.policy.retrieval.retrieval_features).
With --view-weight CAMERA=W, each camera's features are first scaled to unit norm times its weight.
Up to --approx-threshold rows the index is exact (faiss inner product); above it an HNSW index is built
and its recall@k against exact search is measured and stored. The index, the aligned action chunks and
the settings go to RUN/index/. With --relative, arm joint targets are stored as offsets from each frame's
measured joints and replayed from the query's (RetrievalConfig.relative: for a scene camera that moves).
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from class_ros.errors import ClassRosError


def embed_dataset(encoder, store, batch_size: int = 256, device: str = "cpu", progress: bool = True) -> np.ndarray:
    """(N, F) float32 observation features of every frame, in frame order (evaluation mode: centre crop)."""
    import torch
    from tqdm import tqdm

    from class_ros.data.schema import obs_key

    cfg = encoder.config
    names = cfg.image_keys + cfg.proprio_keys
    encoder.eval()
    out = []
    for start in tqdm(range(0, store.n_frames, batch_size), desc="embed", disable=not progress):
        idx = np.arange(start, min(start + batch_size, store.n_frames))
        batch = {n: torch.from_numpy(np.asarray(store.read(obs_key(n), idx))).to(device) for n in names}
        with torch.no_grad():
            out.append(encoder(batch).float().cpu().numpy())
    return np.concatenate(out)


def build_index(run, dataset, *, k: int | None = None, tau: float | None = None, mode: str | None = None,
                n_action_steps: int | None = None, approx_threshold: int | None = None, device: str | None = None,
                proprio_weight: float | None = None, view_weights: dict | None = None, relative: bool | None = None,
                progress: bool = True, allow_partial: bool = False) -> dict:
    """Embed `dataset` with the EMA encoder of `run`, build and save the faiss index; returns a summary."""
    import torch

    from class_ros.data.rundir import RunDir
    from class_ros.data.schema import obs_key
    from class_ros.data.store import EpisodeStore
    from class_ros.encoder.model import load_encoder
    from class_ros.policy.retrieval import (RetrievalConfig, build_faiss_index, recall_at_k, relative_dims,
                                           retrieval_features, save_index, view_scales)

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    store = EpisodeStore.open(dataset)
    rd = RunDir.open(run, "encoder", store=store)
    note = rd.check_finished(allow_partial)
    if note and progress:
        print(f"index: warning: {note}")
    overrides = {key: v for key, v in dict(k=k, tau=tau, mode=mode, n_action_steps=n_action_steps,
                                           approx_threshold=approx_threshold, proprio_weight=proprio_weight,
                                           view_weights=view_weights, relative=relative).items()
                 if v is not None}
    cfg = RetrievalConfig(**overrides)
    config = rd.load_config()
    encoder = load_encoder(rd, device, allow_partial=allow_partial)

    t0 = time.perf_counter()
    raw = embed_dataset(encoder, store, device=device, progress=progress)
    emb = retrieval_features(raw, encoder.image_dim, cfg.proprio_weight,
                             view_scales(cfg, encoder.config.image_keys))  # (N, F) unit rows
    embed_s = time.perf_counter() - t0
    chunks = store.action_chunks(int(config.get("dist_horizon", 16)))  # (N, H, D) unnormalised
    frames = np.arange(store.n_frames)
    pairs = relative_dims(rd.meta, encoder.config.proprio_keys) if cfg.relative else []
    if pairs:  # offsets from each frame's measured joints (RetrievalConfig.relative)
        a, p = (np.array(d) for d in zip(*pairs))
        chunks[:, :, a] -= store.read(obs_key(encoder.config.proprio_keys[0]), frames)[:, None, p]
    t0 = time.perf_counter()
    index, kind = build_faiss_index(emb, cfg)
    build_s = time.perf_counter() - t0
    recall = 1.0 if kind == "flat" else recall_at_k(index, emb, cfg.k)
    info = {"config": dataclasses.asdict(cfg), "index_kind": kind, "n": int(len(emb)), "dim": int(emb.shape[1]),
            "horizon": int(chunks.shape[1]), f"recall_at_{cfg.k}": recall,
            "relative_actions": [store.meta.action_names[a] for a, _ in pairs],
            "dataset_fingerprint": store.fingerprint(), "dataset_path": str(store.path),
            "encoder_sha256": rd.meta["files"]["encoder.safetensors"]["sha256"]}
    folder = save_index(rd, index, chunks, frames, store.episode_of(frames), info)
    return {**info, "path": str(folder), "embed_s": embed_s, "build_s": build_s}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="pre-training run directory (from `class-ros pretrain`)")
    parser.add_argument("--dataset", required=True, help="the dataset the run was pre-trained on")
    parser.add_argument("--k", type=int, default=None, help="neighbours per query (default 64)")
    parser.add_argument("--tau", type=float, default=None, help="softmax temperature over 1 - cos (default 0.01)")
    parser.add_argument("--mode", choices=("mean", "sample"), default=None, help="weighted mean (default) or sample")
    parser.add_argument("--n-action-steps", type=int, default=None, help="steps executed per chunk (default 8)")
    parser.add_argument("--approx-threshold", type=int, default=None,
                        help="rows above which an approximate (HNSW) index is built (default 50000)")
    parser.add_argument("--proprio-weight", type=float, default=None,
                        help="weight of the joint state against the image part of the feature (default 4.0)")
    parser.add_argument("--view-weight", action="append", default=None, metavar="CAMERA=WEIGHT",
                        help="scale each camera's features to unit norm times WEIGHT (1 for cameras not named); "
                             "repeat per camera, e.g. --view-weight wrist=4 (default: the cameras scaled together)")
    parser.add_argument("--relative", action=argparse.BooleanOptionalAction, default=None,
                        help="store arm joint targets as offsets from each frame's measured joints and replay them "
                             "from the arm's (default: absolute targets; the demo's moving cameras use --relative)")
    parser.add_argument("--device", default=None, help="torch device for embedding (default: cuda if available)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="index an unfinished run (a killed or stopped pretrain) with its last checkpoint")


def parse_view_weights(items: list[str] | None) -> dict | None:
    """["wrist=2", "agentview=1"] -> {"wrist": 2.0, "agentview": 1.0}; None stays None."""
    if items is None:
        return None
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = None
        if not (sep and name) or weight is None:
            raise ClassRosError(f"--view-weight wants CAMERA=WEIGHT (e.g. wrist=4), got {item!r}.")
        out[name] = weight
    return out


def run(args: argparse.Namespace) -> int:
    s = build_index(args.run, args.dataset, k=args.k, tau=args.tau, mode=args.mode,
                    n_action_steps=args.n_action_steps, approx_threshold=args.approx_threshold, device=args.device,
                    proprio_weight=args.proprio_weight, view_weights=parse_view_weights(args.view_weight),
                    relative=args.relative, allow_partial=args.allow_partial)
    k = s["config"]["k"]
    rel = f"relative {', '.join(s['relative_actions'])}" if s["relative_actions"] else "absolute"
    print(f"index: {s['n']} frames, {s['dim']}-d features, {s['index_kind']} index, recall@{k} "
          f"{s[f'recall_at_{k}']:.3f}, targets {rel}; wrote {s['path']}")
    return 0
