"""ArmEnv: the built-in MuJoCo arm world with a gymnasium-style interface.

    with ArmEnv(task="lift", camera="random", seed=0) as env:
        obs = env.reset()
        obs, reward, done, info = env.step(action)  # action (7,): 6 joint targets (rad) + gripper (0..1)

Actions are absolute joint-position targets, like a ros2_control position interface. The joint servos
run at `SERVO_RATE_HZ`: each tick they move their setpoint towards the target by at most the joint's
velocity limit, then the MuJoCo position actuators track the setpoint. Observations:
`{"agentview": (H, W, 3) uint8, "joint_pos": (7,) float32, "privileged_state": (5,) float32}` (6 joint
positions + gripper opening in the 0 open .. 1 closed target units; the true object state, which only
the privileged-state ceilings of class_ros.sim.oracle read); `render_images=False` leaves out the image.
`cameras=("agentview", "wrist")` adds the eye-in-hand `wrist` camera (fixed to the hand, so it sees the
same whatever the agentview camera mode): an image of the same size under its own key.
Everything random comes from the reset seed, so one seed gives the same images and states.

The ROS sim node drives the same object at a lower level: `set_targets`, `advance(seconds)`,
`render()`, `joint_positions()`, `joint_velocities()`, `sim_time`, `check_success()`.
"""
from __future__ import annotations

from importlib import resources

import numpy as np

from class_ros.errors import ClassRosError
from class_ros.sim import robot
from class_ros.sim.cameras import CAMERA_NAMES, CameraRig, camera_pos_quat, check_cameras, check_mode
from class_ros.sim.tasks import TIME_LIMIT_S, CUBE_HALF, check_task, is_success, sample_layout

SERVO_RATE_HZ = 100.0
HOME_NOISE_RAD = 0.05


def episode_seed(seed: int, index: int, stream: int = 0) -> int:
    """The reset seed of episode `index` of a run seeded `seed`; streams (demos 0, evaluation 1) never share."""
    return int(np.random.SeedSequence([int(seed), int(stream), int(index)]).generate_state(1)[0] >> 1)


def asset_path(task: str) -> str:
    """Path of the MJCF scene file of `task`."""
    return str(resources.files("class_ros.sim") / "assets" / f"{check_task(task)}.xml")


class ArmEnv:
    """The arm, a table, the task's objects and the `agentview` camera."""

    def __init__(self, task: str = "lift", camera: str = "fixed", image_size: tuple[int, int] = (96, 96),
                 seed: int | None = None, control_rate_hz: float = 10.0, render_images: bool = True,
                 time_limit_s: float | None = None, cameras=("agentview",)):
        import mujoco

        self._mj = mujoco
        self.task = check_task(task)
        self.camera_mode = check_mode(camera)
        self.cameras = check_cameras(cameras)
        self.image_size = (int(image_size[0]), int(image_size[1]))  # (H, W)
        if min(self.image_size) < 8 or control_rate_hz <= 0:
            raise ClassRosError(f"image_size {image_size} must be at least 8x8 and control_rate_hz positive.")
        self.control_rate_hz = float(control_rate_hz)
        self.render_images = render_images
        self.time_limit_s = float(time_limit_s or TIME_LIMIT_S[task])
        self.max_steps = int(round(self.time_limit_s * self.control_rate_hz))

        self.model = mujoco.MjModel.from_xml_path(asset_path(task))
        self.data = mujoco.MjData(self.model)
        m = self.model
        name = lambda kind, n: mujoco.mj_name2id(m, kind, n)  # noqa: E731
        joints = [name(mujoco.mjtObj.mjOBJ_JOINT, n) for n in robot.ARM_JOINTS]
        self._arm_qadr = np.array([m.jnt_qposadr[j] for j in joints])
        self._arm_dadr = np.array([m.jnt_dofadr[j] for j in joints])
        fingers = [name(mujoco.mjtObj.mjOBJ_JOINT, n) for n in ("finger_left", "finger_right")]
        self._finger_qadr = np.array([m.jnt_qposadr[j] for j in fingers])
        self._finger_dadr = np.array([m.jnt_dofadr[j] for j in fingers])
        self._cube_qadr = m.jnt_qposadr[name(mujoco.mjtObj.mjOBJ_JOINT, "cube")]
        self._cube_geom = name(mujoco.mjtObj.mjOBJ_GEOM, "cube")
        goal = {"lift": None, "push": "target", "pick_place": "plate"}[task]
        self._goal_body = None if goal is None else name(mujoco.mjtObj.mjOBJ_BODY, goal)
        self._goal_geom = None if goal is None else name(mujoco.mjtObj.mjOBJ_GEOM, goal)
        self._cam_ids = {cam: name(mujoco.mjtObj.mjOBJ_CAMERA, cam) for cam in CAMERA_NAMES}
        self._cam = self._cam_ids["agentview"]  # the posed one
        self.grip_site = name(mujoco.mjtObj.mjOBJ_SITE, "grip")
        ids = joints + fingers + list(self._cam_ids.values()) + [self.grip_site]
        assert min(ids) >= 0, "MJCF and robot.py disagree"

        self._substeps_per_tick = max(1, int(round(1.0 / (SERVO_RATE_HZ * m.opt.timestep))))
        self._renderer = None
        self._seed_rng = np.random.default_rng(seed)
        self.layout = None
        self.steps = 0
        self.success = False
        self._physics_steps = 0
        self._target = robot.HOME.copy()
        self._setpoint = robot.HOME.copy()
        self._rig = None

    # -- gymnasium-style interface ---------------------------------------------------------------
    def reset(self, seed: int | None = None) -> dict:
        """Start an episode: objects, colours, arm start pose and camera drawn from `seed`."""
        if seed is None:
            seed = int(self._seed_rng.integers(2**31))
        rng = np.random.default_rng(seed)
        m, d = self.model, self.data
        self._mj.mj_resetData(m, d)
        self.layout = sample_layout(self.task, rng)
        q = d.qpos
        q[self._cube_qadr:self._cube_qadr + 3] = [*self.layout.cube_xy, CUBE_HALF]
        q[self._cube_qadr + 3:self._cube_qadr + 7] = [np.cos(self.layout.cube_yaw / 2), 0, 0,
                                                      np.sin(self.layout.cube_yaw / 2)]
        m.geom_rgba[self._cube_geom] = self.layout.cube_rgba
        if self._goal_body is not None:
            m.body_pos[self._goal_body, :2] = self.layout.goal_xy
            m.geom_rgba[self._goal_geom] = self.layout.goal_rgba
        start = robot.HOME.copy()
        start[:6] += rng.uniform(-HOME_NOISE_RAD, HOME_NOISE_RAD, 6)
        q[self._arm_qadr] = start[:6]
        q[self._finger_qadr] = robot.gripper_to_opening(start[6])
        self._target, self._setpoint = start.copy(), start.copy()
        self._apply_setpoint()
        self._rig = CameraRig(self.camera_mode, rng)
        self._physics_steps = 0
        self.steps = 0
        self.success = False
        self._mj.mj_forward(m, d)
        return self._observe()

    def step(self, action) -> tuple[dict, float, bool, dict]:
        """Apply absolute targets (7,) for one control period; returns (obs, reward, done, info)."""
        self.set_targets(action)
        self.advance(1.0 / self.control_rate_hz)
        self.steps += 1
        self.success = self.success or self.check_success()
        timeout = self.steps >= self.max_steps
        info = {"success": self.success, "time_s": self.sim_time, "timeout": timeout and not self.success}
        return self._observe(), float(self.success), self.success or timeout, info

    def close(self) -> None:
        """Free the renderer (its GL context) now rather than at interpreter exit."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- lower-level access (the ROS sim node) ---------------------------------------------------
    def set_targets(self, q) -> None:
        """Set absolute targets (7,): 6 joints (rad) + gripper (0 open .. 1 closed), clipped to limits."""
        q = np.asarray(q, dtype=float).reshape(-1)
        if q.shape != (7,) or not np.all(np.isfinite(q)):
            raise ClassRosError(f"a sim action must be 7 finite joint targets, got shape {q.shape}.")
        self._target = np.clip(q, robot.JOINT_LOWER, robot.JOINT_UPPER)

    def advance(self, seconds: float) -> None:
        """Run the physics (servo ticks at SERVO_RATE_HZ) for `seconds` of simulated time; no rendering."""
        remaining = int(round(seconds / self.model.opt.timestep))
        while remaining > 0:
            phase = self._physics_steps % self._substeps_per_tick
            if phase == 0:
                self._servo_tick()
            n = min(remaining, self._substeps_per_tick - phase)
            self._mj.mj_step(self.model, self.data, nstep=n)
            self._physics_steps += n
            remaining -= n

    def render(self, camera: str = "agentview") -> np.ndarray:
        """The image (H, W, 3) uint8 of `camera` ("agentview" or "wrist") in the current state and camera pose."""
        if self._renderer is None:
            _load_triton_before_gl()
            self._renderer = self._mj.Renderer(self.model, *self.image_size)
        pos, quat = camera_pos_quat(self._rig.pose_at(self.sim_time))
        self.model.cam_pos[self._cam], self.model.cam_quat[self._cam] = pos, quat
        # Kinematics only (not mj_forward): rendering must not change the physics' warm start.
        self._mj.mj_kinematics(self.model, self.data)
        self._mj.mj_camlight(self.model, self.data)
        self._renderer.update_scene(self.data, camera=self._cam_ids[check_cameras(camera)[0]])
        return self._renderer.render()

    def joint_positions(self) -> np.ndarray:
        """(7,) 6 joint angles (rad) + gripper opening (0 open .. 1 closed)."""
        q = self.data.qpos
        # Clipped: contact solving can push a finger a hair past its travel; readings stay within limits.
        gripper = np.clip(robot.opening_to_gripper(q[self._finger_qadr].mean()), 0.0, 1.0)
        return np.append(q[self._arm_qadr], gripper)

    def joint_velocities(self) -> np.ndarray:
        """(7,) 6 joint velocities (rad/s) + gripper velocity (units/s)."""
        v = self.data.qvel
        return np.append(v[self._arm_dadr], -v[self._finger_dadr].mean() / robot.FINGER_TRAVEL)

    @property
    def sim_time(self) -> float:
        """Seconds of simulated time since reset."""
        return self._physics_steps * self.model.opt.timestep

    def cube_position(self) -> np.ndarray:
        """(3,) cube centre in the world frame (m)."""
        return self.data.qpos[self._cube_qadr:self._cube_qadr + 3].copy()

    def grip_position(self) -> np.ndarray:
        """(3,) grip point (between the finger pads) in the world frame (m), as of the last physics step."""
        return self.data.site_xpos[self.grip_site].copy()

    def check_success(self) -> bool:
        """The task's success predicate on the current state."""
        goal = None if self.layout is None else self.layout.goal_xy
        return is_success(self.task, self.cube_position(), goal, self.joint_positions()[6])

    # -- internals -------------------------------------------------------------------------------
    def _servo_tick(self) -> None:
        max_move = robot.VELOCITY_LIMITS / SERVO_RATE_HZ
        self._setpoint += np.clip(self._target - self._setpoint, -max_move, max_move)
        self._apply_setpoint()

    def _apply_setpoint(self) -> None:
        self.data.ctrl[:6] = self._setpoint[:6]
        self.data.ctrl[6] = robot.gripper_to_opening(self._setpoint[6])

    def privileged_state(self) -> np.ndarray:
        """(5,) the true object state: cube centre (3) and goal xy (2; zeros for lift)."""
        goal = self.layout.goal_xy if self.layout.goal_xy is not None else np.zeros(2)
        return np.concatenate([self.cube_position(), goal]).astype(np.float32)

    def _observe(self) -> dict:
        obs = {"joint_pos": self.joint_positions().astype(np.float32), "privileged_state": self.privileged_state()}
        if self.render_images:
            obs.update({cam: self.render(cam) for cam in self.cameras})
        return obs


def _load_triton_before_gl() -> None:
    """Import triton (if installed) before the first GL context exists.

    Mesa's software EGL renderer and triton (pulled in later by diffusers through torch._dynamo) each
    carry their own LLVM; loading triton after a GL context exists segfaults the process. Loading it
    first is harmless, so every process that renders can import diffusers afterwards.
    """
    try:
        import triton  # noqa: F401
    except ImportError:
        pass
