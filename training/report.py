"""The demo report: a markdown page with PNG figures that explains a run without reading code.

Everything here works on plain arrays and dicts (`ReportInputs`), so it is tested on synthetic data;
`training/demo.py` gathers those arrays from a real run and calls `write_report`.

Usage (from Python):
    from training.report import ReportInputs, write_report
    path = write_report("runs/demo", ReportInputs(dtw_sample=d, dtw_threshold=thr, ...))

Figures (matplotlib Agg, written beside report.md):
    dtw_distances.png   DTW distance distribution of random pairs, with the positive threshold
    positives.png       anchors and their top action-sequence positives (other cameras, same motion)
    embeddings.png      2D PCA of embeddings before / after pre-training, by task phase and by camera
    neighbours.png      retrieved neighbours for held-out-camera frames
    latency.png         end-to-end latency of the ROS loop
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from class_ros.errors import ClassRosError

REPORT_NAME = "report.md"


@dataclass
class ReportInputs:
    """What the report shows; every field is optional and a missing one gives a clearly marked gap."""

    title: str = "class_ros demo report"
    config: dict = field(default_factory=dict)  # the demo settings, shown as a short list
    stages: list[dict] = field(default_factory=list)  # {"stage", "status", "seconds", "key"} per stage
    # DTW (METHOD.md 1): distances of a random sample of pairs, and the positive threshold.
    dtw_sample: np.ndarray | None = None  # (M,)
    dtw_threshold: float | None = None
    dtw_pairs: int | None = None  # number of positive pairs kept
    dtw_quantile: float | None = None
    # Anchors and their top positives.
    anchor_images: np.ndarray | None = None  # (A, H, W, 3) uint8
    anchor_episodes: np.ndarray | None = None  # (A,) episode (= camera pose) of each anchor
    positive_images: np.ndarray | None = None  # (A, K, H, W, 3) uint8
    positive_episodes: np.ndarray | None = None  # (A, K)
    positive_weights: np.ndarray | None = None  # (A, K)
    # Embeddings of the same frames before and after pre-training.
    emb_before: np.ndarray | None = None  # (N, E)
    emb_after: np.ndarray | None = None  # (N, E)
    phase: np.ndarray | None = None  # (N,) int index into phase_names
    phase_names: list[str] = field(default_factory=list)
    camera: np.ndarray | None = None  # (N,) camera-pose id (the episode: `random` draws one pose per episode)
    # Retrieval on frames from held-out cameras.
    query_images: np.ndarray | None = None  # (Q, H, W, 3)
    neighbour_images: np.ndarray | None = None  # (Q, K, H, W, 3)
    neighbour_distances: np.ndarray | None = None  # (Q, K) cosine distances
    # Evaluation: camera mode -> {"successes", "episodes", ["ci_low", "ci_high"], "via"}.
    success: dict = field(default_factory=dict)
    latency_ms: np.ndarray | None = None  # (L,) observation stamp -> command publication
    notes: dict = field(default_factory=dict)  # section -> why it is missing (e.g. "stage not built yet")


# ---------------------------------------------------------------- numbers
def wilson_ci(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a success rate (sane at 0 and n, unlike the normal approximation)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def pca_2d(x: np.ndarray) -> np.ndarray:
    """(N, E) -> (N, 2) projection on the two main principal axes (sign fixed for stable plots)."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    axes = vt[:2]
    axes *= np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])[:, None]
    out = x @ axes.T
    if out.shape[1] < 2:  # a 1-D embedding still plots
        out = np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
    return out


def neighbour_stats(emb: np.ndarray, phase: np.ndarray, camera: np.ndarray, k: int = 5) -> dict:
    """How the k nearest neighbours (cosine) of each frame relate to it.

    phase_agreement: fraction of neighbours in the same task phase (the representation tracks the motion);
    other_camera: fraction from another camera pose (the representation ignores the viewpoint).
    """
    z = np.asarray(emb, dtype=np.float64)
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    sim = z @ z.T
    np.fill_diagonal(sim, -np.inf)
    k = min(k, len(z) - 1)
    nn = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    phase, camera = np.asarray(phase), np.asarray(camera)
    return {"phase_agreement": float((phase[nn] == phase[:, None]).mean()),
            "other_camera": float((camera[nn] != camera[:, None]).mean()), "k": int(k)}


def success_rows(success: dict) -> list[dict]:
    """One row per camera mode with rate and 95% CI (Wilson when the evaluation did not give one)."""
    rows = []
    for mode, r in success.items():
        n, s = int(r["episodes"]), int(r["successes"])
        lo, hi = (r["ci_low"], r["ci_high"]) if "ci_low" in r else wilson_ci(s, n)
        rows.append({"mode": mode, "via": r.get("via", "direct"), "successes": s, "episodes": n,
                     "rate": s / n if n else 0.0, "ci_low": float(lo), "ci_high": float(hi)})
    return rows


# ---------------------------------------------------------------- figures
def _plt():
    import matplotlib
    matplotlib.use("Agg")  # no display on robots and CI machines
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    os.replace(tmp, path)
    return path


def fig_dtw(sample: np.ndarray, threshold: float, path: Path) -> Path:
    """Histogram of DTW distances of random pairs (log x) with the positive threshold marked."""
    plt = _plt()
    sample = np.asarray(sample, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    lo = max(min(sample[sample > 0].min(initial=threshold), threshold) * 0.5, 1e-6)
    bins = np.geomspace(lo, max(sample.max(), threshold) * 1.1, 60)
    ax.hist(np.clip(sample, lo, None), bins=bins, color="0.55")
    ax.axvline(threshold, color="crimson", lw=2, label=f"positive threshold {threshold:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("DTW distance between the action chunks of two frames")
    ax.set_ylabel("pairs")
    ax.legend(loc="upper left")
    return _save(fig, path)


def _image_grid(rows: list[list[tuple[np.ndarray, str]]], path: Path, row_labels: list[str]) -> Path:
    plt = _plt()
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.6 * n_cols, 1.75 * n_rows), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(row):
                ax.axis("off")
                continue
            img, label = row[j]
            ax.imshow(img)
            ax.set_title(label, fontsize=7)
            if j == 0:
                ax.set_ylabel(row_labels[i], fontsize=8)
                for spine in ax.spines.values():
                    spine.set(color="crimson", linewidth=2)
    fig.tight_layout()
    return _save(fig, path)


def fig_positives(anchors, anchor_eps, positives, positive_eps, weights, path: Path) -> Path:
    """Each row: an anchor frame (red frame) then its top positives by DTW weight."""
    rows = []
    for a in range(len(anchors)):
        row = [(anchors[a], f"anchor, ep {int(anchor_eps[a])}")]
        row += [(positives[a, k], f"ep {int(positive_eps[a, k])}, w {weights[a, k]:.2f}")
                for k in range(positives.shape[1])]
        rows.append(row)
    return _image_grid(rows, path, [f"anchor {a}" for a in range(len(anchors))])


def fig_neighbours(queries, neighbours, distances, path: Path) -> Path:
    """Each row: a frame from a held-out camera (red frame) then its nearest training frames."""
    rows = []
    for q in range(len(queries)):
        row = [(queries[q], "held-out query")]
        row += [(neighbours[q, k], f"d = {distances[q, k]:.3f}") for k in range(neighbours.shape[1])]
        rows.append(row)
    return _image_grid(rows, path, [f"query {q}" for q in range(len(queries))])


def fig_embeddings(before, after, phase, phase_names, camera, path: Path) -> Path:
    """2 x 2 PCA scatter: rows before / after pre-training, columns coloured by phase / by camera pose."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(9, 8), squeeze=False)
    phase = np.asarray(phase)
    cam_ids = np.unique(camera, return_inverse=True)[1]
    for r, (name, emb) in enumerate((("before pre-training", before), ("after pre-training", after))):
        xy = pca_2d(emb)
        ax = axes[r][0]
        for p in np.unique(phase):
            m = phase == p
            label = phase_names[p] if p < len(phase_names) else str(p)
            ax.scatter(xy[m, 0], xy[m, 1], s=6, label=label)
        ax.legend(fontsize=7, markerscale=2)
        ax.set_title(f"{name}: coloured by task phase", fontsize=9)
        ax = axes[r][1]
        ax.scatter(xy[:, 0], xy[:, 1], s=6, c=cam_ids, cmap="tab20")
        ax.set_title(f"{name}: coloured by camera pose", fontsize=9)
        for a in axes[r]:
            a.set_xticks([])
            a.set_yticks([])
    fig.tight_layout()
    return _save(fig, path)


def fig_latency(latency_ms: np.ndarray, path: Path) -> Path:
    """Histogram of observation-stamp-to-command latency with p50 and p99 marked."""
    plt = _plt()
    lat = np.asarray(latency_ms, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6.5, 3.0))
    ax.hist(lat, bins=40, color="steelblue")
    for q, style in ((50, "--"), (99, ":")):
        v = np.percentile(lat, q)
        ax.axvline(v, color="k", ls=style, label=f"p{q} {v:.1f} ms")
    ax.set_xlabel("camera frame stamp -> arm command published (ms)")
    ax.set_ylabel("commands")
    ax.legend()
    return _save(fig, path)


# ---------------------------------------------------------------- the page
def _missing(inputs: ReportInputs, section: str) -> str:
    why = inputs.notes.get(section, "the stage that produces it did not run")
    return f"*Not available: {why}.*\n"


def write_report(out_dir: str | os.PathLike, inputs: ReportInputs) -> Path:
    """Write report.md and its figures into `out_dir`; returns the report path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# {inputs.title}\n"]
    md.append("This run records scripted demonstrations of a robot arm, with a new camera pose for every "
              "episode, and learns a visual representation in which two camera frames are close when the "
              "robot's *next actions* are similar (CLASS), whatever the camera saw. The page shows each step "
              "with its numbers; the figures are the PNG files beside this page.\n")
    if inputs.config:
        md.append("Settings: " + ", ".join(f"`{k}` = {v}" for k, v in inputs.config.items()) + ".\n")

    md.append("## Pipeline\n")
    if inputs.stages:
        md.append("| stage | status | time (s) | key number |\n|---|---|---:|---|")
        for s in inputs.stages:
            secs = "" if s.get("seconds") is None else f"{s['seconds']:.1f}"
            md.append(f"| {s['stage']} | {s['status']} | {secs} | {s.get('key', '')} |")
        md.append("")
    else:
        md.append(_missing(inputs, "stages"))

    md.append("## 1. Which frames count as the same motion (DTW positives)\n")
    md.append("Each frame is paired with the action chunk that follows it (the next actions, normalised). "
              "Dynamic Time Warping measures how different two chunks are, allowing for different speeds. "
              "The closest pairs become *positives*: frames the encoder must embed close together.\n")
    if inputs.dtw_sample is not None and inputs.dtw_threshold is not None:
        fig_dtw(inputs.dtw_sample, inputs.dtw_threshold, out / "dtw_distances.png")
        below = float(np.mean(np.asarray(inputs.dtw_sample) <= inputs.dtw_threshold))
        q = "" if inputs.dtw_quantile is None else f" (the closest {inputs.dtw_quantile:.1%} of all pairs)"
        pairs = "" if inputs.dtw_pairs is None else f"; {inputs.dtw_pairs} positive pairs were kept"
        md.append(f"Positive threshold: DTW distance <= **{inputs.dtw_threshold:.4g}**{q}{pairs}. "
                  f"In a random sample of {len(inputs.dtw_sample)} pairs, {below:.2%} fall below it.\n")
        md.append("![DTW distances](dtw_distances.png)\n")
    else:
        md.append(_missing(inputs, "dtw"))

    md.append("### Anchors and their positives\n")
    if inputs.anchor_images is not None and inputs.positive_images is not None:
        fig_positives(inputs.anchor_images, inputs.anchor_episodes, inputs.positive_images,
                      inputs.positive_episodes, inputs.positive_weights, out / "positives.png")
        other = float(np.mean(inputs.positive_episodes != np.asarray(inputs.anchor_episodes)[:, None]))
        md.append("Each row starts with an anchor frame (red border), followed by the frames whose next actions "
                  "are most similar to it (`w` is the positive weight, 1 for the closest pair). Every episode has "
                  f"its own camera pose, so positives from other episodes ({other:.0%} of those shown) look "
                  "different while the arm does the same thing: this is the supervision CLASS learns from.\n")
        md.append("![anchors and positives](positives.png)\n")
    else:
        md.append(_missing(inputs, "positives"))

    md.append("## 2. What pre-training changed in the embedding\n")
    if inputs.emb_before is not None and inputs.emb_after is not None:
        fig_embeddings(inputs.emb_before, inputs.emb_after, inputs.phase, inputs.phase_names,
                       inputs.camera, out / "embeddings.png")
        b = neighbour_stats(inputs.emb_before, inputs.phase, inputs.camera)
        a = neighbour_stats(inputs.emb_after, inputs.phase, inputs.camera)
        md.append(f"The same {len(inputs.emb_after)} frames embedded by the encoder at its random initialisation "
                  "and after CLASS pre-training, projected on their two main axes (PCA). Of each frame's "
                  f"{a['k']} nearest neighbours:\n")
        md.append("| encoder | same task phase | from another camera pose |\n|---|---:|---:|")
        md.append(f"| random initialisation | {b['phase_agreement']:.1%} | {b['other_camera']:.1%} |")
        md.append(f"| after CLASS pre-training | {a['phase_agreement']:.1%} | {a['other_camera']:.1%} |\n")
        md.append("Clusters by camera pose mean the encoder sees the viewpoint; clusters by phase mean it sees "
                  "what the arm is doing, which is what a policy needs.\n")
        md.append("![embeddings](embeddings.png)\n")
    else:
        md.append(_missing(inputs, "embeddings"))

    md.append("## 3. Retrieval from held-out cameras\n")
    if inputs.query_images is not None and inputs.neighbour_images is not None:
        fig_neighbours(inputs.query_images, inputs.neighbour_images, inputs.neighbour_distances,
                       out / "neighbours.png")
        md.append("Frames rendered from camera poses never seen in training (red border), and the training "
                  "frames the retrieval policy finds nearest (cosine distance `d`). The policy executes the "
                  "weighted mean of those frames' action chunks. Median nearest distance: "
                  f"{float(np.median(inputs.neighbour_distances[:, 0])):.3f}.\n")
        md.append("![neighbours](neighbours.png)\n")
    else:
        md.append(_missing(inputs, "neighbours"))

    md.append("## 4. Task success per camera mode\n")
    if inputs.success:
        md.append("Success rate of the retrieval policy on the `lift` task, with 95% confidence intervals. "
                  "`fixed`: one camera pose; `heldout`: poses outside the training range; `moving`: the camera "
                  "drifts during the episode. `ROS` rows ran through the full node graph (camera, embedding, "
                  "policy, arm-command and sim nodes over DDS); `direct` rows call the policy in the simulator.\n")
        md.append("| camera | via | successes | success rate | 95% CI |\n|---|---|---:|---:|---|")
        for r in success_rows(inputs.success):
            md.append(f"| {r['mode']} | {r['via']} | {r['successes']}/{r['episodes']} | {r['rate']:.1%} | "
                      f"[{r['ci_low']:.1%}, {r['ci_high']:.1%}] |")
        md.append("")
    else:
        md.append(_missing(inputs, "success"))

    md.append("## 5. Latency of the ROS loop\n")
    if inputs.latency_ms is not None and len(inputs.latency_ms):
        lat = np.asarray(inputs.latency_ms, dtype=np.float64)
        fig_latency(lat, out / "latency.png")
        md.append(f"Time from a camera frame's stamp to the arm command computed from it, over {len(lat)} "
                  f"commands: p50 **{np.percentile(lat, 50):.1f} ms**, p99 **{np.percentile(lat, 99):.1f} ms**, "
                  f"max {lat.max():.1f} ms.\n")
        md.append("![latency](latency.png)\n")
    else:
        md.append(_missing(inputs, "latency"))

    path = out / REPORT_NAME
    tmp = path.with_name(REPORT_NAME + ".tmp")
    tmp.write_text("\n".join(md))
    os.replace(tmp, path)
    return path


def save_json(path: str | os.PathLike, data: dict) -> None:
    """Write JSON atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=float))
    os.replace(tmp, path)


# ---------------------------------------------------------------- gathering a real demo run
class _Missing(Exception):
    """A report section cannot be drawn; the message says why (shown in the report)."""


def gather_inputs(demo_dir: str | os.PathLike, cfg: dict, stages: list[dict] | None = None) -> ReportInputs:
    """Read a demo folder (dataset, positives, run, evaluations) into ReportInputs; gaps are explained."""
    demo = Path(demo_dir)
    inputs = ReportInputs(title=f"class_ros demo: `{cfg['task']}` with camera shift", stages=list(stages or []),
                          config={"task": cfg["task"], "demonstrations": cfg["sim_demos"]["episodes"],
                                  "training cameras": cfg["sim_demos"]["camera"], "seed": cfg["seed"],
                                  "DTW horizon": cfg["dtw"]["horizon"], "quantile": cfg["dtw"]["quantile"]})
    rng = np.random.default_rng(cfg["seed"])
    sections = (("dtw", _gather_dtw), ("positives", _gather_positives), ("embeddings", _gather_embeddings),
                ("neighbours", _gather_neighbours), ("success", _gather_success), ("latency", _gather_latency))
    for name, gather in sections:
        try:
            gather(demo, cfg, inputs, rng)
        except _Missing as why:
            inputs.notes[name] = str(why)
        except ClassRosError as err:  # e.g. a run without an index: the section says what is wrong
            inputs.notes[name] = str(err).rstrip(".")
        except ImportError as err:
            inputs.notes[name] = f"`{err.name or err}` is not built yet"
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
    from class_ros.data.rundir import RunDir
    from class_ros.encoder.config import EncoderConfig
    from class_ros.encoder.model import ObservationEncoder
    run = RunDir.open(_need(demo / "class_run", "pretrain"), kind="encoder")
    enc_cfg = EncoderConfig.from_dict(run.load_config()["encoder"])
    torch.manual_seed(seed)
    before = ObservationEncoder(enc_cfg).eval()
    after = ObservationEncoder(enc_cfg).eval()
    after.load_state_dict(run.load_weights("encoder")["ema"])
    return before, after


def _image_features(encoder, images: np.ndarray, camera: str, batch: int = 64) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, E_img) image features (centre crop, no augmentation)."""
    import torch
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(encoder.image_features({camera: torch.from_numpy(images[i:i + batch])}, train=False).numpy())
    return np.concatenate(out)


def _gather_embeddings(demo, cfg, inputs, rng) -> None:
    store = _store(demo)
    before, after = _encoders(demo, cfg["seed"])
    idx = np.unique(np.linspace(0, store.n_frames - 1, min(store.n_frames, cfg["report"]["embed_frames"])).astype(int))
    key = _camera_key(store)
    camera = key.removeprefix("obs/")
    images = store.read(key, idx)
    # Image features only: they are what the contrastive loss shapes (proprio would give the phase away).
    inputs.emb_before = _image_features(before, images, camera)
    inputs.emb_after = _image_features(after, images, camera)
    actions = np.asarray(store.array("action")[: store.n_frames])
    inputs.phase = task_phases(actions, store.episode_ends)[idx]
    inputs.phase_names = PHASE_NAMES
    inputs.camera = np.searchsorted(store.episode_ends, idx, side="right")


def heldout_frames(task: str, n: int, seed: int, image_size) -> list[dict]:
    """`n` observations from `heldout` cameras (a new pose per frame), spread over scripted-expert episodes."""
    from class_ros.sim.env import ArmEnv
    from class_ros.sim.expert import make_expert
    frames = []
    with ArmEnv(task, camera="heldout", image_size=tuple(image_size)) as env:
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
    camera = key.removeprefix("obs/")
    queries = heldout_frames(cfg["task"], cfg["report"]["queries"], cfg["seed"] + 777,
                             store.meta.keys[key].shape[:2])
    k = cfg["report"]["neighbours"]
    feats = normalize_rows(np.stack([policy.embed(obs) for obs in queries]).astype(np.float32))
    sims, ids = policy.index.search(feats, k)  # the policy's own index: what it would retrieve
    frames = policy.frames[ids]  # (Q, K) dataset frames
    inputs.query_images = np.stack([obs[camera] for obs in queries])
    inputs.neighbour_images = store.read(key, frames.reshape(-1)).reshape(*frames.shape, *inputs.query_images.shape[1:])
    inputs.neighbour_distances = 1.0 - sims.astype(np.float64)


def _success_record(res: dict, via: str) -> dict:
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
            inputs.success[camera] = _success_record(json.loads(path.read_text()), "direct")
    loop = demo / "closed_loop.json"
    if loop.exists():
        inputs.success[f"{cfg['closed_loop']['camera']} (ROS graph)"] = _success_record(
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
