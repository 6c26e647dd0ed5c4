"""Keyboard/mouse action vocabulary and MG3's action -> pose kinematics.

Source: official `utils/cam_utils.py::compute_next_pose_from_action` (facts section 4.1).

Units (the documented action units users ask for):
* keyboard: 6 multi-hot floats [W, S, A, D, Space, Attack]; MG3 only ever sets W/S/A/D.
* mouse: 2 floats [pitch, yaw] deltas; |m| < 0.02 is a dead zone; each unit is 15 degrees per frame
  (so the usual +-0.1 turns 1.5 deg/frame). Positive pitch tilts the view down (world -Z),
  positive yaw turns right (world +Y).
* pose: (x, y, z, pitch, yaw), position in "Unreal-like" units (cm-scale): one W frame moves 12.35,
  a diagonal moves 8.73 per axis. Extrinsics scale positions by 0.01 (metres).

NOTE float semantics matter for exact conformance (golden `camera_vectors`): angles are float32
(delta = f32(15*m), wrap in f32, average yaw in f32), the dead-zone test is in float32, positions are
float64 from the float32-stored previous row, and each row is stored as float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KEYS = ("W", "S", "A", "D", "Space", "Attack")
KEY_INDEX = {k: i for i, k in enumerate(KEYS)}
MOUSE_AXES = ("pitch", "yaw")

# "Null" action used for memory latents and the CFG unconditional branch (facts 3.1).
NULL_KEYBOARD = -1.0
NULL_MOUSE = 1.0


@dataclass(frozen=True)
class Kinematics:
    move_speed: float = 12.35  # units per frame for a single key (official literal)
    # per-axis speed when a forward/back and a strafe key are both held (~12.35/sqrt 2)
    diagonal_speed: float = 8.73
    degrees_per_mouse_unit: float = 15.0  # mouse 0.1 -> 1.5 deg per frame
    mouse_deadzone: float = 0.02  # |m| below this is ignored (compared in float32)
    translation_scale: float = 0.01  # pose units -> extrinsic translation units


MG3_KINEMATICS = Kinematics()


def _wrap180_f32(a: np.float32) -> np.float32:
    while a > np.float32(180.0):
        a = np.float32(a - np.float32(360.0))
    while a < np.float32(-180.0):
        a = np.float32(a + np.float32(360.0))
    return a


def move_components(keyboard: np.ndarray, kin: Kinematics = MG3_KINEMATICS) -> tuple[float, float]:
    """(forward, right) speed in pose units for one keyboard row [6]."""
    w, s, a, d = (float(keyboard[i]) for i in range(4))
    forward = kin.move_speed if (w > 0.5 and s < 0.5) else (-kin.move_speed if (s > 0.5 and w < 0.5) else 0.0)
    right = kin.move_speed if (d > 0.5 and a < 0.5) else (-kin.move_speed if (a > 0.5 and d < 0.5) else 0.0)
    if forward != 0.0 and right != 0.0:
        forward = float(np.sign(forward)) * kin.diagonal_speed
        right = float(np.sign(right)) * kin.diagonal_speed
    return forward, right


def next_pose(pose: np.ndarray, keyboard: np.ndarray, mouse: np.ndarray,
              kin: Kinematics = MG3_KINEMATICS) -> np.ndarray:
    """One kinematic step. pose [5] (x, y, z, pitch, yaw) -> next pose [5] float64 (unrounded)."""
    m = np.asarray(mouse, dtype=np.float32)
    dz = np.float32(kin.mouse_deadzone)
    deg = np.float32(kin.degrees_per_mouse_unit)
    d_pitch = np.float32(deg * m[0]) if abs(m[0]) >= dz else np.float32(0.0)
    d_yaw = np.float32(deg * m[1]) if abs(m[1]) >= dz else np.float32(0.0)
    pitch = np.float32(pose[3])
    yaw = np.float32(pose[4])
    new_pitch = np.float32(pitch + d_pitch)  # NOTE never clamped (official)
    new_yaw = _wrap180_f32(np.float32(yaw + d_yaw))
    # NOTE at a wrap the "average" of e.g. 180 and -178.5 is 0.75 deg: the official step goes
    # backwards for one frame. Reproduced as-is.
    avg = np.deg2rad(np.float64(np.float32((yaw + new_yaw) / np.float32(2.0))))
    forward, right = move_components(keyboard, kin)
    dx = np.cos(avg) * forward - np.sin(avg) * right
    dy = np.sin(avg) * forward + np.cos(avg) * right
    x, y, z = (np.float64(np.float32(v)) for v in pose[:3])
    return np.array([x + dx, y + dy, z, np.float64(new_pitch), np.float64(new_yaw)], dtype=np.float64)


def poses_from_actions(keyboard: np.ndarray, mouse: np.ndarray, first_pose: np.ndarray | None = None,
                       kin: Kinematics = MG3_KINEMATICS) -> tuple[np.ndarray, np.ndarray]:
    """`compute_all_poses_from_actions`: keyboard [T,6], mouse [T,2] -> (poses [T,5] f32, last_pose [5] f64).

    pose[0] = first_pose (zeros by default); pose[i+1] = next_pose(pose[i], kb[i], mouse[i]).
    last_pose = next_pose(pose[T-1], kb[T-1], mouse[T-1]) (the next clip's first pose).
    """
    keyboard = np.asarray(keyboard, dtype=np.float32)
    mouse = np.asarray(mouse, dtype=np.float32)
    if keyboard.ndim != 2 or keyboard.shape[1] != 6:
        raise ValueError(f"keyboard must be [T, 6], got {list(keyboard.shape)}")
    if mouse.shape != (keyboard.shape[0], 2):
        raise ValueError(f"mouse must be [T, 2] with T={keyboard.shape[0]}, got {list(mouse.shape)}")
    T = keyboard.shape[0]
    poses = np.zeros((T, 5), dtype=np.float32)
    if first_pose is not None:
        poses[0] = np.asarray(first_pose, dtype=np.float32)
    for i in range(T - 1):
        poses[i + 1] = next_pose(poses[i], keyboard[i], mouse[i], kin).astype(np.float32)
    last = next_pose(poses[T - 1], keyboard[T - 1], mouse[T - 1], kin) if T else np.zeros(5)
    return poses, last
