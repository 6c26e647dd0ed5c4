"""Cameras in MG3's conventions (official `utils/cam_utils.py`, facts section 4).

* World: Unreal-style, left-handed: X forward, Y right, Z up.
* Camera: OpenCV (x right, y down, z forward).
* c2w rotation = Rz(yaw) Ry(pitch) Rx(roll) @ R_INIT with R_INIT mapping camera z -> world +X,
  camera x -> world +Y, camera y -> world -Z. det(R_INIT) = -1, so every c2w rotation is a
  reflection; relative poses (products of two reflections) are proper rigid transforms.
* translation = pose position * 0.01.
"""

from __future__ import annotations

import numpy as np

# rows: world axes; columns: camera axes (x right, y down, z forward)
R_INIT = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
TRANSLATION_SCALE = 0.01  # pose units (cm-like) -> extrinsic units


def euler_to_matrix(roll: np.ndarray, pitch: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Rz(yaw) @ Ry(pitch) @ Rx(roll), angles in degrees, batched -> [T,3,3] float64."""
    r, p, y = (np.deg2rad(np.asarray(a, dtype=np.float64)) for a in (roll, pitch, yaw))
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    one, zero = np.ones_like(r), np.zeros_like(r)
    Rx = np.stack([one, zero, zero, zero, cr, -sr, zero, sr, cr], -1).reshape(*r.shape, 3, 3)
    Ry = np.stack([cp, zero, sp, zero, one, zero, -sp, zero, cp], -1).reshape(*r.shape, 3, 3)
    Rz = np.stack([cy, -sy, zero, sy, cy, zero, zero, zero, one], -1).reshape(*r.shape, 3, 3)
    return Rz @ Ry @ Rx


def extrinsics_from_poses(poses: np.ndarray, translation_scale: float = TRANSLATION_SCALE) -> np.ndarray:
    """`get_extrinsics`: poses [T,5] (x, y, z, pitch, yaw) -> c2w [T,4,4] float64 (roll = 0)."""
    poses = np.asarray(poses)
    if poses.ndim != 2 or poses.shape[1] != 5:
        raise ValueError(f"poses must be [T, 5] (x, y, z, pitch, yaw), got {list(poses.shape)}")
    T = poses.shape[0]
    pitch = poses[:, 3].astype(np.float64)
    yaw = poses[:, 4].astype(np.float64)
    c2w = np.zeros((T, 4, 4), dtype=np.float64)
    c2w[:, :3, :3] = euler_to_matrix(np.zeros(T), pitch, yaw) @ R_INIT
    c2w[:, :3, 3] = poses[:, :3].astype(np.float64) * translation_scale
    c2w[:, 3, 3] = 1.0
    return c2w


def intrinsics_90fov(height: int, width: int) -> np.ndarray:
    """`get_intrinsics(H, W)`: 90 deg FOV on *both* axes -> [fx, fy, cx, cy] float64 (non-square focals)."""
    return np.array([width / 2.0, height / 2.0, width / 2.0, height / 2.0], dtype=np.float64)
