"""`class-ros dtw`: DTW action-sequence positives for every action chunk of a dataset (docs/method.md 1).

Usage:
    class-ros dtw --dataset data/lift --horizon 16 --quantile 0.025 --out runs/lift/positives.npz
    class-ros dtw --dataset data/big --mode onthefly --out runs/big/positives.npz   # weights per batch
    class-ros dtw --dataset data/big --device cuda --out runs/big/positives.npz

exact: the top-quantile pairs with their weights (class_ros.similarity.positives).
onthefly: only a sampled distance CDF; training computes each batch's DTW (class_ros.similarity.onthefly).
"""
from __future__ import annotations

import argparse
import time

from class_ros.data import outputs
from class_ros.errors import ClassRosError

MODES = ("exact", "onthefly")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset store folder (zarr)")
    parser.add_argument("--horizon", type=int, default=16, help="action chunk length H (dist_horizon)")
    parser.add_argument("--quantile", type=float, default=0.025, help="fraction of pairs kept as positives")
    parser.add_argument("--out", default="positives.npz", help="output .npz")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:n]")
    parser.add_argument("--mode", choices=MODES, default="exact", help="exact pair list or on-the-fly weights")
    parser.add_argument("--samples", type=int, default=2_000_000,
                        help="random pairs behind the on-the-fly distance CDF")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pair sampling")


def run(args: argparse.Namespace) -> int:
    compute_positives(args.dataset, args.out, horizon=args.horizon, quantile=args.quantile, device=args.device,
                      mode=args.mode, samples=args.samples, seed=args.seed)
    return 0


def compute_positives(dataset, out, horizon: int = 16, quantile: float = 0.025, device: str = "cpu",
                      mode: str = "exact", samples: int = 2_000_000, seed: int = 0, verbose: bool = True) -> dict:
    """Read the dataset's normalised chunks, compute positives, write `out` atomically; returns a summary."""
    from class_ros.data.store import EpisodeStore
    from class_ros.similarity import normalized_chunks
    from class_ros.similarity.onthefly import OnTheFlyWeights
    from class_ros.similarity.positives import dtw_positives, n_positive_pairs

    if mode not in MODES:
        raise ClassRosError(f"--mode must be one of {MODES}, got {mode!r}.")
    if not 0.0 <= quantile <= 1.0:
        raise ClassRosError(f"--quantile must lie in [0, 1], got {quantile}.")
    if horizon < 1:
        raise ClassRosError(f"--horizon must be at least 1, got {horizon}.")
    if str(device).startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise ClassRosError(f"--device {device} was requested but torch sees no CUDA GPU; use --device cpu.")
    elif device != "cpu":
        raise ClassRosError(f"--device must be cpu or cuda[:n], got {device!r}.")
    out = outputs.check_file_target(out)  # before the computation, not after it
    store = EpisodeStore.open(dataset)
    chunks = normalized_chunks(store, horizon)  # (N, H, D)
    N = len(chunks)
    start = time.perf_counter()
    try:
        if mode == "exact":
            result = dtw_positives(chunks, quantile, device=device, progress=verbose, seed=seed)
            threshold, pairs, passes = result.threshold, result.n_pairs, result.passes
        else:
            result = OnTheFlyWeights.fit(chunks, quantile, n_samples=samples, seed=seed)
            k = n_positive_pairs(N, quantile)
            # The distance of the k-th pair, as the sampled CDF estimates it.
            pos = int(round(k / max(result.n_total, 1) * result.n_sampled)) - 1
            threshold = float(result.low[min(max(pos, 0), len(result.low) - 1)]) if k and len(result.low) else float("inf")
            pairs, passes = k, 0
    except ValueError as err:  # bad chunk values (NaN, inf) are a dataset problem the user must fix
        raise ClassRosError(f"{dataset}: {err}") from err
    seconds = time.perf_counter() - start
    result.save(out, dataset_fingerprint=store.fingerprint())
    summary = {"out": str(out), "mode": mode, "n_chunks": N, "horizon": int(horizon), "quantile": float(quantile),
               "threshold": float(threshold), "pairs": int(pairs), "passes": int(passes), "seconds": seconds,
               "device": str(device)}
    if verbose:
        print(f"dtw: {N} chunks of {horizon} steps, {mode} mode on {device}: threshold {threshold:.6g}, "
              f"{pairs} positive pairs, {seconds:.1f} s")
        print(f"dtw: wrote {out}")
    return summary
