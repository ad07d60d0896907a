"""import-robomimic on files built here in the robomimic layout, and refusals of what is not."""
from __future__ import annotations

import json
import pickle

import h5py
import numpy as np
import pytest

from class_ros.data.store import EpisodeStore
from class_ros.errors import ClassRosError
from training.import_robomimic import import_robomimic

ENV_ARGS = {"env_name": "Lift", "type": 1,
            "env_kwargs": {"control_freq": 20, "controller_configs": {"type": "OSC_POSE", "control_delta": True}}}
LENGTHS = {"demo_0": 5, "demo_1": 3, "demo_2": 4, "demo_10": 6}  # demo_10 must come after demo_2


def _value(demo: int, t: int, d: int) -> float:
    return demo * 100 + t + d / 10


def _write(path, lengths=LENGTHS, extra=None):
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(ENV_ARGS)
        for name, T in lengths.items():
            n = int(name.split("_")[1])
            g = data.create_group(name)
            g.create_dataset("actions", data=[[_value(n, t, d) for d in range(7)] for t in range(T)])
            obs = g.create_group("obs")
            img = np.zeros((T, 8, 10, 3), np.uint8)
            img[:, 0, 0, 0] = n
            img[:, 0, 0, 1] = np.arange(T)
            obs.create_dataset("agentview_image", data=img)
            obs.create_dataset("robot0_eef_pos", data=np.full((T, 3), n, np.float64))
            obs.create_dataset("object", data=np.arange(T, dtype=np.float32))  # (T,) scalar per frame
            g.create_dataset("states", data=np.zeros((T, 2)))  # not imported
        mask = f.create_group("mask")
        mask.create_dataset("train", data=np.array([b"demo_10", b"demo_0", b"demo_2"]))
        mask.create_dataset("valid", data=np.array([b"demo_1"]))
        if extra:
            extra(f)
    return path


def test_import_all_demos_in_numeric_order(tmp_path):
    src = _write(tmp_path / "lift.hdf5")
    summary = import_robomimic(src, tmp_path / "ds")
    store = EpisodeStore.open(tmp_path / "ds")
    assert summary["episodes"] == 4 and summary["frames"] == 18
    assert store.episode_ends.tolist() == [5, 8, 12, 18]  # demo_0, demo_1, demo_2, demo_10
    ep = store.episode(3)
    np.testing.assert_allclose(ep["action"], [[_value(10, t, d) for d in range(7)] for t in range(6)], rtol=1e-6)
    assert ep["obs/agentview_image"].shape == (6, 8, 10, 3) and ep["obs/agentview_image"].dtype == np.uint8
    np.testing.assert_array_equal(ep["obs/agentview_image"][:, 0, 0, :2], [[10, t] for t in range(6)])
    np.testing.assert_array_equal(ep["obs/object"][:, 0], np.arange(6))
    meta = store.meta
    assert meta.keys["obs/agentview_image"].kind == "image" and meta.keys["obs/robot0_eef_pos"].shape == (3,)
    assert meta.extra["env_args"] == ENV_ARGS and meta.control_rate_hz == 20
    assert meta.action_kind == "ee_delta" and meta.action_names[-1] == "gripper"
    store.validate()


def test_filter_key_and_obs_keys(tmp_path):
    src = _write(tmp_path / "lift.hdf5")
    import_robomimic(src, tmp_path / "train", obs_keys=["robot0_eef_pos"], filter_key="train")
    store = EpisodeStore.open(tmp_path / "train")
    assert store.keys == ["action", "obs/robot0_eef_pos"]
    assert store.episode_ends.tolist() == [5, 9, 15]  # demo_0, demo_2, demo_10
    np.testing.assert_array_equal(store.array("obs/robot0_eef_pos")[:, 0], [0] * 5 + [2] * 4 + [10] * 6)
    assert store.meta.extra["demos"] == ["demo_0", "demo_2", "demo_10"]
    with pytest.raises(ClassRosError, match=r"no filter key 'test'.*train"):
        import_robomimic(src, tmp_path / "x", filter_key="test")
    with pytest.raises(ClassRosError, match=r"\['gripper_qpos'\] are not in"):
        import_robomimic(src, tmp_path / "x", obs_keys=["gripper_qpos"])
    assert not (tmp_path / "x").exists()


def test_pickled_and_object_dtypes_are_refused(tmp_path):
    blob = np.void(pickle.dumps({"a": 1}))

    def opaque(f):  # a pickled blob stored as an opaque HDF5 type in place of demo_1's actions
        del f["data/demo_1/actions"]
        f["data/demo_1"].create_dataset("actions", data=np.array([blob] * 3))

    src = _write(tmp_path / "opaque.hdf5", extra=opaque)
    with pytest.raises(ClassRosError, match=r"data/demo_1/actions has dtype .*no pickle"):
        import_robomimic(src, tmp_path / "ds")

    def strings(f):
        for name in LENGTHS:
            f[f"data/{name}/obs"].create_dataset("lang", data=["pick the cube"] * LENGTHS[name],
                                                 dtype=h5py.string_dtype())

    src = _write(tmp_path / "strings.hdf5", extra=strings)
    with pytest.raises(ClassRosError, match=r"data/demo_0/obs/lang has dtype object"):
        import_robomimic(src, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_bad_layouts_leave_nothing(tmp_path):
    def short(f):
        del f["data/demo_2/obs/robot0_eef_pos"]
        f["data/demo_2/obs"].create_dataset("robot0_eef_pos", data=np.zeros((3, 3)))

    with pytest.raises(ClassRosError, match=r"data/demo_2/obs/robot0_eef_pos has shape \(3, 3\).*4 actions"):
        import_robomimic(_write(tmp_path / "short.hdf5", extra=short), tmp_path / "ds")

    def nan(f):
        f["data/demo_10/actions"][2, 1] = np.nan

    with pytest.raises(ClassRosError, match=r"data/demo_10: key 'action' has a non-finite value"):
        import_robomimic(_write(tmp_path / "nan.hdf5", extra=nan), tmp_path / "ds")
    assert not (tmp_path / "ds").exists()  # demos 0..2 were written, then removed with the failure
    (tmp_path / "not.hdf5").write_bytes(b"not hdf5 at all")
    with pytest.raises(ClassRosError, match="not a readable HDF5"):
        import_robomimic(tmp_path / "not.hdf5", tmp_path / "ds")


def test_real_non_robomimic_hdf5_is_refused(realdata, tmp_path):
    src = realdata / "hdf5_NOT_robomimic_isaaclab_cartpole_BC" / "demo.hdf5"
    with pytest.raises(ClassRosError, match=r"is not a robomimic file: it has no 'data' group.*demo_0"):
        import_robomimic(src, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_cli(tmp_path, capsys):
    from class_ros.cli import main
    src = _write(tmp_path / "lift.hdf5")
    assert main(["import-robomimic", str(src), "--out", str(tmp_path / "ds"), "--filter-key", "valid"]) == 0
    assert str(tmp_path / "ds") in capsys.readouterr().out
    assert EpisodeStore.open(tmp_path / "ds").n_episodes == 1
    assert main(["import-robomimic", str(src), "--out", str(tmp_path / "ds")]) == 1
    err = capsys.readouterr().err
    assert "--overwrite" in err and "Traceback" not in err


def test_overwrite_replaces_only_a_dataset_and_keeps_it_when_the_import_fails(tmp_path):
    src = _write(tmp_path / "lift.hdf5")
    import_robomimic(src, tmp_path / "ds", filter_key="valid")
    before = EpisodeStore.open(tmp_path / "ds").fingerprint()

    def nan(f):
        f["data/demo_10/actions"][2, 1] = np.nan

    with pytest.raises(ClassRosError, match="non-finite"):
        import_robomimic(_write(tmp_path / "nan.hdf5", extra=nan), tmp_path / "ds", overwrite=True)
    assert EpisodeStore.open(tmp_path / "ds").fingerprint() == before  # the old dataset is still there, whole
    import_robomimic(src, tmp_path / "ds", overwrite=True)
    assert EpisodeStore.open(tmp_path / "ds").n_episodes == len(LENGTHS)
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "thesis.tex").write_text("x")
    with pytest.raises(ClassRosError, match="not a class_ros output"):
        import_robomimic(src, tmp_path / "u", overwrite=True)
    assert (tmp_path / "u" / "thesis.tex").read_text() == "x"
