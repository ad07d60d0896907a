"""policy_node: observations in, timed action chunks (trajectory_msgs/JointTrajectory) out. A lifecycle node.

Usage:
    policy_node --ros-args --params-file config/policy.yaml -p run_dir:=runs/class -p policy:=retrieval
    (with autostart:=false, drive it with `ros2 lifecycle set /policy_node configure|activate`)

configure: load the run (retrieval index or diffusion model), check its action kind and names against
the parameters, warm it up. activate: publish chunks. deactivate: stop publishing (and inferring);
`ros2 lifecycle set /policy_node deactivate` pauses the policy, `activate` resumes it.
Retrieval reads `~/embedding` (embedding_node), and /joint_states when its index replays arm targets
relative to the measured joints (`class-ros index --relative`); diffusion reads `~/image` and /joint_states.
Event-driven: the policy runs when a new observation arrives (an embedding, or the first camera's
frame), never on a polling timer; the readers keep only the newest observation (common.NEWEST).
Chunks carry the observation's stamp; point k is due at stamp + k * dt (dt = 1 / the run's control rate).
By default the first observation (n_action_steps - 1) steps after the last chunk makes the next one,
so each chunk runs open loop as the method executes it; `replan_period:=0` sends one per new
observation for arm_command_node to blend.
The retrieval confidence gate: when the nearest demonstration is further than `max_nearest_distance`
(1 - cos), no chunk is sent (the arm holds after its chunk timeout) and /diagnostics says why.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from class_ros.errors import ClassRosError
from class_ros.nodes.common import (NEWEST, CallbackGuard, RateMeter, ReleasesOnCleanup,
                                    autostart, declare_params, key_values, now_sec, param, release, require, run_node,
                                    stamp_to_sec)
from class_ros.nodes.observation import JointStateBuffer, image_to_array, image_to_feature
from class_ros.policy import POLICY_KINDS


def check_run_matches(policy, action_kind: str, action_names: list[str]) -> None:
    """Refuse a run whose action kind or names differ from what the robot side expects."""
    if policy.action_kind != action_kind:
        raise ClassRosError(f"the run's actions are {policy.action_kind!r} but this robot is configured for "
                            f"{action_kind!r}; use a matching run or change action_kind.")
    if list(policy.action_names) != list(action_names):
        raise ClassRosError(f"the run's action names {list(policy.action_names)} differ from the configured "
                            f"{list(action_names)}; use a matching run or fix action_names.")


def chunk_message(chunk: np.ndarray, names: list[str], header, dt: float) -> JointTrajectory:
    """(H, D) chunk -> JointTrajectory stamped like the observation, point k at k * dt."""
    msg = JointTrajectory(header=header, joint_names=list(names))
    for k, row in enumerate(chunk):
        ns = int(round(k * dt * 1e9))
        point = JointTrajectoryPoint(positions=[float(v) for v in row])
        point.time_from_start.sec, point.time_from_start.nanosec = ns // 10**9, ns % 10**9
        msg.points.append(point)
    return msg


class EmbeddingInput:
    """Retrieval: the observation feature comes from embedding_node's `~/embedding`; each one calls `on_new`.
    A relative index (RetrievalPolicy.relative_dims) also reads /joint_states: its chunks start from the
    joints measured as of the embedding's stamp."""

    def __init__(self, node, policy, on_new):
        self.policy = policy
        self.latest = None
        self.on_new = on_new
        self.subscriptions = [node.create_subscription(Image, "~/embedding", self._on_embedding, NEWEST)]
        self.joints = JointStateBuffer(policy.joint_names) if policy.relative_dims else None
        if self.joints is not None:
            self.subscriptions.append(node.create_subscription(JointState, node.p.joint_states_topic,
                                                               self.joints.add, qos_profile_sensor_data))

    def _on_embedding(self, msg) -> None:
        self.latest = msg
        self.on_new()

    def warm_up(self) -> None:
        self.policy.predict_from_embedding(np.ones(self.policy.encoder.out_dim, np.float32),
                                           joints=np.zeros(len(self.policy.joint_names), np.float32))

    def newest(self, done_stamp):
        """(header, (feature, joints or None)) of an observation newer than `done_stamp`, or None."""
        msg = self.latest
        if msg is None or stamp_to_sec(msg.header.stamp) == done_stamp:
            return None
        joints = None
        if self.joints is not None:
            state = self.joints.as_of(stamp_to_sec(msg.header.stamp))
            if state is None:
                return None
            joints = state[0]
        return msg.header, (image_to_feature(msg), joints)

    def predict(self, observation) -> np.ndarray:
        feature, joints = observation
        return self.policy.predict_from_embedding(feature, joints=joints)


class ObservationInput:
    """Diffusion: the policy encodes the preprocessed camera image(s) and /joint_states itself; each frame
    of the first camera calls `on_new`."""

    def __init__(self, node, policy, on_new):
        from class_ros.nodes.camera_node import output_topic
        from class_ros.nodes.embedding_node import observation_layout
        self.policy = policy
        self.cameras, self.proprio = observation_layout(policy)
        self.joints = JointStateBuffer(policy.joint_names)
        self.latest = {}
        self.on_new = on_new
        self.subscriptions = [node.create_subscription(Image, output_topic(i), lambda m, c=cam: self._on_frame(c, m),
                                                       NEWEST) for i, cam in enumerate(self.cameras)]
        self.subscriptions.append(node.create_subscription(JointState, node.p.joint_states_topic, self.joints.add,
                                                           qos_profile_sensor_data))

    def _on_frame(self, camera: str, msg) -> None:
        self.latest[camera] = msg
        if camera == self.cameras[0]:  # the first camera's frame carries the stamp
            self.on_new()

    def warm_up(self) -> None:
        h, w = self.policy.encoder.config.image_size
        obs = {c: np.zeros((h, w, 3), np.uint8) for c in self.cameras}
        if self.proprio:
            obs[self.proprio] = np.zeros(len(self.policy.joint_names), np.float32)
        self.policy.predict_action_chunk(obs)

    def newest(self, done_stamp):
        """(header, observation) of frames newer than `done_stamp` with the joint state as of them, or None."""
        msgs = [self.latest.get(c) for c in self.cameras]
        if any(m is None for m in msgs) or stamp_to_sec(msgs[0].header.stamp) == done_stamp:
            return None
        obs = {c: image_to_array(m) for c, m in zip(self.cameras, msgs)}
        if self.proprio:
            state = self.joints.as_of(stamp_to_sec(msgs[0].header.stamp))
            if state is None:
                return None
            obs[self.proprio] = state[0]
        return msgs[0].header, obs

    def predict(self, obs) -> np.ndarray:
        return self.policy.predict_action_chunk(obs)


# What each policy kind reads; every other step of the node is the same for all kinds.
INPUTS = {"retrieval": EmbeddingInput, "diffusion": ObservationInput}
assert set(INPUTS) == set(POLICY_KINDS)


@dataclass(frozen=True)
class PolicyParams:
    """policy_node's parameters, read once at start-up (all read-only)."""

    run_dir: str = param("", "run directory to load on configure")
    policy: str = param("retrieval", "retrieval or diffusion")
    device: str = param("cpu", "torch device")
    action_kind: str = param("joint_position", "action kind the robot side sends")
    action_names: tuple[str, ...] = param([""], "action names the robot side expects, in order")
    max_nearest_distance: float = param(2.0, "retrieval OOD gate: max 1 - cos to the nearest demo frame (2: off)")
    replan_period: float = param(-1.0, "seconds between chunks: < 0 = (n_action_steps - 1) / the run's rate (each "
                                       "chunk runs open loop, as the method executes it), 0 = a chunk per new "
                                       "observation")
    autostart: bool = param(True, "configure and activate at start-up")
    joint_states_topic: str = param("/joint_states", "joint states (diffusion, relative retrieval)")

    def __post_init__(self):
        require(self.policy in POLICY_KINDS, f"policy must be one of {POLICY_KINDS}, got {self.policy!r}.")
        names = list(self.action_names)
        require(len(names) > 0 and all(names) and len(set(names)) == len(names),
                f"action_names must be a list of distinct non-empty names, got {names}.")


class PolicyNode(ReleasesOnCleanup, LifecycleNode):
    """Runs the policy on each new observation (at most one chunk per replan period).

    Lifecycle (as ros2/demos lifecycle_py): configure loads the run and makes the inputs and the lifecycle
    chunk publisher; activate enables the publisher; deactivate disables it (observations are then not
    inferred on either); cleanup and shutdown destroy what configure made.
    """

    def __init__(self, **kwargs):
        super().__init__("policy_node", **kwargs)
        self.p = declare_params(self, PolicyParams)
        self.error = ""  # why the last configure failed
        self.policy = None
        self.inputs = None  # EmbeddingInput or ObservationInput, made on configure
        self.chunk_pub = None  # lifecycle publisher, made on configure
        self.gated = ""  # why chunks are withheld, "" when they flow
        self.last_confidence = None
        self.rate = RateMeter()
        self.guard = CallbackGuard(self)  # a failing frame is skipped, never fatal
        self.skipped_non_finite = 0  # chunks the policy produced with NaN / inf, never sent
        self.done_stamp = None
        self.last_sent = -float("inf")  # node-clock time of the last chunk
        # Diagnostics stay on in every state: they say "inactive" / "unconfigured" too.
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._publish_diagnostics)
        if self.p.autostart:
            autostart(self)

    @property
    def active(self) -> bool:
        """Chunks flow (the node is in the active state)."""
        return self.chunk_pub is not None and self.chunk_pub.is_activated

    # --- lifecycle ------------------------------------------------------------------------------------
    def on_configure(self, state) -> TransitionCallbackReturn:
        self.error = ""
        try:
            require(bool(self.p.run_dir), "run_dir is not set; give the trained run with `class-ros graph "
                    "--run-dir RUN` or `run_dir:=RUN` to the launch file.")
            from class_ros.policy import load_policy
            policy = load_policy(self.p.run_dir, self.p.policy, self.p.device)
            check_run_matches(policy, self.p.action_kind, self.p.action_names)
            self.policy = policy
            self.inputs = INPUTS[self.p.policy](self, policy, self.guard.wrap("predict", self._on_observation))
            self.inputs.warm_up()
            policy.reset()
        except ClassRosError as err:
            self._release()
            self.error = str(err)
            self.get_logger().error(self.error)
            return TransitionCallbackReturn.FAILURE
        self.dt = 1.0 / self.policy.control_rate_hz
        self.n_steps = int(self.policy.n_action_steps)
        # One step of overlap between consecutive chunks absorbs the observation-to-command latency.
        period = self.p.replan_period
        self.replan_period = (self.n_steps - 1) * self.dt if period < 0 else period
        self.chunk_pub = self.create_lifecycle_publisher(JointTrajectory, "~/action_chunk", 10)
        self.get_logger().info(f"loaded {self.p.policy} run {self.p.run_dir}: {self.n_steps} steps per chunk "
                               f"at {self.policy.control_rate_hz} Hz, a new chunk every {self.replan_period:.2f} s")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        self.policy.reset()
        self.done_stamp = None
        self.last_sent = -float("inf")
        self.get_logger().info("active: publishing chunks")
        return super().on_activate(state)  # enables the lifecycle publisher

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self.get_logger().info("inactive: no chunks (the arm holds after its chunk timeout)")
        return super().on_deactivate(state)

    def _release(self) -> None:
        """Destroy what on_configure made: chunk publisher, input subscriptions, the loaded run."""
        release(self, self.chunk_pub, self.inputs.subscriptions if self.inputs else ())
        self.chunk_pub, self.inputs = None, None
        self.policy = None

    # --- the work -----------------------------------------------------------------------------------------
    def _on_observation(self) -> None:
        if not self.active:
            return  # inactive: no inference either
        if now_sec(self) - self.last_sent < self.replan_period:
            return
        newest = self.inputs.newest(self.done_stamp)
        if newest is None:
            return
        header, observation = newest
        self.done_stamp = stamp_to_sec(header.stamp)
        chunk = self.inputs.predict(observation)
        # Retrieval knows how far the observation is from every demonstration: the out-of-distribution gate.
        self.last_confidence = getattr(self.policy, "last_confidence", None)
        limit = self.p.max_nearest_distance
        dist = self.last_confidence.nearest_distance if self.last_confidence is not None else 0.0
        self.gated = (f"out of distribution: nearest demonstration at 1 - cos = {dist:.3f} > {limit:.3f}"
                      if dist > limit else "")
        if self.gated:
            self.get_logger().warning(self.gated, throttle_duration_sec=2.0)
            return
        if not np.all(np.isfinite(chunk)):
            self.skipped_non_finite += 1
            self.get_logger().error("the policy produced NaN or infinite actions; frame skipped",
                                    throttle_duration_sec=10.0)
            return
        self.chunk_pub.publish(chunk_message(chunk[: self.n_steps + 1], self.policy.action_names, header, self.dt))
        self.last_sent = now_sec(self)
        self.rate.tick()

    def _publish_diagnostics(self) -> None:
        values = {"chunk_rate_hz": self.rate.rate(), "active": self.active, "policy": self.p.policy,
                  "skipped_non_finite": self.skipped_non_finite}
        values.update({f"callback_error {k}": v for k, v in self.guard.counts.items()})
        joints = getattr(getattr(self, "inputs", None), "joints", None)  # diffusion reads joint states itself
        if joints is not None:
            values.update({f"dropped_joint_state_{k}": v for k, v in joints.dropped.items()})
        if self.last_confidence is not None:
            values.update({"nearest_distance": float(self.last_confidence.nearest_distance),
                           "weight_entropy": float(self.last_confidence.weight_entropy),
                           "max_nearest_distance": float(self.p.max_nearest_distance)})
        level = DiagnosticStatus.WARN if (self.gated or not self.active) else DiagnosticStatus.OK
        message = self.gated or ("publishing chunks" if self.active else
                                 "inactive" if self.policy is not None else "unconfigured")
        msg = DiagnosticArray(status=[DiagnosticStatus(level=level, name=f"{self.get_name()}: policy",
                                                       hardware_id="policy", message=message,
                                                       values=key_values(values))])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(msg)


def main(args=None) -> int:
    """Entry point `policy_node`."""
    return run_node(PolicyNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
