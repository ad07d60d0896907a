"""The demo report: a markdown page with PNG figures that explains a run without reading code.

Everything here works on plain arrays and dicts (`ReportInputs`), so it is tested on synthetic data;
`training/report_inputs.py` gathers those arrays from a real demo run, and `training/demo.py` calls both.

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

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from class_ros.data import outputs

REPORT_NAME = "report.md"


@dataclass
class ReportInputs:
    """What the report shows; every field is optional and a missing one gives a clearly marked gap."""

    title: str = "class_ros demo report"
    config: dict = field(default_factory=dict)  # the demo settings, shown as a short list
    stages: list[dict] = field(default_factory=list)  # {"stage", "status", "seconds", "key"} per stage
    # DTW (docs/method.md 1): distances of a random sample of pairs, and the positive threshold.
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
    diagnostics: dict = field(default_factory=dict)  # training/diagnostics.py's numbers from pre-training
    notes: dict = field(default_factory=dict)  # section -> why it is missing (e.g. "the evaluate stage did not run")


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
    try:
        with outputs.replacing(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        _plt().close(fig)
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

    md.append("### What the embedding knows about where the arm goes next\n")
    d = inputs.diagnostics
    if d.get("trained"):
        t, u = d["trained"], d["untrained"]
        md.append(f"Target: the {d['target']} ({d['frames']} frames), in cm. Retrieval replays its nearest "
                  "demonstration, so it grasps about as far off as the nearest frame's target; a grasp needs "
                  "about 1.5-2 cm.\n")
        md.append("| encoder | linear probe error (held-out episodes) | nearest other-episode frame's target |"
                  "\n|---|---:|---:|")
        md.append(f"| random initialisation | {u['probe_cm']:.2f} | {u['neighbour_cm']:.2f} |")
        md.append(f"| after CLASS pre-training | {t['probe_cm']:.2f} | {t['neighbour_cm']:.2f} |\n")
        if "positive_pair_cm" in d:
            md.append(f"DTW positive pairs have targets {d['positive_pair_cm']:.2f} cm apart (random pairs "
                      f"{d['random_pair_cm']:.2f} cm): pre-training pulls such pairs together, so it cannot teach "
                      "finer distinctions than this. A small probe error with a large neighbour distance means "
                      "the information is there but the neighbourhoods are not; more data or a finer DTW target "
                      "helps the second, more training the first.\n")
    else:
        md.append(_missing(inputs, "diagnostics"))

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
        task = inputs.config.get("task", "")
        md.append(f"Success rate of the retrieval policy on the `{task}` task, with 95% confidence intervals. "
                  "`fixed`: one camera pose; `heldout`: poses outside the training range; `moving`: the camera "
                  "drifts during the episode. `ROS` rows ran through the full node graph (camera, embedding, "
                  "policy, arm-command and sim nodes over DDS); `direct` rows call the policy in the simulator. "
                  "`oracle` rows are the ceiling: the same execution on the same scenes, retrieving by the true "
                  "cube position and joints instead of the camera image.\n")
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

    return outputs.write_text(out / REPORT_NAME, "\n".join(md))
