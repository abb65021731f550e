"""Rigid transforms in our convention: right-handed, x forward, y left, z up, yaw CCW from +x.

A pose is a 4x4 float64 matrix ``world_from_sensor``: it maps points written in the sensor
frame into the world frame. Everything that crosses a module boundary uses this form.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "NotRigidError",
    "check_rigid",
    "compose",
    "inverse",
    "is_rigid",
    "pose_from_xyz_rpy",
    "pose_from_xyz_yaw",
    "relative_pose",
    "rotation_z",
    "transform_points",
    "xyz_rpy_from_pose",
    "yaw_of",
]


class NotRigidError(ValueError):
    """A matrix that should be a rigid transform is not (NaN, scale, shear, bad last row)."""


def rotation_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def pose_from_xyz_rpy(x: float, y: float, z: float, roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Pose from translation and intrinsic z-y-x Euler angles (radians): R = Rz(yaw) Ry(pitch) Rx(roll)."""
    cr, sr = np.cos(roll), np.sin(roll)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cy, sy = np.cos(yaw), np.sin(yaw)
    T = np.eye(4)
    T[:3, :3] = [
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ]
    T[:3, 3] = (x, y, z)
    return T


def pose_from_xyz_yaw(x: float, y: float, z: float, yaw: float) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = rotation_z(yaw)
    T[:3, 3] = (x, y, z)
    return T


def xyz_rpy_from_pose(T: np.ndarray) -> tuple[float, float, float, float, float, float]:
    """Inverse of :func:`pose_from_xyz_rpy` (x, y, z, roll, pitch, yaw)."""
    R = T[:3, :3]
    pitch = float(np.arcsin(np.clip(-R[2, 0], -1.0, 1.0)))
    roll = float(np.arctan2(R[2, 1], R[2, 2]))
    yaw = float(np.arctan2(R[1, 0], R[0, 0]))
    return float(T[0, 3]), float(T[1, 3]), float(T[2, 3]), roll, pitch, yaw


def yaw_of(T: np.ndarray) -> float:
    """Heading of the sensor's +x axis projected onto the world's xy plane."""
    return float(np.arctan2(T[1, 0], T[0, 0]))


def is_rigid(T: np.ndarray, tol: float = 1e-4) -> bool:
    T = np.asarray(T)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        return False
    R = T[:3, :3]
    return (
        np.allclose(R @ R.T, np.eye(3), atol=tol)
        and abs(np.linalg.det(R) - 1.0) < tol
        and np.allclose(T[3], (0.0, 0.0, 0.0, 1.0), atol=tol)
    )


def check_rigid(T: np.ndarray, what: str = "pose", tol: float = 1e-4) -> np.ndarray:
    """Return ``T`` as float64, or raise :class:`NotRigidError` naming ``what``."""
    T = np.asarray(T, dtype=np.float64)
    if not is_rigid(T, tol):
        raise NotRigidError(f"{what} is not a rigid 4x4 transform: {np.array2string(T, precision=4)}")
    return T


def inverse(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid transform without a general matrix inverse."""
    R = T[:3, :3]
    out = np.eye(4)
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ T[:3, 3]
    return out


def compose(*Ts: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    for T in Ts:
        out = out @ T
    return out


def relative_pose(world_from_a: np.ndarray, world_from_b: np.ndarray) -> np.ndarray:
    """``a_from_b``: maps points in frame b into frame a."""
    return inverse(world_from_a) @ world_from_b


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply ``T`` to the xyz columns of ``points`` (N x >=3); extra columns are carried unchanged."""
    points = np.asarray(points)
    if points.shape[0] == 0:
        return points.copy()
    xyz = points[:, :3].astype(np.float64) @ T[:3, :3].T + T[:3, 3]
    out = points.copy()
    out[:, :3] = xyz.astype(points.dtype, copy=False)
    return out
