"""The report generator on a fixture run built from synthetic arrays: figures, numbers, gaps."""
import numpy as np
import pytest

from training.report import ReportInputs, neighbour_stats, pca_2d, success_rows, wilson_ci, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _fixture_inputs(rng) -> ReportInputs:
    """A run of 6 episodes (one camera pose each) x 20 frames, 3 phases, 8x8 images."""
    n_eps, t = 6, 20
    camera = np.repeat(np.arange(n_eps), t)
    phase = np.tile(np.repeat([0, 1, 2], [7, 7, 6]), n_eps)
    # Before pre-training the embedding clusters by camera pose, after it clusters by phase.
    before = np.eye(n_eps)[camera] * 5 + rng.normal(0, 0.1, (len(camera), n_eps))
    after = np.eye(3)[phase] * 5 + rng.normal(0, 0.1, (len(camera), 3))
    imgs = rng.integers(0, 255, (4, 3, 8, 8, 3), dtype=np.uint8)
    return ReportInputs(
        config={"task": "lift", "episodes": n_eps},
        stages=[{"stage": "dtw", "status": "ran", "seconds": 1.5, "key": "threshold 0.0123"}],
        dtw_sample=rng.gamma(2.0, 1.0, 5000), dtw_threshold=0.0789, dtw_pairs=321, dtw_quantile=0.025,
        anchor_images=imgs[:, 0], anchor_episodes=np.array([0, 1, 2, 3]),
        positive_images=imgs[:, 1:], positive_episodes=np.array([[1, 2], [0, 0], [2, 5], [4, 4]]),
        positive_weights=np.array([[1.0, 0.5], [0.9, 0.2], [0.8, 0.1], [0.7, 0.0]]),
        emb_before=before, emb_after=after, phase=phase, phase_names=["reach", "grasp", "lift"], camera=camera,
        query_images=imgs[:2, 0], neighbour_images=imgs[:2, 1:], neighbour_distances=np.array([[0.01, 0.02],
                                                                                               [0.03, 0.04]]),
        success={"fixed": {"successes": 9, "episodes": 10, "via": "direct"},
                 "heldout": {"successes": 3, "episodes": 4, "ci_low": 0.3, "ci_high": 0.95, "via": "ROS"}},
        latency_ms=rng.normal(20.0, 2.0, 300),
        diagnostics={"target": "end-effector position at the end of the action chunk", "frames": 600,
                     "trained": {"probe_cm": 1.23, "neighbour_cm": 2.34}, "untrained": {"probe_cm": 3.0,
                                                                                       "neighbour_cm": 4.5},
                     "positive_pair_cm": 3.95, "random_pair_cm": 10.1},
    )


def test_report_writes_every_figure_and_real_numbers(tmp_path):
    inputs = _fixture_inputs(np.random.default_rng(0))
    path = write_report(tmp_path, inputs)
    text = path.read_text()
    for fig in ("dtw_distances", "positives", "embeddings", "neighbours", "latency"):
        png = tmp_path / f"{fig}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 2000, fig
        assert f"({fig}.png)" in text
    assert "Not available" not in text
    assert "0.0789" in text and "321 positive pairs" in text
    assert "| fixed | direct | 9/10 | 90.0% |" in text
    assert "| heldout | ROS | 3/4 | 75.0% | [30.0%, 95.0%] |" in text  # the evaluation's own CI wins
    lo, hi = wilson_ci(9, 10)
    assert f"[{lo:.1%}, {hi:.1%}]" in text
    p50 = np.percentile(inputs.latency_ms, 50)
    assert f"p50 **{p50:.1f} ms**" in text
    # The embedding table shows the change: phase agreement 100% after, camera-clustered before.
    assert "| after CLASS pre-training | 100.0% |" in text
    assert "| dtw | ran | 1.5 | threshold 0.0123 |" in text
    assert "| after CLASS pre-training | 1.23 | 2.34 |" in text and "| random initialisation | 3.00 | 4.50 |" in text
    assert "targets 3.95 cm apart (random pairs 10.10 cm)" in text
    assert not list(tmp_path.glob("*.tmp*"))


def test_report_marks_missing_sections(tmp_path):
    inputs = ReportInputs(notes={"success": "stage `evaluate` did not run"})
    text = write_report(tmp_path, inputs).read_text()
    assert "*Not available: stage `evaluate` did not run.*" in text
    assert text.count("Not available") == 8  # stages, dtw, positives, embeddings, diagnostics, neighbours, success,
    # latency
    assert not list(tmp_path.glob("*.png"))


def test_wilson_interval_known_values():
    lo, hi = wilson_ci(9, 10)
    assert lo == pytest.approx(0.5958, abs=1e-3) and hi == pytest.approx(0.9821, abs=1e-3)
    assert wilson_ci(0, 50)[0] == 0.0 and wilson_ci(0, 50)[1] == pytest.approx(0.0713, abs=1e-3)
    assert wilson_ci(50, 50)[1] == 1.0
    rows = success_rows({"m": {"successes": 0, "episodes": 0}})
    assert rows[0]["rate"] == 0.0 and (rows[0]["ci_low"], rows[0]["ci_high"]) == (0.0, 1.0)


def test_pca_finds_the_main_axis():
    rng = np.random.default_rng(1)
    t = rng.normal(0, 10, 500)
    x = np.stack([t, 0.5 * t, rng.normal(0, 0.1, 500), rng.normal(0, 0.1, 500)], axis=1)
    xy = pca_2d(x)
    assert xy.shape == (500, 2)
    assert abs(np.corrcoef(xy[:, 0], t)[0, 1]) > 0.999
    assert xy[:, 1].std() < 0.2


def test_neighbour_stats_separates_phase_and_camera():
    rng = np.random.default_rng(2)
    camera = np.repeat(np.arange(4), 30)
    phase = np.tile(np.repeat([0, 1, 2], 10), 4)
    by_camera = np.eye(4)[camera] + rng.normal(0, 0.01, (120, 4))
    by_phase = np.eye(3)[phase] + rng.normal(0, 0.01, (120, 3))
    cam = neighbour_stats(by_camera, phase, camera)
    ph = neighbour_stats(by_phase, phase, camera)
    assert cam["other_camera"] == 0.0 and cam["phase_agreement"] < 0.6
    assert ph["phase_agreement"] == 1.0 and ph["other_camera"] > 0.6
