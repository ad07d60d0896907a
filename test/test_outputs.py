"""class_ros.data.outputs: files and folders appear whole or not at all; bad outputs and I/O errors are one line."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from class_ros.data import outputs
from class_ros.errors import ClassRosError


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = outputs.write_json(tmp_path / "sub" / "r.json", {"a": np.float32(1.5)})
    assert json.loads(path.read_text()) == {"a": 1.5}
    with pytest.raises(RuntimeError, match="disk"):
        with outputs.replacing(path) as tmp:
            tmp.write_text('{"a": 2')  # half written when the writer fails
            raise RuntimeError("disk")
    assert json.loads(path.read_text()) == {"a": 1.5}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]
    with pytest.raises(ClassRosError, match="is a folder"):
        outputs.write_text(tmp_path / "sub", "x")


def test_building_moves_a_complete_folder_with_its_manifest_last(tmp_path):
    out = tmp_path / "idx"
    with outputs.building(out, "index", lineage={"run_id": "r1"}) as b:
        (b.path / "data.bin").write_bytes(b"1234")
        b.manifest["n"] = 4
        assert not out.exists()  # nothing at out while it is being written
    manifest = outputs.read_manifest(out, "index")
    assert manifest == {"kind": "index", "format_version": 1, "complete": True, "lineage": {"run_id": "r1"}, "n": 4}
    with pytest.raises(ClassRosError, match="is a class_ros index, not a dataset"):
        outputs.read_manifest(out, "dataset")
    with pytest.raises(ClassRosError, match="is a class_ros index, not a dataset"):
        outputs.check_target(out, "dataset", overwrite=True)
    (out / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(ClassRosError, match="incomplete class_ros index"):
        outputs.read_manifest(out, "index")


def test_what_a_killed_writer_left_is_cleaned_or_recovered(tmp_path):
    out = tmp_path / "ds"
    pid = _dead_pid()
    (tmp_path / f".ds.partial-{pid}").mkdir()  # killed while writing: garbage
    old = tmp_path / f".ds.old-{pid}"  # killed between the two renames of a replace: the old output, whole
    old.mkdir()
    outputs.write_manifest(old, "dataset", format_version=1, complete=True)
    with pytest.raises(ClassRosError, match="already exists"):  # the old one is back in place first
        with outputs.building(out, "dataset"):
            pass
    assert outputs.read_manifest(out, "dataset")["complete"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_io_errors_reaching_the_cli_are_one_sentence_naming_the_path(tmp_path, capsys):
    from class_ros.cli import describe_os_error, main

    err = PermissionError(13, "Permission denied", "/data/x.npz")
    assert describe_os_error(err) == "/data/x.npz: Permission denied; check the path and its permissions or free space."
    # pretrain checks its --out before loading anything (/sys refuses new files even to root)
    assert main(["pretrain", "--dataset", str(tmp_path / "none"), "--positives", str(tmp_path / "p.npz"),
                 "--out", "/sys/run"]) == 1
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "cannot write in /sys (Permission denied)" in line


def test_a_corrupt_chunk_is_named_not_a_codec_traceback(tmp_path, capsys):
    from class_ros.cli import main
    from latent_dataset import make_latent_dataset

    make_latent_dataset(tmp_path / "data", n_episodes=3, length=6, size=16)
    chunk = next(p for p in (tmp_path / "data" / "action").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"\x02\x01garbage" * 3)
    assert main(["dtw", "--dataset", str(tmp_path / "data"), "--out", str(tmp_path / "p.npz")]) == 1
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "cannot read 'action'" in line and "damaged" in line
    assert not (tmp_path / "p.npz").exists()
