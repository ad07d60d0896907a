"""The three tasks: how each episode's objects are laid out, the success predicate and the time limit.

- `lift`: a vividly coloured cube at a random position and yaw; success when its centre is above `LIFT_HEIGHT`.
- `push`: a cube and a square target region 0.12-0.18 m away in a random direction; success when the
  cube's centre is inside the square and the cube is on the table.
- `pick_place`: a cube and a plate at least 0.15 m apart; success when the cube rests on the plate
  and the gripper has let go of it.
Cube and goal colours are drawn per episode. Positions are metres in the world frame (table top z = 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from class_ros.errors import ClassRosError

TASKS = ("lift", "push", "pick_place")
TIME_LIMIT_S = {"lift": 10.0, "push": 15.0, "pick_place": 20.0}

CUBE_HALF = 0.02  # cube half size (m)
LIFT_HEIGHT = 0.10  # lift: cube centre above this (m) is success
TARGET_HALF = 0.045  # push: half size of the square target region (m)
PLATE_RADIUS = 0.07
PLATE_TOP = 0.012
RELEASED_BELOW = 0.5  # pick_place: gripper opening (0 open .. 1 closed) below this = let go
# lift: cube position range (m); narrower than the other tasks' so that 40 demonstrations cover it densely
# enough for nearest-neighbour control (a retrieved chunk grasps where its demonstration's cube was).
LIFT_X = (0.30, 0.44)
LIFT_Y = 0.12  # |y| bound


def check_task(task: str) -> str:
    """Return `task` or raise a ClassRosError naming the valid tasks."""
    if task not in TASKS:
        raise ClassRosError(f"unknown task {task!r}; use one of {', '.join(TASKS)}.")
    return task


@dataclass
class Layout:
    """One episode's objects: cube pose and colour, goal (target square or plate) position and colour."""

    cube_xy: np.ndarray  # (2,)
    cube_yaw: float
    cube_rgba: np.ndarray  # (4,)
    goal_xy: np.ndarray | None  # (2,), None for lift
    goal_rgba: np.ndarray | None  # (4,)


def _colour(rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    return np.append(rng.uniform(lo, hi, 3), 1.0)


def _vivid_colour(rng: np.random.Generator) -> np.ndarray:
    """A fully saturated, bright colour of random hue: at 96x96 the cube is a few pixels, and a dark or
    greyish one vanished into the brown table, so a 96x96 encoder could not localise it."""
    rgb = np.clip(np.abs((rng.uniform(0, 6) + np.array([0.0, 4.0, 2.0])) % 6 - 3) - 1, 0, 1)  # HSV(h, 1, 1)
    return np.append(rgb, 1.0)


def sample_layout(task: str, rng: np.random.Generator) -> Layout:
    """Draw one episode's object layout for `task`."""
    check_task(task)
    cube_yaw = float(rng.uniform(-np.pi / 4, np.pi / 4))
    cube_rgba = _colour(rng, 0.05, 0.95)
    if task == "lift":
        cube = np.array([rng.uniform(LIFT_X[0], LIFT_X[1]), rng.uniform(-LIFT_Y, LIFT_Y)])
        return Layout(cube, cube_yaw, _vivid_colour(rng), None, None)
    if task == "push":
        while True:  # rejection sampling keeps the goal inside the reachable workspace
            cube = np.array([rng.uniform(0.32, 0.45), rng.uniform(-0.12, 0.12)])
            angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.12, 0.18)
            goal = cube + dist * np.array([np.cos(angle), np.sin(angle)])
            if 0.28 <= goal[0] <= 0.5 and abs(goal[1]) <= 0.2:
                break
        green = np.array([rng.uniform(0.1, 0.35), rng.uniform(0.55, 0.85), rng.uniform(0.1, 0.4), 1.0])
        return Layout(cube, cube_yaw, cube_rgba, goal, green)
    while True:  # pick_place
        cube = np.array([rng.uniform(0.28, 0.48), rng.uniform(-0.18, 0.18)])
        plate = np.array([rng.uniform(0.3, 0.48), rng.uniform(-0.2, 0.2)])
        if np.linalg.norm(plate - cube) >= 0.15:
            break
    return Layout(cube, cube_yaw, cube_rgba, plate, _colour(rng, 0.6, 0.95))


def is_success(task: str, cube_pos: np.ndarray, goal_xy: np.ndarray | None, gripper: float) -> bool:
    """The task's success predicate from the cube centre (3,), goal (2,) and gripper opening (0..1)."""
    if task == "lift":
        return bool(cube_pos[2] > LIFT_HEIGHT)
    if task == "push":
        inside = np.all(np.abs(cube_pos[:2] - goal_xy) < TARGET_HALF)
        return bool(inside and cube_pos[2] < CUBE_HALF + 0.01)
    on_plate = np.linalg.norm(cube_pos[:2] - goal_xy) < PLATE_RADIUS - 0.01
    resting = abs(cube_pos[2] - (PLATE_TOP + CUBE_HALF)) < 0.008
    return bool(on_plate and resting and gripper < RELEASED_BELOW)
