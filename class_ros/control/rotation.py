"""Rotation conversions for end-effector actions: 6D rotation (two matrix columns), matrices, quaternions."""
from __future__ import annotations

import numpy as np


def rot6d_to_matrix(r6: np.ndarray) -> np.ndarray:
    """(6,) first two columns of a rotation matrix (any scale) -> (3, 3) via Gram-Schmidt."""
    a, b = np.asarray(r6[:3], dtype=np.float64), np.asarray(r6[3:6], dtype=np.float64)
    x = a / np.linalg.norm(a)
    b = b - x * np.dot(x, b)
    y = b / np.linalg.norm(b)
    return np.stack([x, y, np.cross(x, y)], axis=1)


def matrix_to_rot6d(m: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> (6,) its first two columns."""
    return np.concatenate([m[:, 0], m[:, 1]])


def rotation_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (rad) of the rotation taking a to b."""
    cos = (np.trace(a.T @ b) - 1.0) / 2.0
    return float(np.arccos(np.clip(cos, -1.0, 1.0)))


def _axis_angle_to_matrix(axis: np.ndarray, angle: float) -> np.ndarray:
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def slerp_matrix(a: np.ndarray, b: np.ndarray, frac: float) -> np.ndarray:
    """The rotation a fraction `frac` of the way from a to b along the shortest path."""
    rel = a.T @ b
    angle = rotation_angle(np.eye(3), rel)
    if angle < 1e-9:
        return b.copy()
    if np.pi - angle < 1e-6:
        # At 180 degrees the axis is the eigenvector of rel with eigenvalue 1.
        w, v = np.linalg.eigh((rel + rel.T) / 2)
        axis = v[:, np.argmax(w)]
    else:
        axis = np.array([rel[2, 1] - rel[1, 2], rel[0, 2] - rel[2, 0], rel[1, 0] - rel[0, 1]]) / (2 * np.sin(angle))
    return a @ _axis_angle_to_matrix(axis / np.linalg.norm(axis), frac * angle)


def matrix_to_quaternion(m: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> (4,) quaternion (x, y, z, w), w >= 0."""
    t = np.trace(m)
    if t > 0:
        s = np.sqrt(t + 1.0) * 2
        q = np.array([(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s])
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = np.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k]) * 2
        q = np.zeros(4)
        q[i] = 0.25 * s
        q[j] = (m[j, i] + m[i, j]) / s
        q[k] = (m[k, i] + m[i, k]) / s
        q[3] = (m[k, j] - m[j, k]) / s
    q /= np.linalg.norm(q)
    return q if q[3] >= 0 else -q


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """(4,) quaternion (x, y, z, w) -> (3, 3) rotation."""
    x, y, z, w = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])
