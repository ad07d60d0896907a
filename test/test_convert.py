"""`class-ros convert` on bags written here with rosbags (sqlite3 and MCAP): exact frames and values,
as-of sampling, staleness drops, episode splits, damaged bags, custom messages, the CLI and the report."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_bags_util import MS, T0, TS, compressed_png, float_array, image, joint_state, trajectory, write_bag

from class_ros.data.bags.mapping import parse_mapping
from class_ros.data.store import EpisodeStore
from class_ros.errors import ClassRosError
from training.convert import REPORT_NAME, convert_bags

STORAGES = ["sqlite3", "mcap"]
JS = "sensor_msgs/msg/JointState"
F64 = "std_msgs/msg/Float64MultiArray"


def _camera_bag(path, frame: np.ndarray, encoding: str):
    """Five frames at 10 Hz of a constant image on /cam, with joint states and commands."""
    msgs = [("/joint_states", JS, T0 + k * 100 * MS, joint_state(T0 + k * 100 * MS, ["a", "b", "c"], [0, 0, 0]))
            for k in range(5)]
    msgs += [("/cmd", F64, T0 + k * 100 * MS, float_array([0, 0])) for k in range(5)]
    msgs += [("/cam", "sensor_msgs/msg/Image", T0 + k * 100 * MS, image(T0 + k * 100 * MS, frame, encoding))
             for k in range(5)]
    return write_bag(path, msgs, "mcap")


def test_crop_outside_the_image_and_huge_sizes_are_named_before_reading(tmp_path):
    _camera_bag(tmp_path / "bag", np.zeros((8, 8, 3), np.uint8), "rgb8")
    m = _mapping()
    m["observations"]["cam"] = {"topic": "/cam", "image": {"size": [4, 4], "crop": [2, 2, 8, 8]}}
    with pytest.raises(ClassRosError) as err:
        convert_bags([tmp_path / "bag"], parse_mapping(m), tmp_path / "ds")
    # the crop, not the frames, is at fault: said as such, with no pointer to a report that was never written
    assert "crop box (top, left, height, width) = (2, 2, 8, 8) does not fit inside the 8x8 image" in str(err.value)
    assert "corrupt" not in str(err.value) and "report" not in str(err.value)
    m["observations"]["cam"]["image"] = {"size": [100000, 100000]}
    with pytest.raises(ClassRosError, match=r"image.size: is \[100000, 100000\].*at most 2048"):
        parse_mapping(m)


def _mapping(**over) -> dict:
    m = {"rate_hz": 10, "reference": "/joint_states", "max_age_s": 0.2,
         "observations": {"joint_pos": {"topic": "/joint_states", "joints": ["a", "b", "c"], "max_age_s": 0.05}},
         "action": {"sources": [{"topic": "/cmd", "field": "data", "names": ["ca", "cb"]}]}}
    m.update(over)
    return m


def _hand_bag(path, storage):
    """Joint states stamped at 0, .1, .2, .31, .4, .6 s (received 3 ms later; .5 dropped) in a shuffled
    joint order; commands (no header) received at .05, .15, ... .55 s."""
    msgs = []
    orders = [["a", "b", "c"], ["c", "a", "b"], ["b", "c", "a"]]
    for k, t_ms in enumerate([0, 100, 200, 310, 400, 600]):
        names = orders[k % 3]
        values = {"a": k, "b": 10 + k, "c": 20 + k}
        stamp = T0 + t_ms * MS
        msgs.append(("/joint_states", JS, stamp + 3 * MS, joint_state(stamp, names, [values[n] for n in names])))
    for k in range(6):
        msgs.append(("/cmd", F64, T0 + (50 + 100 * k) * MS, float_array([100 + k, 200 + k])))
    return write_bag(path, msgs, storage)


@pytest.mark.parametrize("storage", STORAGES)
def test_exact_frames_as_of_and_staleness(tmp_path, storage):
    bag = _hand_bag(tmp_path / "bag", storage)
    report = convert_bags([bag], parse_mapping(_mapping()), tmp_path / "ds")
    store = EpisodeStore.open(tmp_path / "ds")
    ep = store.episode(0)
    # Grid 0 .. 0.6 s. t=0: no command yet. t=.3: the .31 message is in the future, so .2 (age .1 > .05)
    # is stale; t=.5: .4 is stale. Kept: .1, .2, .4, .6 with the command received before each.
    np.testing.assert_array_equal(ep["obs/joint_pos"], [[1, 11, 21], [2, 12, 22], [4, 14, 24], [5, 15, 25]])
    np.testing.assert_array_equal(ep["action"], [[100, 200], [101, 201], [103, 203], [105, 205]])
    rep = report["episodes"][0]
    assert rep["frames"] == 7 and rep["kept"] == 4
    assert rep["dropped"] == {"missing:action": 1, "stale:joint_pos": 2}
    assert rep["age"]["joint_pos"]["max_s"] == pytest.approx(0.0)  # header stamps, not receive times
    assert rep["age"]["action"]["max_s"] == pytest.approx(0.05)
    assert rep["duration_s"] == pytest.approx(0.5)
    assert store.meta.action_names == ["ca", "cb"] and store.meta.joint_names == ["a", "b", "c"]
    assert store.meta.control_rate_hz == 10 and store.meta.action_kind == "other"
    assert json.loads((tmp_path / "ds" / REPORT_NAME).read_text())["frames"] == 4


def test_receive_time_mode_changes_what_is_sampled(tmp_path):
    bag = _hand_bag(tmp_path / "bag", "sqlite3")
    m = _mapping(time="receive")
    m["observations"]["joint_pos"]["max_age_s"] = 0.2
    convert_bags([bag], parse_mapping(m), tmp_path / "ds")
    ep = EpisodeStore.open(tmp_path / "ds").episode(0)
    # Receive times are 3 ms late, so the grid starts at 0.003 s and each frame sees the message received
    # at its own time; commands at .05+.1k: frame 0 (t=.003) has none.
    np.testing.assert_array_equal(ep["obs/joint_pos"][:, 0], [1, 2, 2, 4, 4, 5])


def _rich_bag(path, storage, rng):
    """Several rates with jitter and dropped messages: images 15 Hz, compressed 8 Hz, joint states 50 Hz
    (shuffled order), arm commands 10 Hz, gripper 5 Hz, a leader trajectory 20 Hz. Values encode the
    message index so the test can tell exactly which message each frame took."""
    msgs, truth = [], {}

    def times(rate, dur_s, jitter_ms, drop):
        n = int(dur_s * rate)
        t = T0 + (np.arange(n) * 1e9 / rate + rng.uniform(-jitter_ms, jitter_ms, n) * MS).astype(np.int64)
        keep = np.ones(n, bool)
        keep[rng.choice(n, drop, replace=False)] = False
        return t[keep]

    t_img = times(15, 3, 4, 6)
    truth["img"] = t_img
    for k, t in enumerate(t_img):
        px = np.full((24, 32, 3), 0, np.uint8)
        px[..., 0], px[..., 1] = k % 256, 7  # red channel = message index
        msgs.append(("/camera/image_raw", "sensor_msgs/msg/Image", t + 2 * MS, image(t, px)))
    t_wrist = times(8, 3, 5, 3)
    truth["wrist"] = t_wrist
    for k, t in enumerate(t_wrist):
        px = np.full((16, 16, 3), 3, np.uint8)
        px[..., 2] = k  # blue channel = message index (png: lossless)
        msgs.append(("/wrist/compressed", "sensor_msgs/msg/CompressedImage", t + 2 * MS, compressed_png(t, px)))
    t_js = times(50, 3, 2, 20)
    truth["js"] = t_js
    names = ["j1", "j2", "gripper"]
    for k, t in enumerate(t_js):
        order = list(rng.permutation(names))
        vals = {"j1": k, "j2": 1000 + k, "gripper": 2000 + k}
        msgs.append(("/joint_states", JS, t + 1 * MS, joint_state(t, order, [vals[n] for n in order])))
    t_arm = times(10, 3, 8, 4)
    truth["arm"] = t_arm
    for k, t in enumerate(t_arm):
        msgs.append(("/arm/commands", F64, t, float_array([k, -k])))
    t_grip = times(5, 3, 8, 2)
    truth["grip"] = t_grip
    for k, t in enumerate(t_grip):
        msgs.append(("/gripper/commands", F64, t, float_array([0.5 * k])))
    t_lead = times(20, 3, 3, 5)
    truth["lead"] = t_lead
    for k, t in enumerate(t_lead):
        msgs.append(("/leader/trajectory", "trajectory_msgs/msg/JointTrajectory", t + MS,
                     trajectory(t, ["j2", "j1"], [1000 + k, k])))
    write_bag(path, msgs, storage)
    return truth


def _latest(times, t):
    """Brute-force oracle: index of the latest time <= t, or -1."""
    best = -1
    for i, s in enumerate(times):
        if s <= t and (best < 0 or s >= times[best]):
            best = i
    return best


RICH = {
    "rate_hz": 10, "reference": "/camera/image_raw", "max_age_s": 0.3,
    "observations": {
        "agentview": {"topic": "/camera/image_raw", "image": {"size": [12, 16]}, "max_age_s": 0.1},
        "wrist": {"topic": "/wrist/compressed", "image": {"size": [8, 8], "crop": [0, 0, 16, 16]}, "max_age_s": 0.2},
        "joint_pos": {"topic": "/joint_states", "joints": ["j1", "j2", "gripper"], "max_age_s": 0.03},
    },
    "action": {"kind": "joint_position", "sources": [
        {"topic": "/arm/commands", "field": "data", "names": ["j1", "j2"]},
        {"topic": "/gripper/commands", "field": "data", "names": ["gripper"], "max_age_s": 0.3}]},
}


@pytest.mark.parametrize("storage", STORAGES)
def test_many_rates_jitter_drops_match_oracle(tmp_path, storage):
    rng = np.random.default_rng(1 if storage == "mcap" else 2)
    truth = _rich_bag(tmp_path / "bag", storage, rng)
    report = convert_bags([tmp_path / "bag"], parse_mapping(RICH), tmp_path / "ds")
    ep = EpisodeStore.open(tmp_path / "ds").episode(0)

    t_ref = np.sort(truth["img"])
    grid = t_ref[0] + np.round(np.arange(int((t_ref[-1] - t_ref[0]) / 1e8 + 1e-9) + 1) * 1e8).astype(np.int64)
    limits = {"img": 0.1, "wrist": 0.2, "js": 0.03, "arm": 0.3, "grip": 0.3}
    expected, reasons = [], {}
    for t in grid:
        picks = {k: _latest(truth[k], t) for k in limits}
        why = None
        for k, key in [("img", "agentview"), ("wrist", "wrist"), ("js", "joint_pos"), ("arm", "action"),
                       ("grip", "action")]:
            if picks[k] < 0:
                why = why or f"missing:{key}"
            elif (t - truth[k][picks[k]]) > limits[k] * 1e9:
                why = why or f"stale:{key}"
        if why:
            reasons[why] = reasons.get(why, 0) + 1
        else:
            expected.append(dict(picks, t=t))
    assert len(expected) >= 10, "the fixture should keep a good part of the frames"
    rep = report["episodes"][0]
    assert rep["frames"] == len(grid) and rep["kept"] == len(expected)
    assert rep["dropped"] == reasons
    np.testing.assert_array_equal(ep["obs/agentview"][:, 0, 0, 0], [p["img"] for p in expected])
    assert (ep["obs/agentview"][..., 1] == 7).all() and ep["obs/agentview"].shape[1:] == (12, 16, 3)
    np.testing.assert_array_equal(ep["obs/wrist"][:, 0, 0, 2], [p["wrist"] for p in expected])
    np.testing.assert_array_equal(ep["obs/joint_pos"], [[p["js"], 1000 + p["js"], 2000 + p["js"]] for p in expected])
    np.testing.assert_array_equal(ep["action"], [[p["arm"], -p["arm"], 0.5 * p["grip"]] for p in expected])
    for p in expected:  # never a future message
        assert all(truth[k][p[k]] <= p["t"] for k in limits)


def test_leader_trajectory_and_next_observation_actions(tmp_path):
    rng = np.random.default_rng(3)
    truth = _rich_bag(tmp_path / "bag", "mcap", rng)
    m = dict(RICH, observations={"joint_pos": RICH["observations"]["joint_pos"]}, reference="/joint_states")
    m["observations"]["joint_pos"] = dict(m["observations"]["joint_pos"], max_age_s=0.06)
    m["action"] = {"sources": [{"topic": "/leader/trajectory", "joints": ["j1", "j2"], "max_age_s": 0.1}]}
    convert_bags([tmp_path / "bag"], parse_mapping(m), tmp_path / "lead")
    lead = EpisodeStore.open(tmp_path / "lead")
    ep = lead.episode(0)
    # Trajectory joint order is (j2, j1): the action is re-ordered by name to (j1, j2) = (k, 1000 + k).
    np.testing.assert_array_equal(ep["action"][:, 1] - ep["action"][:, 0], 1000)
    assert lead.meta.action_names == ["j1", "j2"] and lead.meta.action_kind == "joint_position"

    m["action"] = {"next_observation": "joint_pos"}
    report = convert_bags([tmp_path / "bag"], parse_mapping(m), tmp_path / "next")
    nxt = EpisodeStore.open(tmp_path / "next").episode(0)
    assert report["episodes"][0]["dropped"].get("no_next_frame") == 1
    # Where two consecutive grid frames are both kept, the action of the first is the second's state.
    t_js = np.sort(truth["js"])
    js_idx = nxt["obs/joint_pos"][:, 0].astype(int)
    act_idx = nxt["action"][:, 0].astype(int)
    assert (act_idx >= js_idx).all() and (act_idx - js_idx).max() <= 6
    assert np.all(np.diff(t_js[js_idx]) > 0)


def test_marker_and_gap_splits(tmp_path):
    msgs = []
    for k in range(40):  # joint states at 10 Hz for 4 s, with a 1.5 s pause after 2.5 s
        t_ms = k * 100 if k < 25 else k * 100 + 1500
        msgs.append(("/joint_states", JS, T0 + t_ms * MS, joint_state(T0 + t_ms * MS, ["a", "b", "c"], [k, k, k])))
        msgs.append(("/cmd", F64, T0 + t_ms * MS, float_array([k, k])))
    bool_t = "std_msgs/msg/Bool"
    for t_ms, on in [(500, True), (1500, False), (1800, True)]:
        msgs.append(("/episode", bool_t, T0 + t_ms * MS, TS.types[bool_t](data=on)))
    for t_ms in (1000, 2000):
        msgs.append(("/split", "std_msgs/msg/Empty", T0 + t_ms * MS, TS.types["std_msgs/msg/Empty"]()))
    write_bag(tmp_path / "bag", msgs, "sqlite3")

    m = _mapping(episodes={"gap_s": 1.0})
    m["observations"]["joint_pos"]["max_age_s"] = 0.01
    r = convert_bags([tmp_path / "bag"], parse_mapping(m), tmp_path / "gap")
    store = EpisodeStore.open(tmp_path / "gap")
    assert store.n_episodes == 2 and [e["kept"] for e in r["episodes"]] == [25, 15]
    assert store.episode(1)["obs/joint_pos"][0, 0] == 25

    m = _mapping(episodes={"marker_topic": "/episode", "gap_s": 1.0})
    m["observations"]["joint_pos"]["max_age_s"] = 0.01
    r = convert_bags([tmp_path / "bag"], parse_mapping(m), tmp_path / "marker")
    store = EpisodeStore.open(tmp_path / "marker")
    # Bool true at .5 s starts, false at 1.5 s ends, true at 1.8 s starts again (then the gap splits).
    assert [e["kept"] for e in r["episodes"]] == [11, 7, 15]
    np.testing.assert_array_equal(store.episode(0)["obs/joint_pos"][[0, -1], 0], [5, 15])
    np.testing.assert_array_equal(store.episode(1)["obs/joint_pos"][[0, -1], 0], [18, 24])

    m = _mapping(episodes={"marker_topic": "/split"})  # Empty markers cut; the message at a cut starts anew
    m["observations"]["joint_pos"]["max_age_s"] = 0.01
    r = convert_bags([tmp_path / "bag"], parse_mapping(m), tmp_path / "empty")
    assert [e["kept"] for e in r["episodes"]] == [10, 10, 20]
    assert r["episodes"][2]["dropped"] == {"stale:joint_pos": 15}  # the pause, no gap_s split this time
    np.testing.assert_array_equal(EpisodeStore.open(tmp_path / "empty").episode(1)["obs/joint_pos"][[0, -1], 0],
                                  [10, 19])


def test_unsupported_encoding_names_topic_and_encoding(tmp_path):
    _camera_bag(tmp_path / "bag", np.zeros((4, 4, 1), np.uint8), "bayer_rggb8")
    m = _mapping()
    m["observations"]["cam"] = {"topic": "/cam", "image": {"size": [4, 4]}}
    m["observations"]["joint_pos"]["max_age_s"] = 0.2
    with pytest.raises(ClassRosError, match=r"bayer_rggb8.*/cam|/cam.*bayer_rggb8"):
        convert_bags([tmp_path / "bag"], parse_mapping(m), tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def _simple_bag(path, storage="sqlite3", n=20):
    msgs = []
    for k in range(n):
        t = T0 + k * 100 * MS
        msgs.append(("/joint_states", JS, t, joint_state(t, ["c", "b", "a"], [k, k, k])))
        msgs.append(("/cmd", F64, t, float_array([k, 2 * k])))
    return write_bag(path, msgs, storage)


def test_damaged_missing_and_empty_bags_are_skipped_with_reasons(tmp_path):
    bags = tmp_path / "bags"
    good = _simple_bag(bags / "a_good", "mcap")
    _simple_bag(bags / "b_trunc", "mcap")
    mcap = next((bags / "b_trunc").glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])  # truncated mid-file
    _simple_bag(bags / "c_db3", "sqlite3")
    db3 = next((bags / "c_db3").glob("*.db3"))
    raw = bytearray(db3.read_bytes())
    raw[0:16] = b"garbage garbage!"  # destroys the sqlite header
    db3.write_bytes(bytes(raw))
    _simple_bag(bags / "d_nometa", "sqlite3")
    (bags / "d_nometa" / "metadata.yaml").unlink()
    msgs = [("/joint_states", JS, T0, joint_state(T0, ["a", "b", "c"], [0, 0, 0]))]
    write_bag(bags / "e_missing_topic", msgs, "sqlite3")

    m = parse_mapping(_mapping(max_age_s=0.2))
    report = convert_bags([bags], m, tmp_path / "ds")
    assert EpisodeStore.open(tmp_path / "ds").n_episodes == 1
    assert report["episodes"][0]["bag"] == str(good)
    reasons = {s["bag"].split("/")[-1]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"b_trunc", "c_db3", "d_nometa", "e_missing_topic"}
    assert "damaged" in reasons["b_trunc"] or "truncated" in reasons["b_trunc"]
    assert "damaged" in reasons["c_db3"]
    assert "metadata.yaml" in reasons["d_nometa"]
    assert "/cmd is not in the bag" in reasons["e_missing_topic"]
    assert len(json.loads((tmp_path / "ds" / REPORT_NAME).read_text())["skipped"]) == 4

    with pytest.raises(ClassRosError, match="--strict"):
        convert_bags([bags], m, tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict").exists()
    with pytest.raises(ClassRosError, match="nothing converted"):
        convert_bags([bags / "e_missing_topic", bags / "c_db3"], m, tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_qos_disagreement_reads_with_the_storage_profiles_and_warns(tmp_path):
    bag = _simple_bag(tmp_path / "bag", "sqlite3")
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())
    for t in meta["rosbag2_bagfile_information"]["topics_with_message_count"]:
        if t["topic_metadata"]["name"] == "/cmd":  # metadata.yaml now disagrees with the db3's QoS
            zero = {"sec": 0, "nsec": 0}
            t["topic_metadata"]["offered_qos_profiles"] = [{
                "history": "keep_last", "depth": 7, "reliability": "reliable", "durability": "volatile",
                "deadline": zero, "lifespan": zero, "liveliness": "automatic", "liveliness_lease_duration": zero,
                "avoid_ros_namespace_conventions": False}]
    (bag / "metadata.yaml").write_text(yaml.safe_dump(meta))
    # `ros2 bag play` plays such a bag: so does convert, with the storage's profiles, and it says so.
    report = convert_bags([bag], parse_mapping(_mapping(max_age_s=0.2)), tmp_path / "ds")
    reference = convert_bags([_simple_bag(tmp_path / "same", "sqlite3")], parse_mapping(_mapping(max_age_s=0.2)),
                             tmp_path / "ref")
    assert report["frames"] == reference["frames"] == 20
    np.testing.assert_array_equal(EpisodeStore.open(tmp_path / "ds").episode(0)["action"],
                                  EpisodeStore.open(tmp_path / "ref").episode(0)["action"])
    assert report["warnings"] == [f"{bag}: metadata.yaml and the storage file disagree about the QoS profiles of "
                                  "/cmd; used the storage's"] and reference["warnings"] == []


def test_custom_message_via_msg_dir(tmp_path):
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    definition = "std_msgs/Header header\nfloat64[] targets\nstring mode\n"
    store = get_typestore(Stores.LATEST)
    store.register(get_types_from_msg(definition, "my_arm_msgs/msg/ArmCommand"))
    cmd_t = "my_arm_msgs/msg/ArmCommand"
    msgs = []
    for k in range(10):
        t = T0 + k * 100 * MS
        msgs.append(("/joint_states", JS, t, joint_state(t, ["a", "b", "c"], [k, k, k])))
        cmd = store.types[cmd_t](header=TS.types["std_msgs/msg/Header"](
            stamp=TS.types["builtin_interfaces/msg/Time"](sec=t // 10**9, nanosec=t % 10**9), frame_id=""),
            targets=np.array([k, 3.0 * k]), mode="pos")
        msgs.append(("/cmd", cmd_t, t, cmd))
    m = parse_mapping(_mapping(max_age_s=0.2, action={"sources": [{"topic": "/cmd", "field": "targets"}]}))
    write_bag(tmp_path / "plain", msgs, "sqlite3", typestore=store, msgdefs={cmd_t: ""})
    with pytest.raises(ClassRosError, match="my_arm_msgs/msg/ArmCommand.*--msg-dir"):
        convert_bags([tmp_path / "plain"], m, tmp_path / "ds")
    msg_dir = tmp_path / "msgs" / "my_arm_msgs" / "msg"
    msg_dir.mkdir(parents=True)
    (msg_dir / "ArmCommand.msg").write_text(definition)
    convert_bags([tmp_path / "plain"], m, tmp_path / "ds", msg_dir=tmp_path / "msgs")
    ep = EpisodeStore.open(tmp_path / "ds").episode(0)
    np.testing.assert_array_equal(ep["action"][:, 1], 3 * np.arange(10))
    assert EpisodeStore.open(tmp_path / "ds").meta.action_names == ["targets[0]", "targets[1]"]
    # A bag that embeds the definition needs no --msg-dir.
    write_bag(tmp_path / "embedded", msgs, "mcap", typestore=store)
    convert_bags([tmp_path / "embedded"], m, tmp_path / "ds2")
    assert EpisodeStore.open(tmp_path / "ds2").n_frames == 10


def test_mapping_errors_are_one_sentence(tmp_path):
    with pytest.raises(ClassRosError, match="rate_hz"):
        parse_mapping(_mapping(rate_hz=0))
    with pytest.raises(ClassRosError, match="exactly one of"):
        parse_mapping(_mapping(action={}))
    with pytest.raises(ClassRosError, match="unknown entries"):
        parse_mapping(_mapping(colour="red"))
    bag = _simple_bag(tmp_path / "bag")
    bad = _mapping(max_age_s=0.2)
    bad["observations"]["joint_pos"] = {"topic": "/joint_states", "field": "pose.position"}
    with pytest.raises(ClassRosError, match=r"no field 'pose'.*fields there: header, name, position"):
        convert_bags([bag], parse_mapping(bad), tmp_path / "ds")
    bad["observations"]["joint_pos"] = {"topic": "/joint_states", "joints": ["a", "elbow"]}
    with pytest.raises(ClassRosError, match=r"\['elbow'\].*never appear"):
        convert_bags([bag], parse_mapping(bad), tmp_path / "ds")


def test_cli_overwrite_and_kill_keeps_complete_episodes(tmp_path, capsys):
    from class_ros.cli import main
    bags = tmp_path / "bags"
    for i in range(3):
        _simple_bag(bags / f"bag{i}", "mcap", n=10 + i)
    mapping = tmp_path / "m.yaml"
    mapping.write_text(yaml.safe_dump(_mapping(max_age_s=0.2)))
    out = tmp_path / "ds"
    assert main(["convert", "--bags", str(bags), "--mapping", str(mapping), "--out", str(out)]) == 0
    assert EpisodeStore.open(out).episode_ends.tolist() == [10, 21, 33]
    assert str(out) in capsys.readouterr().out
    assert main(["convert", "--bags", str(bags), "--mapping", str(mapping), "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["convert", "--bags", str(bags / "bag0"), "--mapping", str(mapping), "--out", str(out),
                 "--overwrite"]) == 0
    assert EpisodeStore.open(out).n_episodes == 1
    assert main(["convert", "--bags", str(tmp_path / "nope"), "--mapping", str(mapping), "--out",
                 str(tmp_path / "x")]) == 1
    assert "does not exist" in capsys.readouterr().err


def _partial_episodes(out: Path) -> int:
    """Episodes committed so far in the hidden folder a running convert writes (read without opening it)."""
    for p in out.parent.glob(f".{out.name}.partial-*"):
        try:
            return json.loads((p / "zarr.json").read_text())["attributes"]["class_ros"]["n_episodes"]
        except (OSError, ValueError, KeyError):
            pass
    return 0


def test_kill_9_mid_convert_leaves_no_dataset_and_keeps_the_old_one(tmp_path, capsys):
    import os
    import signal
    import subprocess
    import sys
    import time

    from class_ros.cli import main
    bags = tmp_path / "bags"
    _simple_bag(bags / "bag00", "sqlite3", n=30)
    for i in range(1, 40):  # copies: writing 40 bags would dominate the test
        shutil.copytree(bags / "bag00", bags / f"bag{i:02d}")
    mapping = tmp_path / "m.yaml"
    mapping.write_text(yaml.safe_dump(_mapping(max_age_s=0.2)))
    out, fresh = tmp_path / "ds", tmp_path / "fresh"
    convert_bags([bags / "bag00"], mapping, out)  # the dataset an --overwrite run would replace
    for target, extra in ((out, ["--overwrite"]), (fresh, [])):
        proc = subprocess.Popen([sys.executable, "-m", "class_ros.cli", "convert", "--bags", str(bags),
                                 "--mapping", str(mapping), "--out", str(target), *extra],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and _partial_episodes(target) < 3:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert 3 <= _partial_episodes(target) < 40, "killed while writing"
    # The killed --overwrite left the old dataset whole; the killed fresh one left nothing a reader accepts.
    old = EpisodeStore.open(out)
    assert old.n_episodes == 1
    old.validate()
    assert not fresh.exists()
    with pytest.raises(ClassRosError, match="not a dataset store"):
        EpisodeStore.open(fresh)
    capsys.readouterr()
    assert main(["dtw", "--dataset", str(fresh), "--out", str(tmp_path / "p.npz")]) == 1
    assert "not a dataset store" in capsys.readouterr().err
    # The next run removes what the killed one left (its process is gone) and completes.
    report = convert_bags([bags], mapping, fresh)
    assert report["n_episodes"] == 40 == EpisodeStore.open(fresh).n_episodes
    convert_bags([bags], mapping, out, overwrite=True)
    assert EpisodeStore.open(out).episode_ends.tolist() == [30 * (i + 1) for i in range(40)]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_overwrite_replaces_only_a_dataset_and_only_once_the_new_one_is_whole(tmp_path, capsys):
    from class_ros.cli import main
    good = _simple_bag(tmp_path / "bags" / "a_good", "mcap", n=12)
    nan_bag = tmp_path / "bags" / "b_nan"
    msgs = []
    for k in range(12):
        t = T0 + k * 100 * MS
        msgs.append(("/joint_states", JS, t, joint_state(t, ["c", "b", "a"], [k, k, k])))
        msgs.append(("/cmd", F64, t, float_array([float("nan") if k in (3, 4) else k, 2 * k])))
    write_bag(nan_bag, msgs, "mcap")
    mapping = tmp_path / "m.yaml"
    mapping.write_text(yaml.safe_dump(_mapping(max_age_s=0.2)))
    # 1. --overwrite never deletes a folder that is not a class_ros dataset
    user = tmp_path / "u"
    (user / "sub").mkdir(parents=True)
    (user / "thesis.tex").write_text("x")
    assert main(["convert", "--bags", str(good), "--mapping", str(mapping), "--out", str(user), "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "not a class_ros output" in err and len(err.strip().splitlines()) == 1
    assert (user / "thesis.tex").read_text() == "x" and (user / "sub").is_dir()
    # 2. a bag with NaN is skipped, named, with its count per key; the rest converts
    out = tmp_path / "ds"
    report = convert_bags([tmp_path / "bags"], mapping, out)
    assert [Path(r["bag"]).name for r in report["episodes"]] == ["a_good"]
    (skipped,) = report["skipped"]
    assert Path(skipped["bag"]).name == "b_nan" and skipped["nonfinite"] == {"action": 2}
    assert "NaN or infinite values (action 2)" in skipped["reason"]
    # 3. a failing --overwrite (--strict on the NaN bag) keeps the old dataset and says so
    before = EpisodeStore.open(out).fingerprint()
    with pytest.raises(ClassRosError, match=r"b_nan: it holds NaN.*nothing was written \(the dataset already at"):
        convert_bags([tmp_path / "bags"], mapping, out, strict=True, overwrite=True)
    assert EpisodeStore.open(out).fingerprint() == before
    # 4. the NaN in the only bag: nothing converted, nothing left that would block a re-run
    with pytest.raises(ClassRosError, match="nothing converted.*b_nan: it holds NaN"):
        convert_bags([nan_bag], mapping, tmp_path / "only_nan")
    assert not (tmp_path / "only_nan").exists()
    # 5. --out naming a file, an unwritable place: one line, before any bag is read
    (tmp_path / "file").write_text("")
    for bad, says in ((tmp_path / "file", "is a file"), (Path("/sys/ds"), "cannot write in /sys")):
        capsys.readouterr()
        assert main(["convert", "--bags", str(good), "--mapping", str(mapping), "--out", str(bad),
                     "--overwrite"]) == 1
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1


def test_lone_mcap_files_and_folders_of_them(tmp_path):
    _simple_bag(tmp_path / "a", "mcap", n=12)
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(tmp_path / "a" / "a.mcap", loose / "one.mcap")
    shutil.copy(tmp_path / "a" / "a.mcap", loose / "two.mcap")
    m = parse_mapping(_mapping(max_age_s=0.2))
    report = convert_bags([tmp_path / "a" / "a.mcap", loose], m, tmp_path / "ds")
    assert [Path(e["bag"]).name for e in report["episodes"]] == ["a.mcap", "one.mcap", "two.mcap"]
    assert EpisodeStore.open(tmp_path / "ds").episode_ends.tolist() == [12, 24, 36]
    (loose / "x.db3").write_bytes(b"")
    with pytest.raises(ClassRosError, match="a lone .db3 file cannot be read"):
        convert_bags([loose / "x.db3"], m, tmp_path / "db3")


def test_header_stamps_on_another_clock_are_refused(tmp_path):
    msgs = []
    for k in range(10):  # joint states stamped in sim time (seconds since start), commands without header
        t = T0 + k * 100 * MS
        msgs.append(("/joint_states", JS, t, joint_state(k * 100 * MS + 1, ["a", "b", "c"], [k, k, k])))
        msgs.append(("/cmd", F64, t, float_array([k, k])))
    write_bag(tmp_path / "bag", msgs, "sqlite3")
    with pytest.raises(ClassRosError, match=r"joint_pos's header stamps are -1700000000.0 s away.*time: receive"):
        convert_bags([tmp_path / "bag"], parse_mapping(_mapping(max_age_s=0.2)), tmp_path / "ds")
    convert_bags([tmp_path / "bag"], parse_mapping(_mapping(max_age_s=0.2, time="receive")), tmp_path / "ds")
    assert EpisodeStore.open(tmp_path / "ds").n_frames == 10


def test_real_arm_example_mapping_converts_a_matching_bag(tmp_path):
    import cv2
    from class_ros.data.bags.mapping import load_mapping
    joints = ["joint_1", "joint_2", "joint_3", "joint_4", "joint_5", "joint_6", "gripper_joint"]
    msgs = []
    for k in range(12):  # 15 Hz for 0.8 s, pedal pressed at 0.1 s
        t = T0 + round(k * 1e9 / 15)
        px = np.zeros((480, 640, 3), np.uint8)
        px[:, 80:560] = 200  # the crop keeps exactly this square
        msgs.append(("/camera/camera/color/image_raw", "sensor_msgs/msg/Image", t, image(t, px)))
        ok, jpg = cv2.imencode(".jpg", np.full((120, 160, 3), 90, np.uint8))
        msgs.append(("/wrist_camera/image_raw/compressed", "sensor_msgs/msg/CompressedImage", t,
                     TS.types["sensor_msgs/msg/CompressedImage"](header=image(t, px[:1, :1]).header,
                                                                 format="jpeg", data=np.frombuffer(jpg, np.uint8))))
        order = sorted(joints)
        msgs.append(("/joint_states", JS, t, joint_state(t, order, [joints.index(n) for n in order])))
        msgs.append(("/leader/joint_states", JS, t, joint_state(t, order, [10 + joints.index(n) for n in order])))
    msgs.append(("/episode", "std_msgs/msg/Bool", T0 + 100 * MS, TS.types["std_msgs/msg/Bool"](data=True)))
    write_bag(tmp_path / "bag", msgs, "mcap")
    mapping = load_mapping(Path(__file__).resolve().parents[1] / "config/mappings/real_arm_example.yaml")
    convert_bags([tmp_path / "bag"], mapping, tmp_path / "ds")
    ep = EpisodeStore.open(tmp_path / "ds").episode(0)
    # 15 Hz frames from the first image after the pedal (k=2) to the last (k=11); stamps rounded to whole
    # nanoseconds still meet the grid, so no frame takes the previous image.
    assert len(ep["action"]) == 10
    assert (ep["obs/agentview"] == 200).all() and ep["obs/agentview"].shape[1:] == (96, 96, 3)
    assert np.abs(ep["obs/wrist"].astype(int) - 90).max() <= 2
    np.testing.assert_array_equal(ep["obs/joint_pos"][0], np.arange(7))
    np.testing.assert_array_equal(ep["action"][0], 10 + np.arange(7))


def test_unparsable_embedded_definition_is_named_and_msg_dir_overrides_it(tmp_path):
    msgs = []
    for k in range(10):
        t = T0 + k * 100 * MS
        msgs.append(("/joint_states", JS, t, joint_state(t, ["a", "b", "c"], [k, k, k])))
        msgs.append(("/cmd", F64, t, float_array([k, 2 * k])))
    bag = write_bag(tmp_path / "bag", msgs, "mcap", msgdefs={F64: "std_msgs/MultiArrayLayout layout\nfloat64[ data\n"})
    m = parse_mapping(_mapping(max_age_s=0.2))
    with pytest.raises(ClassRosError, match="the message definition of std_msgs/msg/Float64MultiArray embedded in "
                                            "the bag for topic /cmd cannot be parsed.*--msg-dir"):
        convert_bags([bag], m, tmp_path / "ds")
    (tmp_path / "msgs" / "std_msgs" / "msg").mkdir(parents=True)
    (tmp_path / "msgs" / "std_msgs" / "msg" / "Float64MultiArray.msg").write_text(
        "std_msgs/MultiArrayLayout layout\nfloat64[] data\n")
    convert_bags([bag], m, tmp_path / "ds", msg_dir=tmp_path / "msgs")
    np.testing.assert_array_equal(EpisodeStore.open(tmp_path / "ds").episode(0)["action"][:, 1], 2 * np.arange(10))
