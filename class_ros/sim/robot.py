"""The built-in arm: joint names, limits and the gripper's units, shared by the sim, the ROS sim node
and safety-filter configs.

The arm has 6 revolute joints and a parallel gripper. The gripper is one value in target units:
0 = open .. 1 = closed (both as a command and as the observed opening). Limits mirror
`assets/arm.xml` (a test keeps the two in sync).
"""
from __future__ import annotations

import numpy as np

ARM_JOINTS = ("shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3")
JOINT_NAMES = ARM_JOINTS + ("gripper",)

# (7, 2) position limits: rad for the arm, target units for the gripper.
JOINT_LIMITS = np.array([
    [-2.8, 2.8],
    [-1.9, 1.9],
    [-2.6, 2.6],
    [-2.8, 2.8],
    [-1.8, 1.8],
    [-2.9, 2.9],
    [0.0, 1.0],
])
JOINT_LOWER = JOINT_LIMITS[:, 0].copy()
JOINT_UPPER = JOINT_LIMITS[:, 1].copy()

# (7,) velocity limits the joint servos enforce on their setpoints: rad/s, gripper units/s
# (a full close in 0.4 s), about what a small 6-DoF cobot allows.
VELOCITY_LIMITS = np.array([1.8, 1.8, 2.2, 3.0, 3.0, 3.5, 2.5])

# Fingers travel 0..FINGER_TRAVEL metres each; the mean travel is the gripper tendon length.
FINGER_TRAVEL = 0.04

# A comfortable start pose: grip point about 0.4 m in front of the base, 0.25 m above the table,
# pointing down.
HOME = np.array([0.0, 0.3, 1.3, 1.54, 0.0, 0.0, 0.0])


def gripper_to_opening(g):
    """Gripper target units (0 open .. 1 closed) -> mean finger travel in metres."""
    return FINGER_TRAVEL * (1.0 - np.clip(g, 0.0, 1.0))


def opening_to_gripper(opening):
    """Mean finger travel in metres -> gripper units (0 open .. 1 closed)."""
    return 1.0 - np.asarray(opening) / FINGER_TRAVEL
