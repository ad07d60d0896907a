"""Arm kinematics from the MuJoCo model: forward kinematics of the grip point and damped-least-squares IK.

Works on its own `MjData`, so solving never disturbs the simulation it is asked about.
"""
from __future__ import annotations

import numpy as np

from class_ros.sim.robot import ARM_JOINTS, JOINT_LOWER, JOINT_UPPER


def top_down_rotation(yaw: float) -> np.ndarray:
    """(3, 3) grip-frame rotation pointing the gripper straight down, its x axis at `yaw` (rad)."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, -1.0]])


def rotation_error(rot: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(3,) world-frame rotation vector (small-angle) that turns `rot` towards `target`."""
    return 0.5 * sum(np.cross(rot[:, i], target[:, i]) for i in range(3))


class ArmKinematics:
    """Forward kinematics and IK of the `grip` site over the 6 arm joints."""

    def __init__(self, model):
        import mujoco

        self._mj = mujoco
        self.model = model
        self.data = mujoco.MjData(model)
        self.site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "grip")
        joints = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, n) for n in ARM_JOINTS]
        self.qadr = np.array([model.jnt_qposadr[j] for j in joints])
        self.dadr = np.array([model.jnt_dofadr[j] for j in joints])
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def forward(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grip point position (3,) and rotation (3, 3) for arm joints q (6,)."""
        self.data.qpos[self.qadr] = q
        self._mj.mj_kinematics(self.model, self.data)
        return self.data.site_xpos[self.site].copy(), self.data.site_xmat[self.site].reshape(3, 3).copy()

    def solve(self, q0: np.ndarray, pos: np.ndarray, rot: np.ndarray, iters: int = 30,
              damping: float = 0.03, tol: float = 1e-4) -> np.ndarray:
        """Arm joints (6,) that put the grip point at pos (3,) with rotation rot (3, 3), from q0 (6,)."""
        q = np.clip(np.asarray(q0, dtype=float).copy(), JOINT_LOWER[:6], JOINT_UPPER[:6])
        for _ in range(iters):
            cur_pos, cur_rot = self.forward(q)
            err = np.concatenate([pos - cur_pos, rotation_error(cur_rot, rot)])
            if np.linalg.norm(err) < tol:
                break
            self._mj.mj_comPos(self.model, self.data)
            self._mj.mj_jacSite(self.model, self.data, self._jacp, self._jacr, self.site)
            jac = np.vstack([self._jacp[:, self.dadr], self._jacr[:, self.dadr]])  # (6, 6)
            # Damped least squares stays well-behaved near singularities and unreachable targets.
            dq = jac.T @ np.linalg.solve(jac @ jac.T + damping**2 * np.eye(6), err)
            scale = max(1.0, np.abs(dq).max() / 0.3)  # no big jumps in one iteration
            q = np.clip(q + dq / scale, JOINT_LOWER[:6], JOINT_UPPER[:6])
        return q
