"""The zarr episode store: round trip, atomic append under a real kill, validation, metadata errors."""
import json
import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest

from class_ros.data.schema import DatasetMeta, KeySchema
from class_ros.data.store import EpisodeStore
from class_ros.errors import ClassRosError

H = W = 12


def make_meta() -> DatasetMeta:
    return DatasetMeta(
        control_rate_hz=10.0,
        action_names=[f"j{i}" for i in range(3)],
        keys={"obs/cam": KeySchema("uint8", (H, W, 3), "image"), "obs/q": KeySchema("float32", (2,))},
        source="test",
    )


def make_episode(e: int, n: int) -> dict:
    rng = np.random.default_rng(e)
    return {
        "obs/cam": rng.integers(0, 255, (n, H, W, 3), dtype=np.uint8),
        "obs/q": rng.normal(size=(n, 2)).astype(np.float32),
        "action": (np.arange(n * 3).reshape(n, 3) + 1000 * e).astype(np.float32),
    }


def test_round_trip(tmp_path):
    store = EpisodeStore.create(tmp_path / "ds", make_meta())
    episodes = [make_episode(e, n) for e, n in enumerate([5, 1, 9])]
    for ep in episodes:
        store.append_episode(ep)
    store.finish()
    store = EpisodeStore.open(tmp_path / "ds")
    assert store.n_episodes == 3 and store.n_frames == 15
    np.testing.assert_array_equal(store.episode_ends, [5, 6, 15])
    for e, ep in enumerate(episodes):
        got = store.episode(e)
        for key in ep:
            np.testing.assert_array_equal(got[key], ep[key])
    assert store.meta.action_names == ["j0", "j1", "j2"]
    assert store.meta.keys["obs/cam"].kind == "image"
    store.validate()
    # reads in any order, with repeats, equal the in-memory copy
    idx = np.array([14, 0, 7, 7, 5])
    lazy = store.read("obs/cam", idx)
    np.testing.assert_array_equal(lazy, store.load().read("obs/cam", idx))


def test_reopen_append_and_fingerprint(tmp_path):
    store = EpisodeStore.create(tmp_path / "ds", make_meta())
    store.append_episode(make_episode(0, 4))
    store.finish()
    fp1 = EpisodeStore.open(tmp_path / "ds").fingerprint()
    store = EpisodeStore.open(tmp_path / "ds", "a")
    store.append_episode(make_episode(1, 3))
    assert EpisodeStore.open(tmp_path / "ds").n_frames == 7
    assert EpisodeStore.open(tmp_path / "ds").fingerprint() != fp1
    with pytest.raises(ClassRosError, match="read-only"):
        EpisodeStore.open(tmp_path / "ds").append_episode(make_episode(2, 2))


def test_append_rejects_bad_episodes_without_writing(tmp_path):
    store = EpisodeStore.create(tmp_path / "ds", make_meta())
    store.append_episode(make_episode(0, 4))
    bad = make_episode(1, 4)
    bad["action"][2, 1] = np.nan
    with pytest.raises(ClassRosError, match=r"'action'.*frame 2"):
        store.append_episode(bad)
    short = make_episode(1, 4)
    short["obs/q"] = short["obs/q"][:3]
    with pytest.raises(ClassRosError, match="same non-zero length"):
        store.append_episode(short)
    missing = make_episode(1, 4)
    del missing["obs/cam"]
    with pytest.raises(ClassRosError, match="missing"):
        store.append_episode(missing)
    wrong = make_episode(1, 4)
    wrong["obs/q"] = np.zeros((4, 5), np.float32)
    with pytest.raises(ClassRosError, match="shape"):
        store.append_episode(wrong)
    store.finish()
    reopened = EpisodeStore.open(tmp_path / "ds")
    assert reopened.n_episodes == 1 and reopened.n_frames == 4
    reopened.validate()


def _slow_append(path: str, started) -> None:
    """Append a large episode; the parent kills this process while it is writing."""
    store = EpisodeStore.open(path, "a")
    ep = make_episode(7, 4000)
    started.set()
    store.append_episode(ep)
    store.append_episode(ep)


def test_killed_append_leaves_previous_episode_count(tmp_path):
    path = tmp_path / "ds"
    store = EpisodeStore.create(path, make_meta())
    for e in range(2):
        store.append_episode(make_episode(e, 6))
    store.finish()
    before = {k: np.asarray(v) for k, v in EpisodeStore.open(path).load().episode(1).items()}
    ctx = mp.get_context("spawn")
    started = ctx.Event()
    proc = ctx.Process(target=_slow_append, args=(str(path), started))
    proc.start()
    assert started.wait(60)
    # wait until the child has really started writing data past the committed end, then kill it
    deadline = time.time() + 60
    action_meta = path / "action" / "zarr.json"
    while time.time() < deadline and json.loads(action_meta.read_text())["shape"][0] <= 12:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    reopened = EpisodeStore.open(path)  # says nothing is wrong
    assert reopened.n_episodes == 2 and reopened.n_frames == 12
    reopened.validate()
    for k, v in reopened.episode(1).items():
        np.testing.assert_array_equal(v, before[k])
    # the next writer trims the uncommitted tail and appends cleanly after it
    writer = EpisodeStore.open(path, "a")
    writer.append_episode(make_episode(3, 2))
    final = EpisodeStore.open(path)
    np.testing.assert_array_equal(final.episode_ends, [6, 12, 14])
    np.testing.assert_array_equal(final.episode(2)["action"], make_episode(3, 2)["action"])


def test_corrupted_metadata_is_one_clear_error(tmp_path):
    path = tmp_path / "ds"
    store = EpisodeStore.create(path, make_meta())
    store.append_episode(make_episode(0, 3))
    store.finish()
    root = json.loads((path / "zarr.json").read_text())
    root["attributes"]["class_ros"]["meta"]["format_version"] = 99
    (path / "zarr.json").write_text(json.dumps(root))
    with pytest.raises(ClassRosError, match="format version 99"):
        EpisodeStore.open(path)
    (path / "zarr.json").write_text("{not json")
    with pytest.raises(ClassRosError, match="cannot read the dataset metadata"):
        EpisodeStore.open(path)
    with pytest.raises(ClassRosError, match="not a dataset store"):
        EpisodeStore.open(tmp_path / "nowhere")


def test_validate_names_key_and_episode(tmp_path):
    path = tmp_path / "ds"
    store = EpisodeStore.create(path, make_meta())
    for e in range(3):
        store.append_episode(make_episode(e, 4))
    store.finish()
    # damage the stored data behind the store's back: a NaN in episode 2, then broken episode_ends
    import zarr
    zarr.open_array(str(path / "obs" / "q"), mode="r+")[9, 0] = np.nan
    with pytest.raises(ClassRosError, match=r"'obs/q'.*episode 2 \(frame 1"):
        EpisodeStore.open(path).validate()
    zarr.open_array(str(path / "obs" / "q"), mode="r+")[9, 0] = 0.0
    zarr.open_array(str(path / "meta" / "episode_ends"), mode="r+")[1] = 3
    with pytest.raises(ClassRosError, match="episode_ends is not strictly increasing at episode 1"):
        EpisodeStore.open(path).validate()


def test_create_refuses_existing_and_schema_mismatch(tmp_path):
    path = tmp_path / "ds"
    EpisodeStore.create(path, make_meta())
    with pytest.raises(ClassRosError, match="already exists"):
        EpisodeStore.create(path, make_meta())
    other = make_meta()
    other.action_names = ["a", "b"]
    with pytest.raises(ClassRosError, match="different schema"):
        EpisodeStore.open_or_create(path, other)
    with pytest.raises(ClassRosError, match="action_kind"):
        DatasetMeta(control_rate_hz=10, action_names=["a"], action_kind="teleport")
    with pytest.raises(ClassRosError, match="image keys must be uint8"):
        KeySchema("float32", (4, 4, 3), "image")


def test_build_is_whole_or_absent_and_overwrite_only_replaces_a_dataset(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="boom"):
        with EpisodeStore.build(out) as b:
            b.create(make_meta()).append_episode(make_episode(0, 3))
            raise RuntimeError("boom")
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing at out, no hidden leftovers
    with EpisodeStore.build(out, lineage={"source": "test"}) as b:
        b.create(make_meta()).append_episode(make_episode(0, 3))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "dataset" and manifest["complete"] is True and manifest["n_frames"] == 3
    assert manifest["lineage"] == {"source": "test"} and manifest["fingerprint"] == EpisodeStore.open(out).fingerprint()
    with pytest.raises(ClassRosError, match="already exists.*--overwrite"):
        with EpisodeStore.build(out):
            pass
    # a failing overwrite keeps the old dataset whole
    with pytest.raises(ClassRosError, match="non-finite"):
        with EpisodeStore.build(out, overwrite=True) as b:
            bad = make_episode(1, 4)
            bad["action"][1, 0] = np.inf
            b.create(make_meta()).append_episode(bad)
    assert EpisodeStore.open(out).n_frames == 3
    with EpisodeStore.build(out, overwrite=True) as b:
        b.create(make_meta()).append_episode(make_episode(1, 5))
    assert EpisodeStore.open(out).n_frames == 5
    # a folder that is not a class_ros dataset is never replaced
    thesis = tmp_path / "u" / "thesis.tex"
    thesis.parent.mkdir()
    thesis.write_text("x")
    with pytest.raises(ClassRosError, match="not a class_ros output"):
        with EpisodeStore.build(thesis.parent, overwrite=True):
            pass
    assert thesis.read_text() == "x"
    # a store without its manifest (never finished) is refused by readers
    EpisodeStore.create(tmp_path / "raw", make_meta()).append_episode(make_episode(0, 2))
    with pytest.raises(ClassRosError, match="not a complete class_ros dataset"):
        EpisodeStore.open(tmp_path / "raw")
