"""`class-ros sim-demos`: bags that read back with rosbags as a `ros2 bag record` of the sim graph."""
import json

import numpy as np
import pytest

from class_ros.cli import main as cli_main
from class_ros.errors import ClassRosError
from class_ros.sim.robot import JOINT_NAMES
from training.sim_demos import EPOCH_NS, record_demos

EXPECTED = {
    "/camera/image_raw": ("sensor_msgs/msg/Image", 30.0),
    "/joint_states": ("sensor_msgs/msg/JointState", 100.0),
    "/forward_position_controller/commands": ("std_msgs/msg/Float64MultiArray", 10.0),
    "/gripper_controller/commands": ("std_msgs/msg/Float64MultiArray", 10.0),
}


def read_bag(path):
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore
    ts = get_typestore(Stores.ROS2_KILTED)
    topics, msgs = {}, {t: [] for t in EXPECTED}
    with Reader(path) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        for conn, stamp, raw in reader.messages():
            msgs[conn.topic].append((stamp, ts.deserialize_cdr(raw, conn.msgtype)))
    return topics, msgs


def header_ns(msg):
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_recorded_bag_reads_back_with_expected_topics_rates_and_stamps(tmp_path, storage):
    out = tmp_path / "bags"
    if storage == "mcap":
        summary = record_demos("lift", 1, "random", storage, out, seed=3, progress=False)
    else:  # the same function through the CLI
        assert cli_main(["sim-demos", "--task", "lift", "--episodes", "1", "--camera", "moving",
                         "--storage", storage, "--out", str(out), "--seed", "3", "--image-size", "64", "80"]) == 0
        summary = json.loads((out / "sim_demos.json").read_text())
    assert summary["episodes_kept"] == 1 and summary["expert_successes"] >= 1
    assert sorted(p.name for p in out.iterdir()) == ["episode_0000", "sim_demos.json"]
    bag = out / "episode_0000"
    assert any(bag.glob("*.mcap" if storage == "mcap" else "*.db3"))

    topics, msgs = read_bag(bag)
    assert topics == {t: v[0] for t, v in EXPECTED.items()}
    steps = summary["episode_control_steps"][0]
    duration = steps / 10.0
    for topic, (_, rate) in EXPECTED.items():
        stamps = np.array([s for s, _ in msgs[topic]])
        assert np.all(np.diff(stamps) > 0), topic  # strictly increasing receive times
        assert stamps[0] >= EPOCH_NS
        assert abs(len(stamps) - duration * rate) <= 2, (topic, len(stamps), duration * rate)
        assert np.median(np.diff(stamps)) == pytest.approx(1e9 / rate, rel=0.05)
    assert len(msgs["/forward_position_controller/commands"]) == steps

    h, w = (96, 96) if storage == "mcap" else (64, 80)
    for stamp, img in msgs["/camera/image_raw"]:
        assert header_ns(img) == stamp and img.encoding == "rgb8" and img.header.frame_id == "agentview"
        assert (img.height, img.width, img.step, img.data.size) == (h, w, w * 3, h * w * 3)
    for stamp, js in msgs["/joint_states"]:
        assert header_ns(js) == stamp and list(js.name) == list(JOINT_NAMES)
        assert js.position.shape == (7,) and js.velocity.shape == (7,)
    arm = np.stack([m.data for _, m in msgs["/forward_position_controller/commands"]])
    grip = np.stack([m.data for _, m in msgs["/gripper_controller/commands"]])
    assert arm.shape == (steps, 6) and grip.shape == (steps, 1)
    assert grip[0, 0] == 0.0 and grip[-1, 0] == 1.0  # opens to approach, holds the cube at the end
    # The arm follows its commands: the last joint state is near the last arm targets, and the
    # episode really lifted (the gripper ends closed on a cube, so partly open).
    last = msgs["/joint_states"][-1][1].position
    assert np.abs(last[:6] - arm[-1]).max() < 0.15
    assert 0.5 < last[6] < 0.9
    first_img = msgs["/camera/image_raw"][0][1].data.reshape(h, w, 3)
    assert first_img.std() > 10  # a real rendered scene, not a blank frame


def test_the_wrist_camera_is_recorded_at_the_agentview_stamps(tmp_path):
    summary = record_demos("lift", 1, "random", "mcap", tmp_path / "bags", seed=3, progress=False,
                           cameras=("agentview", "wrist"))
    assert summary["cameras"] == ["agentview", "wrist"] and "/wrist_camera/image_raw" in summary["topics"]
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore
    ts = get_typestore(Stores.ROS2_KILTED)
    frames = {"/camera/image_raw": [], "/wrist_camera/image_raw": []}
    with Reader(tmp_path / "bags" / "episode_0000") as reader:
        conns = [c for c in reader.connections if c.topic in frames]
        for conn, stamp, raw in reader.messages(connections=conns):
            frames[conn.topic].append((stamp, ts.deserialize_cdr(raw, conn.msgtype)))
    agent, wrist = frames["/camera/image_raw"], frames["/wrist_camera/image_raw"]
    assert [s for s, _ in agent] == [s for s, _ in wrist] and len(agent) > 30
    assert {m.header.frame_id for _, m in wrist} == {"wrist"}
    assert np.abs(agent[0][1].data.astype(int) - wrist[0][1].data.astype(int)).mean() > 10


def test_refuses_a_folder_with_bags_and_writes_nothing(tmp_path):
    out = tmp_path / "bags"
    (out / "episode_0000").mkdir(parents=True)
    with pytest.raises(ClassRosError, match="already holds"):
        record_demos("lift", 1, "fixed", "mcap", out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["episode_0000"]
    with pytest.raises(ClassRosError):
        record_demos("lift", 1, "fixed", "rosbag1", tmp_path / "other", progress=False)
    assert cli_main(["sim-demos", "--task", "stack", "--out", str(tmp_path / "x")]) == 1


def test_interrupt_keeps_complete_bags_only(tmp_path):
    """A real Ctrl-C mid-run: the bags already moved into place read back, nothing partial is left.

    The run waits for the interrupt instead of racing it: tries 0 and 1 run, and every later try waits
    until their two bags are in place, says READY and blocks on a pipe that is never written, so the
    SIGINT lands there - wherever the machine's load would have put the run by then. (Blocking only once
    two bags were in place was not enough: bags are moved in try order, and when one early try was slow
    the other worker finished every try before a bag was in place.) With 2 workers the tries block in
    them, and the interrupted parent must stop them itself. The child sets Python's own SIGINT handler
    first: started from a background job (`cmd &` in a script, as some CI runners do) it would inherit
    SIGINT ignored, and Python then never raises KeyboardInterrupt (that hung this test twice).
    """
    import contextlib
    import os
    import signal
    import subprocess
    import sys

    import psutil

    out = tmp_path / "bags"
    (tmp_path / "sim_demos_waiting_for_ctrl_c.py").write_text(
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's Ctrl-C finds it\n"
        "from class_ros import cli\n"
        "from training import sim_demos\n"
        "record, (never_written, _) = sim_demos.record_episode, os.pipe()\n"
        "def record_episode(env, ep_seed, path, *args):\n"
        "    if int(path.name.split('_')[1]) >= 2:  # path is .partial/try_NNNNN\n"
        "        while len(list(path.parent.parent.glob('episode_*'))) < 2:\n"
        "            time.sleep(0.05)  # a wait for tries 0 and 1, not a race: nothing else moves on\n"
        "        print('READY', flush=True)\n"
        "        os.read(never_written, 1)  # blocks until the SIGINT interrupts it\n"
        "    return record(env, ep_seed, path, *args)\n"
        "sim_demos.record_episode = record_episode  # at the top: the spawned workers run it too\n"
        "if __name__ == '__main__':\n"
        "    cli.entry(sys.argv[1:])\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "sim_demos_waiting_for_ctrl_c", "sim-demos", "--episodes", "30",
                             "--out", str(out), "--camera", "fixed", "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    for line in proc.stdout:  # blocks until the run waits for the interrupt (or ends: then the asserts say so)
        if line.strip() == b"READY":
            break
    children = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    if len(children) < 2:  # the two workers (and multiprocessing's resource tracker)
        proc.kill()
        raise AssertionError(f"the run never waited for the interrupt: exit status {proc.wait()}, stderr "
                             f"{proc.stderr.read().decode()[-1500:]}")
    proc.send_signal(signal.SIGINT)  # to the parent alone: it must stop its workers itself
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        alive = [(c.pid, c.status(), " ".join(c.cmdline())[:80]) for c in children if c.is_running()]
        for p in [proc, *children]:
            with contextlib.suppress(Exception):
                p.kill()
        raise AssertionError(f"the interrupted run did not end; parent alive: {proc.poll() is None}, "
                             f"children alive: {alive}") from None
    assert proc.returncode == 130, err.decode()[-500:]
    assert b"Traceback" not in err, err.decode()[-500:]
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, alive
    names = sorted(p.name for p in out.iterdir())
    assert ".partial" not in names and "sim_demos.json" not in names
    bags = [n for n in names if n.startswith("episode_")]
    assert bags == ["episode_0000", "episode_0001"]  # tries 0 and 1 (both succeed with these seeds)
    for name in bags:
        topics, msgs = read_bag(out / name)
        assert len(topics) == 4 and len(msgs["/camera/image_raw"]) > 10
