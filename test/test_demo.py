"""`class-ros demo`: the stage runner (reuse, --fresh, failures) and the tiny pipeline end to end."""
import json
import time

import numpy as np
import pytest

from class_ros.cli import main
from training import demo as demo_mod
from training.demo import RAN, REUSED, SKIPPED, STAGES, Stage, run_demo


def _toy_stages(calls: list, fail: set):
    """Two small stages that write files, so the runner's bookkeeping is checked on real outputs."""
    def first(d):
        calls.append("first")
        (d.out / "a.txt").write_text(str(d.cfg["sim_demos"]["episodes"]))
        return {"value": d.cfg["sim_demos"]["episodes"]}

    def second(d):
        calls.append("second")
        if "second" in fail:
            from class_ros.errors import ClassRosError
            raise ClassRosError("the toy stage was told to fail.")
        (d.out / "b.txt").write_text((d.out / "a.txt").read_text() * 2)
        return {"value": 2}

    return [Stage("first", [], ["a.txt"], first, lambda s: f"value {s['value']}", ["sim_demos"]),
            Stage("second", ["first"], ["b.txt"], second, lambda s: "", []),
            Stage("later", ["second"], [], lambda d: calls.append("later"), lambda s: "", [])]


def test_runner_reuses_redoes_and_reports(tmp_path, monkeypatch, capsys):
    calls, fail = [], set()
    monkeypatch.setattr(demo_mod, "STAGES", _toy_stages(calls, fail))
    out = tmp_path / "demo"
    res = run_demo(out, preset="tiny")
    assert calls == ["first", "second", "later"]
    status = {r["stage"]: r["status"] for r in res["stages"]}
    assert status == {"first": RAN, "second": RAN, "later": RAN} and res["ok"]
    printed = capsys.readouterr().out
    assert "later" in printed and "value 4" in printed

    res = run_demo(out, preset="tiny")  # nothing changed: all reused, with their recorded numbers
    assert calls == ["first", "second", "later"]
    assert [r["status"] for r in res["stages"]] == [REUSED, REUSED, REUSED]
    assert res["stages"][0]["key"] == "value 4"

    (out / "b.txt").unlink()  # a missing output is redone even when the stamp matches
    run_demo(out, preset="tiny")
    assert calls == ["first", "second", "later", "second"] and (out / "b.txt").read_text() == "44"

    cfg = demo_mod.load_config("tiny")
    cfg["sim_demos"]["episodes"] = 5  # a config change re-runs the stage and everything downstream
    monkeypatch.setattr(demo_mod, "load_config", lambda preset: cfg)
    run_demo(out, preset="tiny")
    assert calls[-3:] == ["first", "second", "later"] and (out / "b.txt").read_text() == "55"

    run_demo(out, preset="tiny", fresh=True)
    assert calls[-3:] == ["first", "second", "later"]

    fail.add("second")  # a failing stage: its stamp and outputs are gone, dependants are skipped
    res = run_demo(out, preset="tiny", fresh=True)
    status = {r["stage"]: r["status"] for r in res["stages"]}
    assert status["second"] == "failed" and not (out / "b.txt").exists()
    assert status["later"] == f"{SKIPPED} (needs second)" and not res["ok"] and calls[-1] == "second"
    assert not (out / "stamps" / "second.json").exists()
    assert json.loads((out / "demo_summary.json").read_text())["stages"][1]["key"] == "the toy stage was told to fail."


def test_cli_rejects_unknown_preset(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--preset", "huge"])
    assert "invalid choice" in capsys.readouterr().err


def test_the_stages_in_order_each_with_outputs():
    names = [s.name for s in STAGES]
    assert names == ["sim-demos", "convert", "dtw", "pretrain", "index", "evaluate", "oracle", "closed-loop",
                     "report"]
    assert all(s.outputs for s in STAGES)


@pytest.mark.slow
def test_tiny_demo_end_to_end(tmp_path, capsys):
    """Every stage runs on the tiny preset, writes its artefacts, and the report quotes their numbers."""
    out = tmp_path / "demo"
    t0 = time.perf_counter()
    res = run_demo(out, preset="tiny")
    first_run = time.perf_counter() - t0
    printed = capsys.readouterr().out
    assert {r["stage"]: r["status"] for r in res["stages"]} == {s.name: RAN for s in STAGES}, res["stages"]
    assert res["ok"] and f"report written to {out / 'report.md'}" in printed
    for stage in STAGES:
        for rel in stage.outputs:
            assert (out / rel).exists(), f"{stage.name} did not write {rel}"
    assert len(list((out / "bags").glob("episode_*"))) == 4
    assert (out / "class_run" / "index" / "index.json").is_file()
    for fig in ("dtw_distances", "positives", "embeddings", "neighbours", "latency"):
        assert (out / f"{fig}.png").stat().st_size > 2000, fig

    report = (out / "report.md").read_text()
    assert "Not available" not in report
    summary = {s.name: json.loads((out / "stamps" / f"{s.name}.json").read_text())["summary"] for s in STAGES}
    assert f"{summary['dtw']['threshold']:.4g}**" in report
    assert f"{summary['convert']['frames']} frames" in report
    for cam in ("fixed", "heldout", "moving"):
        ev = json.loads((out / "eval" / f"{cam}.json").read_text())
        assert ev["episodes"] == 2 and f"| {cam} | direct | {ev['successes']}/2 |" in report
        oracle = json.loads((out / "oracle" / f"{cam}.json").read_text())
        assert oracle["episode_seeds"] == ev["episode_seeds"]  # the ceiling is measured on the same scenes
        assert f"| {cam} (oracle: true cube position) | direct | {oracle['successes']}/2 |" in report
    loop = json.loads((out / "closed_loop.json").read_text())
    assert loop["episodes"] == 1 and len(loop["episode_details"]) == 1 and loop["latency_ms"]
    direct = json.loads((out / "eval" / "heldout.json").read_text())
    assert loop["episode_seeds"] == direct["episode_seeds"][:1]  # the same scenes as the direct evaluation
    assert f"| heldout (ROS graph) | ROS | {loop['successes']}/1 |" in report
    assert f"p50 **{np.percentile(loop['latency_ms'], 50):.1f} ms**" in report

    t0 = time.perf_counter()
    again = run_demo(out, preset="tiny")  # second run: every stage reused, in a fraction of the time
    assert [r["status"] for r in again["stages"]] == [REUSED] * len(STAGES)
    assert time.perf_counter() - t0 < max(5.0, 0.2 * first_run)
