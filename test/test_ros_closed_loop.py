"""The policy side of the graph on real DDS with runs trained here, and the closed loop through sim_node.

A module fixture records scripted `lift` demonstrations in the sim, converts them, computes DTW
positives and trains two retrieval runs: one pre-trained with CLASS, one left at random weights.

At this scale (10 demonstrations, 150 pre-training steps on CPU) a random conv encoder retrieves
about as well as the trained one on layouts the demonstrations did not see (both lifted the same
2 of 12 in a direct evaluation), so the closed-loop test asserts what this scale can show: the ROS
graph alone reproduces the demonstrated lift with the trained run. The trained-vs-random gap is the
camera-shift benchmark's job, at demo scale.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ros_probe import Probe, wait_until

pytest.importorskip("training.sim_demos")
pytest.importorskip("training.pretrain")

REPO = Path(__file__).resolve().parents[1]
N_DEMOS = 10
TRAIN_STEPS = 150


def pretrain_run(data: Path, out: Path, steps: int) -> Path:
    from training.demo import merged_config
    from training.index import build_index
    from training.pretrain import pretrain

    cfg = merged_config({"base": "training/configs/pretrain_cpu.yaml",
                         "overrides": {"steps": steps, "batch_size": 32, "warmup_steps": min(10, steps),
                                       "save_every": 100000}})
    pretrain(data / "dataset", data / "positives.npz", out, cfg, device="cpu", progress=False)
    # k = 1: on a demonstrated layout the nearest frame's own chunk replays the demonstration, so the
    # test measures the ROS loop (timing, stamps, execution), not how well 10 demos interpolate.
    build_index(out, data / "dataset", k=1)
    return out


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    from training.convert import convert_bags
    from training.dtw import compute_positives

    data = tmp_path_factory.mktemp("closed_loop")
    # Its own process: torch / diffusers imported after MuJoCo's EGL rendering in one process crash.
    subprocess.run([sys.executable, "-m", "class_ros.cli", "sim-demos", "--task", "lift", "--episodes", str(N_DEMOS),
                    "--camera", "fixed", "--out", str(data / "bags")], check=True, env=os.environ.copy(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    convert_bags([data / "bags"], REPO / "config/mappings/sim.yaml", data / "dataset")
    compute_positives(data / "dataset", data / "positives.npz", horizon=16, quantile=0.025, device="cpu",
                      mode="exact")
    return data


@pytest.fixture(scope="module")
def random_run(demos):
    """A run whose encoder stays at its random initialisation (one step at a warm-up learning rate ~ 0)."""
    return pretrain_run(demos, demos / "random_run", steps=1)


@pytest.fixture(scope="module")
def trained_run(demos):
    return pretrain_run(demos, demos / "class_run", steps=TRAIN_STEPS)


def holds(node, t: float) -> bool:
    """Whether embedding_node's joint-state buffer holds a state stamped exactly t."""
    found = node.joints.as_of(t) if hasattr(node, "joints") else None
    return found is not None and found[1] == t


def stamp(sec, nanosec=0):
    from builtin_interfaces.msg import Time
    return Time(sec=sec, nanosec=nanosec)


def test_embedding_node_pairs_the_image_with_the_joint_state_as_of_its_stamp(random_run):
    from sensor_msgs.msg import Image, JointState

    from class_ros.data.images import preprocess
    from class_ros.nodes import topology
    from class_ros.nodes.graph import start_in_process
    from class_ros.nodes.observation import image_to_feature
    from class_ros.policy import load_policy
    from class_ros.sim.robot import JOINT_NAMES

    specs = [s for s in topology.graph("retrieval") if s.name in ("camera_node", "embedding_node")]
    with start_in_process(specs, extra={"run_dir": str(random_run)}) as graph:
        node = graph.nodes["embedding_node"]
        probe = Probe({"emb": (Image, "/embedding_node/embedding")})
        try:
            cam = probe.publisher(Image, "/camera/image_raw", sensor=True)
            js = probe.publisher(JointState, "/joint_states", sensor=True)
            rng = np.random.default_rng(0)
            raw = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
            q_before = np.linspace(0.1, 0.7, 7).astype(np.float32)
            q_after = q_before + 0.5
            # Until the graph has matched up (discovery takes a moment). Every frame gets a new stamp: the node
            # encodes a stamp once, so a repeated one published before the probe matched would never come back.
            sent = set()
            for i in range(50):
                t_img = 1000 + 10 * i
                for q, t in ((q_before, stamp(t_img - 1)), (q_after, stamp(t_img + 1))):
                    msg = JointState(name=list(JOINT_NAMES), position=[float(v) for v in q])
                    msg.header.stamp = t
                    js.publish(msg)
                # The frame goes out once the node holds both states, so only "as of its stamp" decides which
                # it pairs. (Sent at once, a busy machine could encode the frame before the later state
                # arrived, with the previous frame's q_after as the newest state.)
                if not wait_until(lambda: holds(node, t_img - 1) and holds(node, t_img + 1), timeout=1.0):
                    continue  # a best-effort state was dropped: the next frame brings new stamps
                img = Image(height=120, width=160, encoding="rgb8", step=480, data=raw.tobytes())
                img.header.stamp = stamp(t_img)
                cam.publish(img)
                sent.add((t_img, 0))
                if probe.wait("emb", 1, timeout=0.2):
                    break
            assert probe.got["emb"], "embedding_node published nothing"
            out = probe.got["emb"][-1]
            assert (out.header.stamp.sec, out.header.stamp.nanosec) in sent  # the source frame's stamp
            policy = load_policy(random_run, "retrieval")
            want = policy.embed({"agentview": preprocess(raw, (96, 96)), "joint_pos": q_before})
            np.testing.assert_allclose(image_to_feature(out), want, atol=1e-5)
            wrong = policy.embed({"agentview": preprocess(raw, (96, 96)), "joint_pos": q_after})
            assert np.abs(image_to_feature(out) - wrong).max() > 1e-3
        finally:
            probe.close()


def test_embedding_node_survives_non_finite_joint_states(random_run):
    """A NaN or inf in /joint_states used to kill embedding_node (and the graph); now it is dropped."""
    from sensor_msgs.msg import Image, JointState

    from class_ros.nodes import topology
    from class_ros.nodes.graph import start_in_process
    from class_ros.nodes.observation import image_to_feature
    from class_ros.sim.robot import JOINT_NAMES

    specs = [s for s in topology.graph("retrieval") if s.name in ("camera_node", "embedding_node")]
    with start_in_process(specs, extra={"run_dir": str(random_run)}) as graph:
        probe = Probe({"emb": (Image, "/embedding_node/embedding")})
        try:
            cam = probe.publisher(Image, "/camera/image_raw", sensor=True)
            js = probe.publisher(JointState, "/joint_states", sensor=True)
            # Best effort: what goes out before the nodes' subscriptions are matched is never delivered.
            assert wait_until(lambda: js.get_subscription_count() >= 1 and cam.get_subscription_count() >= 1, 30)
            raw = np.zeros((96, 96, 3), np.uint8).tobytes()

            def send(t, q):
                msg = JointState(name=list(JOINT_NAMES), position=[float(v) for v in q])
                msg.header.stamp = stamp(t - 1)
                js.publish(msg)
                img = Image(height=96, width=96, encoding="rgb8", step=288, data=raw)
                img.header.stamp = stamp(t)
                cam.publish(img)

            for i in range(30):  # only non-finite joint states: nothing to pair an image with
                send(2000 + i, [float("nan")] + [0.1] * 6 if i % 2 else [float("inf")] * 7)
                time.sleep(0.05)
            assert graph.alive(), graph.dead()
            assert not probe.got["emb"]
            for i in range(50):
                send(3000 + i, [0.1] * 7)
                if probe.wait("emb", 1, timeout=0.2):
                    break
            assert probe.got["emb"] and graph.alive()
            assert all(np.all(np.isfinite(image_to_feature(m))) for m in probe.got["emb"])
            assert graph.nodes["embedding_node"].joints.dropped["not_finite"] >= 20
        finally:
            probe.close()


def test_policy_node_chunks_are_timed_and_the_ood_gate_stops_them(random_run, tmp_path):
    """Retrieval from a relative index: chunks stamped like the embedding, from the joints measured as of it."""
    import shutil

    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Header
    from trajectory_msgs.msg import JointTrajectory

    from class_ros.nodes import topology
    from class_ros.nodes.graph import start_in_process
    from class_ros.nodes.observation import feature_to_image
    from class_ros.policy import load_policy
    from training.index import build_index

    run = tmp_path / "relative_run"
    shutil.copytree(random_run, run)
    build_index(run, random_run.parent / "dataset", k=1, relative=True, progress=False)
    policy = load_policy(run, "retrieval")
    assert len(policy.relative_dims) == 6  # the arm's targets start from the measured joints: it reads them too
    feature = policy.embed({"agentview": np.full((96, 96, 3), 128, np.uint8), "joint_pos": np.zeros(7, np.float32)})
    q = np.linspace(-0.3, 0.3, 7)  # the arm as measured, stamped before every embedding
    state = JointState(header=Header(stamp=stamp(499)), name=policy.joint_names, position=q.tolist())
    spec = next(s for s in topology.graph("retrieval") if s.name == "policy_node")
    for gate in (2.0, -1.0):  # off, then everything counts as out of distribution
        gate_yaml = tmp_path / f"gate_{gate}.yaml"
        gate_yaml.write_text(f"policy_node:\n  ros__parameters:\n    max_nearest_distance: {gate}\n")
        gated = topology.NodeSpec(spec.name, spec.params + (str(gate_yaml),), spec.remappings)
        with start_in_process([gated], extra={"run_dir": str(run)}):
            probe = Probe({"chunk": (JointTrajectory, "/policy_node/action_chunk"),
                           "diag": (DiagnosticArray, "/diagnostics")})
            try:
                pub = probe.publisher(Image, "/embedding_node/embedding")
                joints = probe.publisher(JointState, "/joint_states")
                for i in range(40):
                    joints.publish(state)
                    pub.publish(feature_to_image(feature, Header(stamp=stamp(500 + i), frame_id="agentview")))
                    if probe.wait("chunk", 1, timeout=0.1):
                        break
                if gate >= 0:
                    assert probe.got["chunk"], "policy_node published no chunk"
                    msg = probe.got["chunk"][0]
                    assert msg.header.stamp.sec >= 500 and msg.header.stamp.nanosec == 0
                    assert list(msg.joint_names) == policy.action_names
                    n = policy.n_action_steps + 1
                    t = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points]
                    np.testing.assert_allclose(t, np.arange(n) / policy.control_rate_hz, atol=1e-9)
                    want = policy.predict_from_embedding(feature, joints=q)[:n]
                    np.testing.assert_allclose([p.positions for p in msg.points], want, atol=1e-5)
                else:
                    assert not probe.got["chunk"], "the OOD gate let a chunk through"
                    assert probe.wait("diag", 1, timeout=5.0)
                    time.sleep(1.2)
                    texts = [s.message for d in probe.got["diag"] for s in d.status if "policy" in s.name]
                    assert any("out of distribution" in t for t in texts), texts
            finally:
                probe.close()


def test_policy_node_refuses_a_mismatched_run(random_run):
    import rclpy

    from class_ros.errors import ClassRosError
    from class_ros.nodes.policy_node import PolicyNode

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        names = "[shoulder_pan, shoulder_lift, elbow, wrist_1, wrist_2, wrist_3, gripper]"
        for names_arg, kind, words in (("[a, b, c, d, e, f, g]", "joint_position", "action names"),
                                       (names, "ee_pose", "ee_pose")):
            args = ["--ros-args", "-p", f"run_dir:={random_run}", "-p", f"action_names:={names_arg}",
                    "-p", f"action_kind:={kind}"]
            with pytest.raises(ClassRosError, match=words):
                PolicyNode(context=ctx, cli_args=args)
    finally:
        ctx.try_shutdown()


def test_graph_command_as_processes_moves_the_sim_arm(random_run):
    """`class-ros graph --sim --processes`: real entry points, one process per node, commands flow."""
    from std_msgs.msg import Float64MultiArray

    probe = Probe({"cmd": (Float64MultiArray, "/forward_position_controller/commands")})
    try:
        proc = subprocess.Popen([sys.executable, "-m", "class_ros.cli", "graph", "--sim", "--processes",
                                 "--run-dir", str(random_run), "--duration", "25"], env=os.environ.copy(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert probe.wait("cmd", 50, timeout=60.0), "no commands from the process graph"
        finally:
            proc.send_signal(2)
            out, _ = proc.communicate(timeout=30)
        assert "running" in out, out[-2000:]
        cmds = np.array([m.data for m in probe.got["cmd"]])
        assert cmds.shape[1] == 6 and np.all(np.isfinite(cmds))
    finally:
        probe.close()


@pytest.mark.slow
def test_closed_loop_through_ros_lifts_with_the_trained_run(demos, trained_run):
    from class_ros.nodes.closed_loop import run_closed_loop

    # The demonstrated layouts (cube pose, arm start), replayed by seed through sim_node's ~/reset.
    summary = json.loads(next((demos / "bags").glob("*.json")).read_text())
    seeds = summary["episode_seeds"][:8]  # stops at the first success
    trained = run_closed_loop(trained_run, "lift", "fixed", seeds=seeds, stop_after_success=True)
    print(json.dumps({k: v for k, v in trained.items() if k != "latency_ms"}))
    assert trained["successes"] >= 1, trained["episodes"]
    # Latency samples came over ROS from arm_command_node, one per executed chunk.
    assert len(trained["latency_ms"]) >= 3 and np.all(np.array(trained["latency_ms"]) > 0)


def test_policy_node_diffusion_reads_image_and_joint_state(demos, random_run):
    """The diffusion path: policy_node reads ~/image + /joint_states itself and stamps chunks with the frame."""
    from sensor_msgs.msg import Image, JointState
    from trajectory_msgs.msg import JointTrajectory

    from class_ros.nodes import topology
    from class_ros.nodes.graph import start_in_process
    from class_ros.sim.robot import JOINT_NAMES
    from training.demo import merged_config
    from training.finetune import finetune

    cfg = merged_config({"base": "training/configs/finetune_cpu.yaml",
                         "overrides": {"steps": 2, "batch_size": 8, "warmup_steps": 1, "save_every": 100}})
    run = demos / "diffusion_run"
    finetune(demos / "dataset", str(random_run), run, cfg, device="cpu", progress=False)
    spec = next(s for s in topology.graph("diffusion") if s.name == "policy_node")
    with start_in_process([spec], extra={"run_dir": str(run), "policy": "diffusion"}):
        probe = Probe({"chunk": (JointTrajectory, "/policy_node/action_chunk")})
        try:
            img_pub = probe.publisher(Image, "/camera_node/image", sensor=True)
            js_pub = probe.publisher(JointState, "/joint_states", sensor=True)
            img = np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)
            for i in range(100):
                js = JointState(name=list(JOINT_NAMES), position=[0.0, 0.3, 1.3, 1.54, 0.0, 0.0, 0.0])
                js.header.stamp = stamp(700 + i)
                js_pub.publish(js)
                msg = Image(height=96, width=96, encoding="rgb8", step=288, data=img.tobytes())
                msg.header.stamp = stamp(700 + i, 5)
                img_pub.publish(msg)
                if probe.wait("chunk", 1, timeout=0.3):
                    break
            assert probe.got["chunk"], "the diffusion policy_node published no chunk"
            chunk = probe.got["chunk"][0]
            assert chunk.header.stamp.sec >= 700 and chunk.header.stamp.nanosec == 5
            assert list(chunk.joint_names) == list(JOINT_NAMES)
            assert len(chunk.points) == 9  # n_action_steps + 1
            assert np.all(np.isfinite([p.positions for p in chunk.points]))
        finally:
            probe.close()


def test_evaluate_through_ros_runs_the_direct_evaluations_episodes(trained_run, tmp_path):
    """`class-ros evaluate --ros`: the same episode seeds as the direct evaluation, the same result keys."""
    from class_ros.cli import main
    from class_ros.sim.env import episode_seed
    from training.evaluate import EVAL_STREAM, summary_line

    out = tmp_path / "ros.json"
    assert main(["evaluate", "--run", str(trained_run), "--camera", "fixed", "--episodes", "1", "--seed", "5",
                 "--ros", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["through"] == "ros" and res["episodes"] == 1
    assert res["episode_seeds"] == [episode_seed(5, 0, EVAL_STREAM)]
    assert res["episode_details"][0]["sim_time_s"] > 0
    assert 0.0 <= res["ci_low"] <= res["success_rate"] <= res["ci_high"] <= 1.0
    assert summary_line(res).startswith(f"success {res['successes']}/1")
