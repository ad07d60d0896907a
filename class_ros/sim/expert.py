"""Scripted experts: a waypoint script per task, followed in Cartesian space and turned into joint
targets with damped-least-squares IK on the arm's MuJoCo Jacobians.

    obs = env.reset(seed)
    expert = make_expert(env.task, np.random.default_rng(seed))   # a new expert per episode
    while not done:
        obs, reward, done, info = env.step(expert.act(env))     # act(env) -> (7,) absolute targets

Experts read the simulator's privileged state (cube pose, goal position). Each episode draws its own
style so the demonstrations are heterogeneous: approach direction, distance and height, free and
fine speeds, which of the two top-down grasps (90 degrees apart) to use, optional via points and
pauses at waypoints.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from class_ros.sim.kinematics import ArmKinematics, top_down_rotation
from class_ros.sim.tasks import CUBE_HALF, PLATE_TOP, check_task

YAW_SPEED = 1.5  # rad/s of the commanded grip yaw
FINGER_DEPTH = 0.012  # half depth of the closed fingers along the hand x axis (m), see arm.xml
PUSH_HEIGHT = 0.025  # grip point height while pushing (m)


@dataclass
class Waypoint:
    """One step of a script: where the grip point goes, with which gripper command and how fast."""

    name: str
    goal: Callable[["object"], np.ndarray]  # env -> (3,) grip point target
    gripper: float  # 0 open .. 1 closed
    speed: float  # m/s of the commanded grip point
    hold: int = 0  # control steps to wait once arrived
    track: bool = False  # re-evaluate the goal every step (else once, on entering the waypoint)
    until: Callable[["object"], bool] | None = None  # leave when this holds instead of on arrival
    tol: float = 0.01  # arrival: grip point within this distance of the goal (m)


def _wrap(a: float) -> float:
    return (a + np.pi) % (2 * np.pi) - np.pi


class ScriptedExpert:
    """Follows a task's waypoint script; `act(env)` gives the next (7,) action."""

    MAX_WAIT = 15  # control steps to wait for the arm to catch up before moving on anyway

    def __init__(self, task: str, rng: np.random.Generator):
        self.task = check_task(task)
        self.rng = rng
        self._kin = None
        self._plan: list[Waypoint] = []

    def act(self, env) -> np.ndarray:
        """Next absolute action (7,): 6 joint targets (rad) + gripper (0 open .. 1 closed)."""
        if self._kin is None:
            self._start(env)
        dt = 1.0 / env.control_rate_hz
        wp = self._plan[self._i]
        goal = wp.goal(env) if wp.track or self._goal is None else self._goal
        self._goal = goal
        delta = goal - self._p
        dist = float(np.linalg.norm(delta))
        self._p = goal.copy() if dist <= wp.speed * dt else self._p + delta * (wp.speed * dt / dist)
        dyaw = _wrap(self._yaw_goal - self._yaw)
        self._yaw += float(np.clip(dyaw, -YAW_SPEED * dt, YAW_SPEED * dt))
        self._q = self._kin.solve(self._q, self._p, top_down_rotation(self._yaw))
        action = np.append(self._q, wp.gripper)

        if wp.until is not None:
            done = wp.until(env)
        else:
            at_goal = dist <= wp.speed * dt and abs(dyaw) < 1e-3
            close = np.linalg.norm(env.grip_position() - goal) < wp.tol
            self._wait = self._wait + 1 if at_goal else 0
            done = at_goal and (close or self._wait > self.MAX_WAIT) and self._wait > wp.hold
        if done and self._i < len(self._plan) - 1:
            self._i += 1
            self._goal = None
            self._wait = 0
        return action

    # -- planning ----------------------------------------------------------------------------------
    def _start(self, env) -> None:
        self._kin = ArmKinematics(env.model)
        self._q = env.joint_positions()[:6].copy()
        self._p, rot = self._kin.forward(self._q)
        self._yaw = float(np.arctan2(rot[1, 0], rot[0, 0]))
        self._i, self._wait, self._goal = 0, 0, None
        r = self.rng
        self.free_speed = r.uniform(0.12, 0.3)
        self.fine_speed = r.uniform(0.04, 0.1)
        self._plan = {"lift": self._plan_lift, "push": self._plan_push, "pick_place": self._plan_pick_place}[
            self.task](env)

    def _pause(self) -> int:
        """A random pause (control steps) at a waypoint, some of the time."""
        return int(self.rng.integers(1, 6)) if self.rng.random() < 0.3 else 0

    def _grasp(self, env) -> list[Waypoint]:
        """Approach the cube from a random side and height, descend and close."""
        r = self.rng
        cube = env.cube_position()
        # The cube looks the same every 90 degrees and the gripper every 180: of the two grasps near
        # the arm's natural yaw, take the nearer one most of the time.
        natural = np.arctan2(cube[1], cube[0]) + np.pi
        d = _wrap(env.layout.cube_yaw - natural)
        d = (d + np.pi / 4) % (np.pi / 2) - np.pi / 4
        if r.random() < 0.3:
            d += np.pi / 2 if d < 0 else -np.pi / 2
        self._yaw_goal = self._yaw + _wrap(natural + d - self._yaw)
        angle, radius, height = r.uniform(0, 2 * np.pi), r.uniform(0.0, 0.08), r.uniform(0.06, 0.14)
        offset = np.array([radius * np.cos(angle), radius * np.sin(angle), height])
        grasp_dz = r.uniform(0.0, 0.006)
        plan = [Waypoint("approach", lambda e: e.cube_position() + offset, 0.0, self.free_speed,
                         self._pause(), track=True, tol=0.02)]
        if r.random() < 0.5:
            above = np.array([0.0, 0.0, r.uniform(0.03, 0.05)])
            plan.append(Waypoint("pregrasp", lambda e: e.cube_position() + above, 0.0, self.fine_speed,
                                 self._pause(), track=True))
        plan += [
            Waypoint("descend", lambda e: e.cube_position() + [0, 0, grasp_dz], 0.0, self.fine_speed,
                     track=True, tol=0.006),
            Waypoint("close", lambda e: self._p.copy(), 1.0, self.fine_speed, hold=int(r.integers(4, 7)),
                     tol=1.0),
        ]
        return plan

    def _plan_lift(self, env) -> list[Waypoint]:
        r = self.rng
        height, speed = r.uniform(0.15, 0.2), r.uniform(0.08, 0.2)
        return self._grasp(env) + [
            Waypoint("lift", lambda e: np.append(self._p[:2], height), 1.0, speed, hold=100)]

    def _plan_pick_place(self, env) -> list[Waypoint]:
        r = self.rng
        plate = env.layout.goal_xy
        carry = r.uniform(0.1, 0.15)
        plan = self._grasp(env) + [
            Waypoint("raise", lambda e: np.append(self._p[:2], carry), 1.0, r.uniform(0.08, 0.2),
                     self._pause(), tol=0.02)]
        if r.random() < 0.5:
            mid = (env.cube_position()[:2] + plate) / 2 + r.uniform(-0.06, 0.06, 2)
            via = np.append(mid, carry + r.uniform(0.0, 0.05))
            plan.append(Waypoint("via", lambda e: via, 1.0, self.free_speed, tol=0.03))
        over = np.append(plate + r.uniform(-0.01, 0.01, 2), carry)
        release_gap = r.uniform(0.004, 0.01)

        def lower_goal(e):
            held = e.grip_position()[2] - e.cube_position()[2]  # where the cube sits in the fingers
            return np.append(over[:2], PLATE_TOP + CUBE_HALF + release_gap + held)

        plan += [
            Waypoint("over", lambda e: over, 1.0, self.free_speed, self._pause(), tol=0.015),
            Waypoint("lower", lower_goal, 1.0, self.fine_speed, tol=0.006),
            Waypoint("release", lambda e: self._p.copy(), 0.0, self.fine_speed, hold=int(r.integers(3, 6)),
                     tol=1.0),
            Waypoint("retreat", lambda e: self._p + [0, 0, 0.08], 0.0, self.fine_speed, hold=100),
        ]
        return plan

    def _plan_push(self, env) -> list[Waypoint]:
        r = self.rng
        goal_xy = env.layout.goal_xy
        u0 = goal_xy - env.cube_position()[:2]
        u0 /= np.linalg.norm(u0)
        # Closed fingers present a 4 cm wide face along the hand x axis: point it along the push.
        self._yaw_goal = self._yaw + _wrap(np.arctan2(u0[1], u0[0]) - self._yaw)
        back = CUBE_HALF + FINGER_DEPTH
        height = r.uniform(0.08, 0.12)
        push_speed = r.uniform(0.04, 0.08)

        def behind(e, gap):
            return np.append(e.cube_position()[:2] - u0 * (back + gap), PUSH_HEIGHT)

        # A straight push: with the finger face against a cube face the cube sticks to the fingers
        # and follows them. (Re-aiming at the cube mid-push drags it sideways instead.)
        push_end = np.append(goal_xy - u0 * (back - 0.005), PUSH_HEIGHT)

        def pushed(e):
            return np.linalg.norm(goal_xy - e.cube_position()[:2]) < 0.012

        gap = r.uniform(0.03, 0.05)
        return [
            Waypoint("approach", lambda e: behind(e, gap) + [0, 0, height], 1.0, self.free_speed,
                     self._pause(), track=True, tol=0.02),
            Waypoint("descend", lambda e: behind(e, gap), 1.0, self.fine_speed, self._pause(), track=True,
                     tol=0.008),
            Waypoint("push", lambda e: push_end, 1.0, push_speed, until=pushed),
            Waypoint("retreat", lambda e: self._p + [0, 0, 0.08], 1.0, self.fine_speed, hold=100),
        ]


def make_expert(task: str, rng: np.random.Generator) -> ScriptedExpert:
    """A scripted expert for one episode of `task`, its style drawn from `rng`."""
    return ScriptedExpert(task, rng)


class ExpertPolicy:
    """The scripted expert behind the policy interface (`reset`, `predict_action_chunk`), for evaluation
    baselines and tests. It reads privileged state, so it needs the env it acts in."""

    n_action_steps = 1

    def __init__(self, env, seed: int = 0):
        self.env = env
        self._rng = np.random.default_rng(seed)
        self._expert = None

    def reset(self) -> None:
        """Forget the episode: the next chunk starts a new expert (call after env.reset)."""
        self._expert = None

    def predict_action_chunk(self, obs) -> np.ndarray:
        """(1, 7) the expert's next action; `obs` is not needed."""
        if self._expert is None:
            self._expert = make_expert(self.env.task, self._rng)
        return self._expert.act(self.env)[None].astype(np.float32)
