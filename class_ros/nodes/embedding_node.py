"""embedding_node: the latest image(s) + the joint state as of the image stamp -> the run's observation feature.

Usage:
    embedding_node --ros-args --params-file config/policy.yaml -p run_dir:=runs/class
    (a lifecycle node: with autostart:=false, `ros2 lifecycle set /embedding_node configure|activate`)

Event-driven: each frame of the first camera is encoded as it arrives (the other cameras' newest
frames and the joint state as of its stamp with it) by the run's EMA encoder, and `~/embedding` (a
1 x F 32FC1 sensor_msgs/Image) goes out with the source frame's header, so the stamp travels on to the
command. The camera readers keep only the newest frame (common.NEWEST): a slow encoder skips frames
rather than working through old ones, and nothing waits on a polling timer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState

from class_ros.errors import ClassRosError
from class_ros.nodes.camera_node import output_topic
from class_ros.nodes.common import (NEWEST, CallbackGuard, RateMeter, ReleasesOnCleanup,
                                    autostart, declare_params, param, release, require, run_node, stamp_to_sec)
from class_ros.nodes.observation import JointStateBuffer, feature_to_image, image_to_array


def observation_layout(policy) -> tuple[list[str], str | None]:
    """(camera keys, the proprio key or None) the run's encoder needs; refuses layouts ROS cannot fill."""
    cfg = policy.encoder.config
    require(len(cfg.proprio_keys) <= 1,
            f"the run needs proprio keys {cfg.proprio_keys}; the ROS graph fills only one, from /joint_states.")
    require(not cfg.proprio_keys or len(policy.joint_names) == sum(cfg.proprio_dims),
            f"the run's proprio key {cfg.proprio_keys} has {sum(cfg.proprio_dims)} values but its joint_names are "
            f"{policy.joint_names}; the dataset must name its proprio joints.")
    return list(cfg.image_keys), (cfg.proprio_keys[0] if cfg.proprio_keys else None)


@dataclass(frozen=True)
class EmbeddingParams:
    """embedding_node's parameters, read once at start-up (all read-only)."""

    run_dir: str = param("", "pre-training run (with a retrieval index)")
    device: str = param("cpu", "torch device of the encoder")
    joint_states_topic: str = param("/joint_states", "joint states topic")
    torch_threads: int = param(1, "CPU threads for the encoder; 1 keeps OpenMP's busy-waiting threads from starving "
                                  "the other nodes of a one-process graph")
    autostart: bool = param(True, "configure and activate at start-up")


class EmbeddingNode(ReleasesOnCleanup, LifecycleNode):
    """Encodes each new frame of the first camera as it arrives.

    Lifecycle (as ros2/demos lifecycle_py): configure loads the encoder and makes the subscriptions and
    the lifecycle `~/embedding` publisher; activate enables the publisher; deactivate disables it (frames
    are then not encoded either); cleanup and shutdown destroy what configure made.
    """

    def __init__(self, **kwargs):
        super().__init__("embedding_node", **kwargs)
        self.p = declare_params(self, EmbeddingParams)
        self.error = ""  # why the last configure failed
        self.policy = None
        self.pub = None
        self.subscriptions_made = []
        self.latest: dict[str, Image] = {}
        self.done_stamp = None
        self.rate = RateMeter()
        self.guard = CallbackGuard(self)  # a failing frame is skipped, never fatal
        self.encode = self.guard.wrap("encode", self._encode_newest)
        if self.p.autostart:
            autostart(self)

    # --- lifecycle ------------------------------------------------------------------------------------
    def on_configure(self, state) -> TransitionCallbackReturn:
        self.error = ""
        try:
            require(bool(self.p.run_dir), "run_dir is not set; give the trained run with `class-ros graph --run-dir "
                    "RUN` or `run_dir:=RUN` to the launch file.")
            import torch
            torch.set_num_threads(max(1, int(self.p.torch_threads)))
            from class_ros.policy import load_policy
            self.policy = load_policy(self.p.run_dir, "retrieval", self.p.device)
            self.cameras, self.proprio = observation_layout(self.policy)
            self.embed_once(self._dummy_observation())  # warm-up: the first torch call is slow
        except ClassRosError as err:
            self._release()
            self.error = str(err)
            self.get_logger().error(self.error)
            return TransitionCallbackReturn.FAILURE
        self.joints = JointStateBuffer(self.policy.joint_names)
        self.latest = {}
        self.subscriptions_made = [
            self.create_subscription(Image, output_topic(i), lambda m, c=cam: self._on_frame(c, m), NEWEST)
            for i, cam in enumerate(self.cameras)]
        self.subscriptions_made.append(self.create_subscription(JointState, self.p.joint_states_topic,
                                                                self._on_joint_state, qos_profile_sensor_data))
        self.pub = self.create_lifecycle_publisher(Image, "~/embedding", 10)
        self.get_logger().info(f"encoding {self.cameras} + {self.proprio} from {self.p.run_dir}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        self.done_stamp = None
        return super().on_activate(state)  # enables the lifecycle publisher

    def _release(self) -> None:
        """Destroy what on_configure made: publisher, subscriptions, the loaded encoder."""
        release(self, self.pub, self.subscriptions_made)
        self.pub, self.subscriptions_made = None, []
        self.policy = None

    def _on_frame(self, camera: str, msg: Image) -> None:
        self.latest[camera] = msg
        if camera == self.cameras[0]:  # the first camera's frame carries the stamp: encode now
            self.encode()

    def _on_joint_state(self, msg: JointState) -> None:
        if not self.joints.add(msg):
            self.get_logger().warning(f"dropped joint states so far: {dict(self.joints.dropped)}",
                                      throttle_duration_sec=5.0)

    def _dummy_observation(self) -> dict:
        h, w = self.policy.encoder.config.image_size
        obs = {c: np.zeros((h, w, 3), np.uint8) for c in self.cameras}
        if self.proprio:
            obs[self.proprio] = np.zeros(len(self.policy.joint_names), np.float32)
        return obs

    def embed_once(self, obs: dict) -> np.ndarray:
        """(F,) feature of one observation dict."""
        return self.policy.embed(obs)

    def _encode_newest(self) -> None:
        if self.pub is None or not self.pub.is_activated:
            return  # inactive: no encoding either
        msgs = [self.latest.get(c) for c in self.cameras]
        if any(m is None for m in msgs):
            return
        stamp = stamp_to_sec(msgs[0].header.stamp)
        if stamp == self.done_stamp:
            return  # nothing new
        obs = {}
        try:
            for cam, m in zip(self.cameras, msgs):
                obs[cam] = image_to_array(m)
        except ClassRosError as err:
            self.get_logger().error(str(err), throttle_duration_sec=10.0)
            self.done_stamp = stamp
            return
        if self.proprio:
            state = self.joints.as_of(stamp)
            if state is None:
                return
            obs[self.proprio] = state[0]
        self.done_stamp = stamp
        feature = self.embed_once(obs)
        if not np.all(np.isfinite(feature)):
            self.get_logger().error("the encoder produced NaN or infinite values; frame skipped",
                                    throttle_duration_sec=10.0)
            return
        self.pub.publish(feature_to_image(feature, msgs[0].header))
        self.rate.tick()


def main(args=None) -> int:
    """Entry point `embedding_node`."""
    return run_node(EmbeddingNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
