"""import-lerobot / export-lerobot: the real SO-101 example, round trips, v2.1, and one sentence per bad input.

Expected values come from the test's own reads (pyarrow for parquet, PyAV for video), never from the code
under test. Small synthetic datasets are written here with PyAV directly (a long GOP with B-frames, unlike
the exporter's), so frame lookup by presentation time is exercised on a stream whose decode order differs.
"""
from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from class_ros.cli import main
from class_ros.data.schema import DatasetMeta, KeySchema
from class_ros.data.store import EpisodeStore
from class_ros.errors import ClassRosError
from training.export_lerobot import export_lerobot
from training.import_lerobot import import_lerobot

SO101 = "lerobot_v3_so101_example"
FPS = 10


def _level(frame: int) -> int:
    """A flat grey level per frame, far enough apart to survive lossy coding (12 levels apart)."""
    return 20 + (12 * frame) % 216


def _mp4(path: Path, levels, size=(32, 48), fps=FPS, gop=12, faststart=False) -> None:
    """Flat grey frames through libx264 with B-frames (decode order differs from presentation order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as out:
        stream = out.add_stream("libx264", rate=Fraction(fps), options={"g": str(gop), "bf": "2", "crf": "18"})
        stream.width, stream.height, stream.pix_fmt = size[1], size[0], "yuv420p"
        for i, level in enumerate(levels):
            frame = av.VideoFrame.from_ndarray(np.full((*size, 3), level, np.uint8), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _vec(e: int, t: int, d: int) -> float:
    return e * 10 + t * 0.25 + d / 8  # exact in float32


def _write_v3(root: Path, lengths=(8, 6), lead: int = 2, size=(32, 48)) -> Path:
    """A LeRobot v3 dataset: both episodes in one data file and one mp4 that starts with `lead` extra frames."""
    n = sum(lengths)
    levels = [_level(i) for i in range(lead + n)]
    _mp4(root / "videos/observation.images.cam/chunk-000/file-000.mp4", levels, size)
    ep = np.concatenate([np.full(T, e) for e, T in enumerate(lengths)])
    fi = np.concatenate([np.arange(T) for T in lengths])
    vec = np.array([[_vec(e, t, d) for d in range(3)] for e, t in zip(ep, fi)], np.float32)
    cols = {"observation.state": vec, "action": vec + 1, "timestamp": (fi / FPS).astype(np.float32),
            "frame_index": fi, "episode_index": ep, "index": np.arange(n), "task_index": ep % 2}
    table = pa.table({k: pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), 3) if v.ndim == 2 else v
                      for k, v in cols.items()})
    (root / "data/chunk-000").mkdir(parents=True)
    pq.write_table(table, root / "data/chunk-000/file-000.parquet")
    starts = np.cumsum([0, *lengths])
    eps = {"episode_index": list(range(len(lengths))), "tasks": [["pick"], ["place"]][: len(lengths)],
           "length": list(lengths), "data/chunk_index": [0] * len(lengths), "data/file_index": [0] * len(lengths),
           "dataset_from_index": starts[:-1].tolist(), "dataset_to_index": starts[1:].tolist(),
           "videos/observation.images.cam/chunk_index": [0] * len(lengths),
           "videos/observation.images.cam/file_index": [0] * len(lengths),
           "videos/observation.images.cam/from_timestamp": [(lead + s) / FPS for s in starts[:-1]],
           "videos/observation.images.cam/to_timestamp": [(lead + s) / FPS for s in starts[1:]]}
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.table(eps), root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(pa.table({"task_index": [0, 1], "__index_level_0__": ["pick", "place"]}), root / "meta/tasks.parquet")
    names = {"motors": ["j0", "j1", "j2"]}
    info = {"codebase_version": "v3.0", "robot_type": "test_arm", "fps": FPS,
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": {"observation.state": {"dtype": "float32", "shape": [3], "names": names},
                         "action": {"dtype": "float32", "shape": [3], "names": names},
                         "observation.images.cam": {"dtype": "video", "shape": [*size, 3],
                                                    "names": ["height", "width", "channels"]},
                         **{k: {"dtype": "float32" if k == "timestamp" else "int64", "shape": [1], "names": None}
                            for k in ("timestamp", "frame_index", "episode_index", "index", "task_index")}}}
    (root / "meta/info.json").write_text(json.dumps(info))
    return root


def _edit_info(root: Path, **changes) -> None:
    info = json.loads((root / "meta/info.json").read_text())
    for key, value in changes.items():
        if key == "features":
            info["features"].update(value)
        else:
            info[key] = value
    (root / "meta/info.json").write_text(json.dumps(info))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


# ------------------------------------------------------------------ synthetic v3 / v2.1
def test_import_v3_frames_by_timestamp(tmp_path):
    src = _write_v3(tmp_path / "lr")
    summary = import_lerobot(src, tmp_path / "ds")
    store = EpisodeStore.open(tmp_path / "ds")
    assert summary["episodes"] == 2 and store.episode_ends.tolist() == [8, 14]
    meta = store.meta
    assert meta.keys["obs/cam"].shape == (32, 48, 3) and meta.control_rate_hz == FPS
    assert meta.joint_names == ["j0", "j1", "j2"] and meta.action_names == ["j0", "j1", "j2"]
    assert meta.action_kind == "joint_position" and meta.source == "lerobot"
    assert meta.extra["lerobot"]["tasks"] == ["pick", "place"]
    assert meta.extra["lerobot"]["episode_tasks"] == [[[0, 0]], [[0, 1]]]
    ep1 = store.episode(1)
    np.testing.assert_array_equal(ep1["obs/joint_pos"], [[_vec(1, t, d) for d in range(3)] for t in range(6)])
    np.testing.assert_array_equal(ep1["action"], ep1["obs/joint_pos"] + 1)
    # Frame k of the table is video frame lead + k: the 2 leading frames must not shift the images.
    grey = np.asarray(store.array("obs/cam"))[:, 16, 24, 0].astype(int)
    np.testing.assert_allclose(grey, [_level(2 + i) for i in range(14)], atol=3)
    store.validate()


def test_episode_subset_camera_and_resize(tmp_path):
    src = _write_v3(tmp_path / "lr")
    import_lerobot(src, tmp_path / "ds", episodes="1", cameras=["cam"], image_size=(16, 24))
    store = EpisodeStore.open(tmp_path / "ds")
    assert store.episode_ends.tolist() == [6] and store.meta.keys["obs/cam"].shape == (16, 24, 3)
    assert store.meta.extra["lerobot"]["episodes"] == [1]
    grey = np.asarray(store.array("obs/cam"))[:, 8, 12, 0].astype(int)  # seeks into the file's middle
    np.testing.assert_allclose(grey, [_level(2 + 8 + i) for i in range(6)], atol=3)
    with pytest.raises(ClassRosError, match=r"--cameras \['top'\] are not in the dataset; its cameras are \['cam'\]"):
        import_lerobot(src, tmp_path / "x", cameras=["top"])
    with pytest.raises(ClassRosError, match=r"--episodes '5:9' selects no episode"):
        import_lerobot(src, tmp_path / "x", episodes="5:9")
    assert not (tmp_path / "x").exists()


def test_import_v21_one_file_per_episode(tmp_path):
    root = tmp_path / "v21"
    lengths = (5, 7)
    (root / "meta").mkdir(parents=True)
    for e, T in enumerate(lengths):
        _mp4(root / f"videos/chunk-000/observation.images.top/episode_{e:06d}.mp4", [_level(10 * e + t) for t in range(T)])
        vec = np.array([[_vec(e, t, d) for d in range(2)] for t in range(T)], np.float64)  # float64 in the file
        pq.write_table(pa.table({"observation.state": pa.array(vec.tolist(), pa.list_(pa.float64())),
                                 "action": pa.array(vec.tolist(), pa.list_(pa.float64())),
                                 "timestamp": (np.arange(T) / FPS).astype(np.float32), "frame_index": np.arange(T),
                                 "episode_index": np.full(T, e), "index": np.arange(T) + 5 * e,
                                 "task_index": np.zeros(T, np.int64)}),
                       _mkparent(root / f"data/chunk-000/episode_{e:06d}.parquet"))
    (root / "meta/episodes.jsonl").write_text("".join(json.dumps({"episode_index": e, "tasks": ["stack"], "length": T})
                                                      + "\n" for e, T in enumerate(lengths)))
    (root / "meta/tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": "stack"}) + "\n")
    feat = {"dtype": "float64", "shape": [2], "names": ["x", "y"]}
    (root / "meta/info.json").write_text(json.dumps({
        "codebase_version": "v2.1", "fps": FPS, "chunks_size": 1000,
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": {"observation.state": feat, "action": feat,
                     "observation.images.top": {"dtype": "video", "shape": [32, 48, 3], "names": None},
                     "timestamp": {"dtype": "float32", "shape": [1]}, "frame_index": {"dtype": "int64", "shape": [1]},
                     "episode_index": {"dtype": "int64", "shape": [1]}, "index": {"dtype": "int64", "shape": [1]},
                     "task_index": {"dtype": "int64", "shape": [1]}}}))
    import_lerobot(root, tmp_path / "ds")
    store = EpisodeStore.open(tmp_path / "ds")
    assert store.episode_ends.tolist() == [5, 12] and store.meta.extra["lerobot"]["codebase_version"] == "v2.1"
    np.testing.assert_array_equal(store.episode(1)["action"], [[_vec(1, t, d) for d in range(2)] for t in range(7)])
    grey = np.asarray(store.array("obs/top"))[:, 0, 0, 0].astype(int)
    np.testing.assert_allclose(grey, [_level(t) for t in range(5)] + [_level(10 + t) for t in range(7)], atol=3)


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------ bad inputs: one sentence, nothing written
def _refused(src, out, pattern):
    with pytest.raises(ClassRosError, match=pattern):
        import_lerobot(src, out)
    assert not Path(out).exists()


def test_bad_inputs_are_one_sentence(tmp_path):
    good = _write_v3(tmp_path / "good")
    out = tmp_path / "ds"

    def copy(name):
        return Path(shutil.copytree(good, tmp_path / name))

    bad = copy("v20")
    _edit_info(bad, codebase_version="v2.0")
    _refused(bad, out, r"is a LeRobot v2.0 dataset; only v2.1 and v3.x are read")
    bad = copy("noparquet")
    (bad / "data/chunk-000/file-000.parquet").unlink()
    _refused(bad, out, r"episode 0's data file data/chunk-000/file-000.parquet is missing")
    mp4 = "videos/observation.images.cam/chunk-000/file-000.mp4"
    bad = copy("truncated")
    data = (bad / mp4).read_bytes()
    (bad / mp4).write_bytes(data[: len(data) // 2])
    _refused(bad, out, r"cannot be opened .*damaged or truncated")
    bad = copy("cut")  # the index up front (faststart) survives the cut: found while decoding episode 1, after
    _mp4(bad / mp4, [_level(i) for i in range(16)], faststart=True)  # episode 0 was written; nothing is left
    data = (bad / mp4).read_bytes()
    (bad / mp4).write_bytes(data[: int(len(data) * 0.95)])
    _refused(bad, out, r"episode 1: video .* ends before 1.0000 s, where the table has a frame; the video is shorter")
    bad = copy("short")
    _mp4(bad / mp4, [_level(i) for i in range(10)])  # 10 frames; the table needs 2 + 14
    _refused(bad, out, r"episode 1: video .* lasts 1.000 s but the table has a frame at 1.500 s; the video is shorter")
    bad = copy("codec")
    (bad / mp4).write_bytes((good / mp4).read_bytes().replace(b"avc1", b"zzzz"))
    _refused(bad, out, r"uses a codec that PyAV cannot decode")
    bad = copy("feature")
    _edit_info(bad, features={"observation.language": {"dtype": "string", "shape": [1], "names": None},
                              "next.reward": {"dtype": "float32", "shape": [1], "names": None}})
    _refused(bad, out, r"features 'observation.language' \(string \[1\]\), 'next.reward' \(float32 \[1\]\) cannot be "
                       r"mapped .*; leave them out with --skip observation.language next.reward\.")
    import_lerobot(bad, out, skip=["observation.language", "next.reward"])  # what the message says to do works
    shutil.rmtree(out)
    bad = copy("twice")
    _edit_info(bad, features={"observation.joint_pos": {"dtype": "float32", "shape": [3], "names": None}})
    _refused(bad, out, r"features 'observation.state' and 'observation.joint_pos' would both become 'obs/joint_pos'")
    bad = copy("shifted")  # the table says episode 1 starts half a frame later than its video frames
    eps = pq.read_table(bad / "meta/episodes/chunk-000/file-000.parquet").to_pydict()
    eps["videos/observation.images.cam/from_timestamp"][1] += 0.05
    pq.write_table(pa.table(eps), bad / "meta/episodes/chunk-000/file-000.parquet")
    _refused(bad, out, r"episode 1: video .* has no frame within 0.0001 s of 1.0500 s")
    (tmp_path / "plain").mkdir()
    _refused(tmp_path / "plain", out, r"is not a LeRobot dataset: it has no meta/info.json")


def test_cli_error_is_one_line(tmp_path, capsys):
    good = _write_v3(tmp_path / "good")
    _edit_info(good, codebase_version="v1.6")
    assert main(["import-lerobot", str(good), "--out", str(tmp_path / "ds")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("class-ros import-lerobot: error:") and "v1.6" in err


# ------------------------------------------------------------------ export
def _store(path: Path, lengths=(9, 7), size=(32, 48), rate=20.0) -> EpisodeStore:
    names = ["q0", "q1", "q2", "grip"]
    meta = DatasetMeta(control_rate_hz=rate, action_names=names, joint_names=names,
                       keys={"obs/agentview": KeySchema("uint8", (*size, 3), "image"),
                             "obs/joint_pos": KeySchema("float32", (4,), "low_dim"),
                             "action": KeySchema("float32", (4,), "low_dim")})
    with EpisodeStore.build(path) as b:
        store = b.create(meta)
        frame = 0
        for e, T in enumerate(lengths):
            q = np.array([[_vec(e, t, d) for d in range(4)] for t in range(T)], np.float32)
            img = np.stack([np.full((*size, 3), _level(frame + t), np.uint8) for t in range(T)])
            store.append_episode({"obs/agentview": img, "obs/joint_pos": q, "action": q * 2})
            frame += T
    return EpisodeStore.open(path)


def test_export_layout_stats_and_reimport(tmp_path):
    store = _store(tmp_path / "ds")
    summary = export_lerobot(tmp_path / "ds", tmp_path / "lr", fps=10, task="lift the cube", video_file_mb=1e-6)
    assert summary["frames"] == 5 + 4  # 20 Hz -> 10 fps keeps every 2nd frame
    root = tmp_path / "lr"
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10 and info["total_frames"] == 9
    assert info["features"]["observation.state"]["names"] == ["q0", "q1", "q2", "grip"]
    assert info["features"]["observation.images.agentview"]["info"]["video.codec"] == "h264"
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pydict()
    # the size limit put each episode in its own files, each starting at time 0
    assert eps["data/file_index"] == [0, 1] and eps["videos/observation.images.agentview/file_index"] == [0, 1]
    assert eps["videos/observation.images.agentview/from_timestamp"] == [0.0, 0.0]
    assert eps["videos/observation.images.agentview/to_timestamp"] == [0.5, 0.4] and eps["tasks"] == [["lift the cube"]] * 2
    rows = pq.read_table(root / "data/chunk-000/file-001.parquet").to_pydict()
    assert rows["index"] == [5, 6, 7, 8] and rows["frame_index"] == [0, 1, 2, 3]
    np.testing.assert_array_equal(rows["timestamp"], np.float32(np.arange(4) / 10))
    want = np.asarray(store.array("action"))[9::2]  # episode 1's frames 0, 2, 4, 6
    np.testing.assert_array_equal(np.array(rows["action"], np.float32), want)
    stats = json.loads((root / "meta/stats.json").read_text())
    every = np.asarray(store.array("action"))[np.r_[0:9:2, 9:16:2]].astype(np.float64)
    np.testing.assert_allclose(stats["action"]["mean"], every.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats["action"]["std"], every.std(0), rtol=1e-9)
    assert stats["action"]["min"] == every.min(0).tolist() and stats["action"]["count"] == [9]
    assert np.shape(stats["observation.images.agentview"]["mean"]) == (3, 1, 1)
    assert pq.read_table(root / "meta/tasks.parquet").to_pandas().index.tolist() == ["lift the cube"]

    import_lerobot(root, tmp_path / "back")
    back = EpisodeStore.open(tmp_path / "back")
    assert back.episode_ends.tolist() == [5, 9] and back.meta.control_rate_hz == 10
    np.testing.assert_array_equal(np.asarray(back.array("action")), np.asarray(store.array("action"))[np.r_[0:9:2, 9:16:2]])
    grey = np.asarray(back.array("obs/agentview"))[:, 10, 10, 0].astype(int)
    np.testing.assert_allclose(grey, [_level(i) for i in [0, 2, 4, 6, 8, 9, 11, 13, 15]], atol=3)


def test_export_av1_and_refusals(tmp_path):
    _store(tmp_path / "ds", lengths=(6,), size=(64, 64), rate=10.0)
    export_lerobot(tmp_path / "ds", tmp_path / "lr", codec="av1")
    info = json.loads((tmp_path / "lr/meta/info.json").read_text())
    assert info["features"]["observation.images.agentview"]["info"]["video.codec"] == "av1"
    with av.open(str(tmp_path / "lr/videos/observation.images.agentview/chunk-000/file-000.mp4")) as c:
        assert c.streams.video[0].codec_context.name in ("libdav1d", "av1") and c.streams.video[0].frames == 6
    with pytest.raises(ClassRosError, match=r"already exists"):
        export_lerobot(tmp_path / "ds", tmp_path / "lr")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes/thesis.tex").write_text("x")
    with pytest.raises(ClassRosError, match=r"is not a LeRobot dataset .*--overwrite replaces only"):
        export_lerobot(tmp_path / "ds", tmp_path / "notes", overwrite=True)  # never deletes a non-LeRobot folder
    assert (tmp_path / "notes/thesis.tex").read_text() == "x"
    export_lerobot(tmp_path / "ds", tmp_path / "lr", overwrite=True, crf=20)  # replaces a LeRobot dataset
    with pytest.raises(ClassRosError, match=r"runs at 10 Hz; --fps must divide it"):
        export_lerobot(tmp_path / "ds", tmp_path / "x", fps=3)
    _store(tmp_path / "odd", lengths=(3,), size=(33, 48))
    with pytest.raises(ClassRosError, match=r"33x48 cannot be stored as yuv420p"):
        export_lerobot(tmp_path / "odd", tmp_path / "x")
    assert not (tmp_path / "x").exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_image_stats_equal_numpy_over_the_pixels():
    from class_ros.data.lerobot.stats import QUANTILES, image_stats

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 9, 7, 3), dtype=np.uint8)
    frames[..., 1] = rng.integers(100, 110, (5, 9, 7))  # few levels: interpolation between repeated values
    got = image_stats(frames)
    pixels = frames.reshape(-1, 3).astype(np.float64) / 255
    want = {"min": pixels.min(0), "max": pixels.max(0), "mean": pixels.mean(0), "std": pixels.std(0),
            **{k: np.quantile(pixels, q, axis=0) for k, q in QUANTILES.items()}}
    for k, v in want.items():
        np.testing.assert_allclose(got[k].reshape(3), v, rtol=0, atol=1e-12, err_msg=k)
    assert got["count"].tolist() == [5]
    from class_ros.data.lerobot.stats import thumbnail
    thumb = thumbnail(np.zeros((360, 640, 3), np.uint8))
    assert thumb.shape == (90, 160, 3) and thumb.base is None  # a view would pin the exporter's block of frames


# ------------------------------------------------------------------ the real SO-101 dataset
def _so101_rows(root: Path, episodes) -> dict:
    table = pq.read_table(root / "data/chunk-000/file-000.parquet").to_pydict()
    keep = [i for i, e in enumerate(table["episode_index"]) if e in episodes]
    return {k: [v[i] for i in keep] for k, v in table.items()}


def _so101_frames(root: Path, first: int, count: int, size) -> np.ndarray:
    """Video frames first .. first+count-1 by their presentation time, resized as the importer documents."""
    out = []
    with av.open(str(root / "videos/observation.images.wrist/chunk-000/file-000.mp4")) as c:
        for frame in c.decode(video=0):
            k = round(frame.time * 30)
            if first <= k < first + count:
                rgb = frame.to_ndarray(format="rgb24")
                out.append(cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA))
    return np.stack(out)


def test_so101_import_matches_independent_reads(realdata, tmp_path):
    root = realdata / SO101
    import_lerobot(root, tmp_path / "ds", episodes="4:6", image_size=(96, 96))
    store = EpisodeStore.open(tmp_path / "ds")
    rows = _so101_rows(root, {4, 5})
    assert store.episode_ends.tolist() == [90, 252] and store.meta.control_rate_hz == 30
    assert store.meta.joint_names == ["j0", "j1", "j2", "j3", "j4", "j5"]
    assert store.meta.extra["lerobot"]["tasks"] == ["pick and place"]
    np.testing.assert_array_equal(np.asarray(store.array("obs/joint_pos")), np.array(rows["observation.state"], np.float32))
    np.testing.assert_array_equal(np.asarray(store.array("action")), np.array(rows["action"], np.float32))
    # episode 4 starts at 51.0 s = video frame 1530 (from its metadata); the frames are the same pixels
    np.testing.assert_array_equal(np.asarray(store.array("obs/wrist")), _so101_frames(root, 1530, 252, (96, 96)))


def test_so101_round_trip(realdata, tmp_path):
    root = realdata / SO101
    import_lerobot(root, tmp_path / "a", episodes="4:6", image_size=(96, 96))
    export_lerobot(tmp_path / "a", tmp_path / "lr")
    import_lerobot(tmp_path / "lr", tmp_path / "b")
    a, b = EpisodeStore.open(tmp_path / "a"), EpisodeStore.open(tmp_path / "b")
    assert a.episode_ends.tolist() == b.episode_ends.tolist()
    for key in ("action", "obs/joint_pos"):
        assert np.asarray(a.array(key)).tobytes() == np.asarray(b.array(key)).tobytes()
    psnr = _psnr(np.asarray(a.array("obs/wrist")), np.asarray(b.array("obs/wrist")))
    assert psnr > 30, psnr  # h264 at crf 30 on 96x96: measured 34 dB on the whole example
    orig = _so101_rows(root, {4, 5})
    exported = pq.read_table(tmp_path / "lr/data/chunk-000/file-000.parquet").to_pydict()
    assert exported["timestamp"] == orig["timestamp"] and exported["frame_index"] == orig["frame_index"]
    assert b.meta.extra["lerobot"]["features"] == a.meta.extra["lerobot"]["features"]
    # field by field against the real dataset's layout
    info_real = json.loads((root / "meta/info.json").read_text())
    info_ours = json.loads((tmp_path / "lr/meta/info.json").read_text())
    assert set(info_ours) == set(info_real) and set(info_ours["features"]) == set(info_real["features"])
    for name, ft in info_real["features"].items():
        assert info_ours["features"][name]["dtype"] == ft["dtype"] and info_ours["features"][name]["names"] == ft["names"]
    assert set(info_real["features"]["observation.images.wrist"]["info"]) == \
        set(info_ours["features"]["observation.images.wrist"]["info"])
    for rel in ("meta/episodes/chunk-000/file-000.parquet", "data/chunk-000/file-000.parquet"):
        real, ours = pq.read_schema(root / rel), pq.read_schema(tmp_path / "lr" / rel)
        assert {f.name: f.type for f in real} == {f.name: f.type for f in ours}, rel
    assert set(json.loads((root / "meta/stats.json").read_text())) == \
        set(json.loads((tmp_path / "lr/meta/stats.json").read_text()))


def test_feature_names_map_both_ways():
    from class_ros.data.lerobot.names import flat_names, lerobot_feature, store_key

    pairs = {"observation.images.wrist": ("obs/wrist", "image"), "observation.state": ("obs/joint_pos", "low_dim"),
             "observation.environment_state": ("obs/environment_state", "low_dim"), "action": ("action", "low_dim")}
    for feature, (key, kind) in pairs.items():
        assert store_key(feature) == key and lerobot_feature(key, kind) == feature
    assert store_key("observation.image") == "obs/image" and store_key("next.reward") is None
    assert flat_names({"motors": ["a", "b"], "gripper": ["g"]}, 3) == ["a", "b", "g"]
    assert flat_names(["a", "b"], 3) is None and flat_names(None, 2) is None


def test_state_only_dataset_both_ways(tmp_path):
    names = ["x", "y"]
    meta = DatasetMeta(control_rate_hz=10, action_names=names, joint_names=names,
                       keys={"obs/joint_pos": KeySchema("float32", (2,)), "action": KeySchema("float32", (2,))})
    q = np.arange(12, dtype=np.float32).reshape(6, 2) / 4
    with EpisodeStore.build(tmp_path / "ds") as b:
        b.create(meta).append_episode({"obs/joint_pos": q, "action": q + 1})
    export_lerobot(tmp_path / "ds", tmp_path / "lr")
    info = json.loads((tmp_path / "lr/meta/info.json").read_text())
    assert info["video_path"] is None and not (tmp_path / "lr/videos").exists()
    import_lerobot(tmp_path / "lr", tmp_path / "back")
    back = EpisodeStore.open(tmp_path / "back")
    assert back.keys == ["action", "obs/joint_pos"]
    np.testing.assert_array_equal(np.asarray(back.array("action")), q + 1)


def test_import_image_features_stored_in_the_parquet(tmp_path):
    root = _write_v3(tmp_path / "lr")  # add a second camera recorded without video: PNG bytes in the table
    table = pq.read_table(root / "data/chunk-000/file-000.parquet")
    pngs = [cv2.imencode(".png", np.full((8, 10, 3), (i, 2 * i, 3 * i), np.uint8))[1].tobytes() for i in range(14)]
    struct = pa.array([{"bytes": b, "path": None} for b in pngs],
                      pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(table.append_column("observation.images.side", struct), root / "data/chunk-000/file-000.parquet")
    _edit_info(root, features={"observation.images.side": {"dtype": "image", "shape": [8, 10, 3],
                                                           "names": ["height", "width", "channel"]}})
    import_lerobot(root, tmp_path / "ds", cameras=["side"])
    store = EpisodeStore.open(tmp_path / "ds")
    assert store.keys == ["action", "obs/joint_pos", "obs/side"]
    side = np.asarray(store.array("obs/side"))
    # PNG is lossless; imencode took the tuple as BGR, so RGB comes back reversed
    np.testing.assert_array_equal(side[:, 0, 0], [[3 * i, 2 * i, i] for i in range(14)])
