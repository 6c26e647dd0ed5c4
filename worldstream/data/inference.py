"""Pose -> action inference: MG3 keyboard [T,6] and mouse [T,2] from a camera trajectory.

MG3's data engine labels footage it did not render (its "AAA game" path) by inverting the action ->
pose kinematics (facts section 4.1, `worldstream.data.actions`). Notable:

* Alignment: pose[i+1] = next_pose(pose[i], action[i]), so T poses observe T-1 actions. The last
  action is unobservable; we repeat the last observed one (agents hold actions for blocks of frames)
  and mark it `observed=False` with confidence 0. Accuracy is measured on observed frames only.
* Keyboard: the position step is projected on the yaw frame (forward = (cos a, sin a), right =
  (-sin a, cos a), a = the step's average yaw) and classified by its direction into one of 8 sectors
  of 45 degrees (W, W+D, D, S+D, S, S+A, A, W+A), so diagonals (8.73 per axis) are detected; steps
  shorter than `min_move_frac * move_speed` press nothing. Pitch never moves the camera (MG3).
* Average yaw: MG3 averages the *wrapped* old and new yaw, so the step that crosses +-180 moves
  ~backwards (`actions.next_pose` NOTE). `yaw_average="mg3"` reproduces that (exact on MG3 data),
  `"circular"` uses the true mid-angle (right for real footage; ingestion uses it).
* Mouse: mouse = (d_pitch, d_yaw) / 15 degrees, the yaw delta wrapped into [-180, 180); values below
  MG3's 0.02 dead zone become 0; optionally quantised to MG3's usual levels {-0.1, 0, +0.1}.
* From c2w (MG3 convention, c2w_R = Rz(yaw) Ry(pitch) Rx(roll) R_INIT, a reflection): with
  M = c2w_R R_INIT^T (a proper rotation, R_INIT orthogonal): pitch = atan2(-M20, hypot(M00, M10)),
  yaw = atan2(M10, M00), roll = atan2(M21, M22). MG3 never rolls; |roll| > 90 means the pitch went past
  +-90 (MG3 never clamps pitch) and the equivalent angles (yaw+180, 180-pitch, roll-180) are used.
  Position = translation / 0.01.
* Confidence per step: exp(-0.5 (e_pos/sigma_pos)^2 - 0.5 (e_rot/sigma_rot)^2), e_pos = distance between
  the observed step (incl. vertical motion) and the step the inferred keys would make, in units of
  move_speed; e_rot = degrees between the observed rotation and the inferred mouse's (incl. roll).
  1 = exactly a clean MG3 action.
* Arbitrary-scale footage: `estimate_speed_scale` maps the median horizontal step of the moving frames
  to the MG3 step (12.35 units), see docs/ingest.md.

`python -m worldstream.data.inference` measures accuracy on MG3-kinematics trajectories.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

import numpy as np

from worldstream.data.actions import (
    KEY_INDEX,
    KEYS,
    MG3_KINEMATICS,
    MOUSE_AXES,
    move_components,
    poses_from_actions,
)
from worldstream.geometry.camera import R_INIT, TRANSLATION_SCALE, extrinsics_from_poses

# sector k (direction angle atan2(right, forward) ~ 45k degrees) -> keys held: 4 keys + 4 diagonals
_SECTOR_KEYS: tuple[tuple[str, ...], ...] = (
    ("W",), ("W", "D"), ("D",), ("S", "D"), ("S",), ("S", "A"), ("A",), ("W", "A"),
)
SECTOR_DEG = 360.0 / len(_SECTOR_KEYS)


@dataclass(frozen=True)
class InferenceConfig:
    move_speed: float = MG3_KINEMATICS.move_speed  # pose units per frame of one key (MG3 literal 12.35)
    # a step shorter than this fraction of move_speed presses no key; MG3 steps are 0 or ~1.0 of it
    min_move_frac: float = 0.35
    yaw_average: Literal["mg3", "circular"] = "mg3"  # see module docstring
    degrees_per_mouse_unit: float = MG3_KINEMATICS.degrees_per_mouse_unit  # 15 deg per mouse unit
    mouse_deadzone: float = MG3_KINEMATICS.mouse_deadzone  # |m| < 0.02 does not rotate in MG3
    quantize_mouse: bool = False
    mouse_levels: tuple[float, ...] = (-0.1, 0.0, 0.1)  # MG3's usual mouse values (facts 3.1, 5.6)
    translation_scale: float = TRANSLATION_SCALE  # c2w translation = position * 0.01
    # confidence: position residual scale, fraction of move_speed; a step 22.5 deg between two key
    # directions (residual 0.39) scores ~0.54, a 30% speed error ~0.69
    sigma_pos: float = 0.35
    sigma_rot_deg: float = 0.75  # confidence: rotation residual scale, half of a 1.5-degree mouse step
    last_action: Literal["repeat", "zero"] = "repeat"  # the unobservable last action


@dataclass
class InferredActions:
    keyboard: np.ndarray  # [T,6] float32
    mouse: np.ndarray  # [T,2] float32 (pitch, yaw)
    confidence: np.ndarray  # [T] float32 in [0,1]; 0 for the unobserved last action
    observed: np.ndarray  # [T] bool; False for the last action
    poses: np.ndarray  # [T,5] float64 (x, y, z, pitch, yaw) the actions were inferred from
    roll: np.ndarray  # [T] float64 degrees (0 for MG3 cameras)

    @property
    def mean_confidence(self) -> float:
        return float(self.confidence[self.observed].mean()) if self.observed.any() else 0.0


# ------------------------------------------------------------------------------------------------
# angles and poses


def wrap180(a: np.ndarray) -> np.ndarray:
    """Wrap degrees into [-180, 180)."""
    return (np.asarray(a, dtype=np.float64) + 180.0) % 360.0 - 180.0


def angles_from_c2w(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MG3 c2w [T,4,4] or [T,3,4] -> (pitch, yaw, roll) in degrees, each [T] float64.

    Inverts c2w_R = Rz(yaw) Ry(pitch) Rx(roll) R_INIT. Pitch is continuous past +-90 (MG3 never clamps it).
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] not in ((4, 4), (3, 4)):
        raise ValueError(f"c2w must be [T,4,4] or [T,3,4], got {list(c2w.shape)}")
    det = np.linalg.det(c2w[:, :3, :3])
    if (det > 0).any():
        i = int(np.argmax(det > 0))
        raise ValueError(f"c2w[{i}] has det {det[i]:+.3f}: MG3 c2w rotations are reflections (det -1); "
                         "convert right-handed (OpenCV/OpenGL) poses with worldstream.data.ingest first")
    M = c2w[:, :3, :3] @ R_INIT.T  # [T,3,3] = Rz Ry Rx
    pitch = np.rad2deg(np.arctan2(-M[:, 2, 0], np.hypot(M[:, 0, 0], M[:, 1, 0])))
    yaw = np.rad2deg(np.arctan2(M[:, 1, 0], M[:, 0, 0]))
    roll = np.rad2deg(np.arctan2(M[:, 2, 1], M[:, 2, 2]))
    flip = np.abs(roll) > 90.0  # the same rotation as (yaw+180, 180-pitch, roll-180)
    yaw = np.where(flip, wrap180(yaw + 180.0), yaw)
    pitch = np.where(flip, 180.0 - pitch, pitch)
    roll = np.where(flip, wrap180(roll + 180.0), roll)
    pitch = np.rad2deg(np.unwrap(np.deg2rad(pitch)))  # continuous over time
    return pitch, yaw, roll


def poses_from_c2w(c2w: np.ndarray,
                   translation_scale: float = TRANSLATION_SCALE) -> tuple[np.ndarray, np.ndarray]:
    """MG3 c2w [T,4,4] -> (poses [T,5] float64 (x, y, z, pitch, yaw), roll [T] degrees)."""
    pitch, yaw, roll = angles_from_c2w(c2w)
    pos = np.asarray(c2w, dtype=np.float64)[:, :3, 3] / translation_scale
    return np.concatenate([pos, pitch[:, None], yaw[:, None]], axis=1), roll


def estimate_speed_scale(positions: np.ndarray, target_step: float = MG3_KINEMATICS.move_speed,
                         moving_frac: float = 0.25) -> float:
    """Scale that maps the typical horizontal step of a trajectory to `target_step`.

    positions [T,3] in a Z-up world. Moving frames: steps above `moving_frac` x the 90th percentile of the
    non-zero steps (ignores stops and jitter); scale = target_step / median(moving steps). Returns 1.0 for
    a static trajectory.
    """
    positions = np.asarray(positions, dtype=np.float64)
    steps = np.linalg.norm(np.diff(positions[:, :2], axis=0), axis=1)  # [T-1]
    if not np.isfinite(steps).all():
        return 1.0
    steps = steps[steps > 0.0]
    if steps.size == 0:
        return 1.0
    ref = np.percentile(steps, 90)
    return target_step / float(np.median(steps[steps > moving_frac * ref]))


# ------------------------------------------------------------------------------------------------
# inference


def _as_poses(traj: np.ndarray, cfg: InferenceConfig) -> tuple[np.ndarray, np.ndarray]:
    """[T,5] poses or [T,4,4]/[T,3,4] c2w -> (poses [T,5] float64, roll [T] degrees)."""
    traj = np.asarray(traj)
    if traj.ndim == 2 and traj.shape[1] == 5:
        return traj.astype(np.float64), np.zeros(traj.shape[0])
    if traj.ndim == 3 and traj.shape[1:] in ((4, 4), (3, 4)):
        return poses_from_c2w(traj, cfg.translation_scale)
    raise ValueError(f"trajectory must be poses [T,5] or c2w [T,4,4]/[T,3,4], got {list(traj.shape)}")


def _quantize(m: np.ndarray, levels: tuple[float, ...]) -> np.ndarray:
    lv = np.asarray(levels, dtype=np.float64)
    return lv[np.argmin(np.abs(m[..., None] - lv), axis=-1)]


def infer_actions(traj: np.ndarray, cfg: InferenceConfig = InferenceConfig()) -> InferredActions:
    """Infer MG3 actions from poses [T,5] (x, y, z, pitch, yaw) or MG3 c2w [T,4,4]."""
    # 1. Poses and per-step deltas (step i: pose i -> pose i+1 is the result of action i)
    poses, roll = _as_poses(traj, cfg)
    T = poses.shape[0]
    if T < 2:
        raise ValueError(f"action inference needs at least 2 poses, got {T}")
    if not np.isfinite(poses).all():
        bad = int(np.argwhere(~np.isfinite(poses).all(1))[0, 0])
        raise ValueError(f"trajectory has NaN/inf at frame {bad}")
    d_pos = np.diff(poses[:, :3], axis=0)  # [T-1,3]
    d_pitch = wrap180(np.diff(poses[:, 3]))  # [T-1]
    d_yaw = wrap180(np.diff(poses[:, 4]))
    d_roll = wrap180(np.diff(roll))

    # 2. Mouse from angle deltas (dead zone, optional quantisation)
    mouse = np.stack([d_pitch, d_yaw], axis=1) / cfg.degrees_per_mouse_unit  # [T-1,2]
    mouse = np.where(np.abs(mouse) < cfg.mouse_deadzone, 0.0, mouse)
    if cfg.quantize_mouse:
        mouse = _quantize(mouse, cfg.mouse_levels)

    # 3. Position step in the yaw frame of the step
    if cfg.yaw_average == "mg3":
        avg = (poses[:-1, 4] + poses[1:, 4]) / 2.0  # NOTE average of wrapped angles, as MG3 does
    else:
        avg = poses[:-1, 4] + d_yaw / 2.0  # the true mid-angle
    a = np.deg2rad(avg)
    fwd = np.cos(a) * d_pos[:, 0] + np.sin(a) * d_pos[:, 1]  # [T-1]
    right = -np.sin(a) * d_pos[:, 0] + np.cos(a) * d_pos[:, 1]

    # 4. Keyboard: direction sector, dead zone relative to the move speed
    keyboard = np.zeros((T, 6), dtype=np.float32)
    moving = np.hypot(fwd, right) >= cfg.min_move_frac * cfg.move_speed
    sector = np.round(np.rad2deg(np.arctan2(right, fwd)) / SECTOR_DEG).astype(int) % len(_SECTOR_KEYS)
    for k, keys in enumerate(_SECTOR_KEYS):
        rows = np.nonzero(moving & (sector == k))[0]
        for key in keys:
            keyboard[rows, KEY_INDEX[key]] = 1.0

    # 5. Confidence: residual between the observed step and the one the inferred action makes
    scale = cfg.move_speed / MG3_KINEMATICS.move_speed
    ideal = np.array([move_components(kb) for kb in keyboard[:-1]], dtype=np.float64) * scale  # [T-1,2]
    e_pos = np.sqrt((fwd - ideal[:, 0]) ** 2 + (right - ideal[:, 1]) ** 2 + d_pos[:, 2] ** 2) / cfg.move_speed
    rot_used = mouse * cfg.degrees_per_mouse_unit
    e_rot = np.sqrt((d_pitch - rot_used[:, 0]) ** 2 + (d_yaw - rot_used[:, 1]) ** 2 + d_roll ** 2)
    conf = np.exp(-0.5 * (e_pos / cfg.sigma_pos) ** 2 - 0.5 * (e_rot / cfg.sigma_rot_deg) ** 2)

    # 6. The last action is unobservable
    mouse_full = np.zeros((T, 2), dtype=np.float32)
    mouse_full[:-1] = mouse
    if cfg.last_action == "repeat":
        keyboard[-1] = keyboard[-2]
        mouse_full[-1] = mouse_full[-2]
    confidence = np.zeros(T, dtype=np.float32)
    confidence[:-1] = conf
    observed = np.ones(T, dtype=bool)
    observed[-1] = False
    return InferredActions(keyboard, mouse_full, confidence, observed, poses, roll)


# ------------------------------------------------------------------------------------------------
# accuracy


def _mouse_direction(m: np.ndarray, deadzone: float) -> np.ndarray:
    return np.where(m >= deadzone, 1, np.where(m <= -deadzone, -1, 0))


def action_accuracy(true_kb: np.ndarray, true_mouse: np.ndarray, pred_kb: np.ndarray, pred_mouse: np.ndarray,
                    mask: np.ndarray | None = None,
                    mouse_deadzone: float = MG3_KINEMATICS.mouse_deadzone) -> dict[str, float]:
    """Per-frame accuracy of predicted actions. kb [T,6], mouse [T,2]; mask [T] bool selects frames.

    Keys: `key_<K>` (pressed == pressed, per key), `keyboard_exact` (all 6 keys), `mouse_<axis>` (direction
    class -/0/+ with the dead zone), `mouse_<axis>_<pos|neg>` (binary accuracy of that direction),
    `mouse_<axis>_mae`, `action_exact` (all keys and both mouse directions), `n_frames`.
    """
    true_kb, pred_kb = np.asarray(true_kb), np.asarray(pred_kb)
    true_mouse, pred_mouse = np.asarray(true_mouse), np.asarray(pred_mouse)
    T = true_kb.shape[0]
    for name, arr, shape in (("true_kb", true_kb, (T, 6)), ("pred_kb", pred_kb, (T, 6)),
                             ("true_mouse", true_mouse, (T, 2)), ("pred_mouse", pred_mouse, (T, 2))):
        if arr.shape != shape:
            raise ValueError(f"{name} has shape {list(arr.shape)}, expected {list(shape)}")
    sel = np.ones(T, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if sel.shape != (T,):
        raise ValueError(f"mask has shape {list(sel.shape)}, expected [{T}]")
    tk, pk = true_kb[sel] > 0.5, pred_kb[sel] > 0.5
    td = _mouse_direction(true_mouse[sel], mouse_deadzone)
    pd = _mouse_direction(pred_mouse[sel], mouse_deadzone)
    out: dict[str, float] = {"n_frames": float(sel.sum())}
    for k, key in enumerate(KEYS):
        out[f"key_{key}"] = float((tk[:, k] == pk[:, k]).mean())
    out["keyboard_exact"] = float((tk == pk).all(1).mean())
    for j, axis in enumerate(MOUSE_AXES):
        out[f"mouse_{axis}"] = float((td[:, j] == pd[:, j]).mean())
        for sign, label in ((1, "pos"), (-1, "neg")):
            out[f"mouse_{axis}_{label}"] = float(((td[:, j] == sign) == (pd[:, j] == sign)).mean())
        out[f"mouse_{axis}_mae"] = float(np.abs(true_mouse[sel, j] - pred_mouse[sel, j]).mean())
    out["action_exact"] = float(((tk == pk).all(1) & (td == pd).all(1)).mean())
    return out


# ------------------------------------------------------------------------------------------------
# MG3-kinematics test trajectories (exploration + revisits) and the accuracy measurement


@dataclass(frozen=True)
class ScriptConfig:
    block_min: int = 4  # frames a random action is held (MG3's templates are 4-frame rows, 12-frame blocks)
    block_max: int = 40
    turn: float = 0.1  # MG3's usual mouse magnitude (1.5 deg/frame)
    spin_frames: int = 240  # 360 degrees at 1.5 deg/frame: crosses the yaw wrap
    pitch_limit_deg: float = 60.0  # looks up/down stay within this
    extra_mouse: tuple[float, ...] = (0.05, 0.2, -0.3)  # off-grid mouse values (only when rich=True)


_MOVES = ("", "W", "S", "A", "D", "WA", "WD", "SA", "SD")


def exploration_revisit_actions(seed: int, T: int, rich: bool = False,
                                cfg: ScriptConfig = ScriptConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Random MG3 action script -> (keyboard [T,6], mouse [T,2]) float32.

    Segments: held moves incl. diagonals/strafes/back, moves while turning, spins (a full turn, crossing the
    yaw wrap), out-and-back (walk, turn 180, walk back), loops (walk while turning), looks up/down and back,
    idle. rich=True also uses off-grid mouse values (for non-quantised inference).
    """
    rng = np.random.default_rng(seed)
    kb_rows: list[np.ndarray] = []
    mouse_rows: list[np.ndarray] = []
    pitch = 0.0

    def emit(moves: str, mouse: tuple[float, float], n: int) -> None:
        row = np.zeros(6, dtype=np.float32)
        for key in moves:
            row[KEY_INDEX[key]] = 1.0
        kb_rows.extend([row] * n)
        mouse_rows.extend([np.asarray(mouse, dtype=np.float32)] * n)

    half_turn = cfg.spin_frames // 2
    deg_per_frame = cfg.turn * MG3_KINEMATICS.degrees_per_mouse_unit
    while len(kb_rows) < T:
        kind = rng.choice(["move", "move_turn", "spin", "out_back", "loop", "look", "idle"],
                          p=[0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1])
        n = int(rng.integers(cfg.block_min, cfg.block_max + 1))
        side = float(rng.choice([-1.0, 1.0]))
        if kind == "move":
            emit(str(rng.choice(_MOVES[1:])), (0.0, 0.0), n)
        elif kind == "move_turn":
            yaw_m = float(rng.choice(cfg.extra_mouse)) if rich and rng.random() < 0.5 else side * cfg.turn
            emit(str(rng.choice(_MOVES)), (0.0, yaw_m), n)
        elif kind == "spin":
            emit("", (0.0, side * cfg.turn), cfg.spin_frames)
        elif kind == "out_back":
            emit("W", (0.0, 0.0), n)
            emit("", (0.0, side * cfg.turn), half_turn)
            emit("W", (0.0, 0.0), n)
        elif kind == "loop":
            emit("W", (0.0, side * cfg.turn), cfg.spin_frames)
        elif kind == "look":
            toward_zero = abs(pitch) >= cfg.pitch_limit_deg / 2
            sign = -float(np.sign(pitch)) if toward_zero else side
            room = abs(pitch) if toward_zero else cfg.pitch_limit_deg - abs(pitch)
            k = min(n, int(room / deg_per_frame))
            emit("", (sign * cfg.turn, 0.0), k)
            pitch += sign * deg_per_frame * k
        else:
            emit("", (0.0, 0.0), n)
    return np.stack(kb_rows[:T]), np.stack(mouse_rows[:T])


def measure_accuracy(seeds: range | list[int], T: int, source: Literal["poses", "c2w"] = "poses",
                     cfg: InferenceConfig = InferenceConfig(), rich: bool = False,
                     noise: tuple[float, float] = (0.0, 0.0)) -> dict[str, float]:
    """Generate MG3 trajectories, infer actions back -> action_accuracy over all observed frames, plus
    `last_action_exact` (the unobservable last action of each trajectory).
    noise: (position std in pose units, angle std in degrees) of Gaussian noise added to every pose."""
    tk, tm, pk, pm, obs = [], [], [], [], []
    for seed in seeds:
        kb, mouse = exploration_revisit_actions(seed, T, rich=rich)
        poses, _ = poses_from_actions(kb, mouse)
        if noise != (0.0, 0.0):
            std = np.array([noise[0]] * 3 + [noise[1]] * 2)
            poses = poses + np.random.default_rng(seed).normal(size=poses.shape) * std
            poses[:, 4] = wrap180(poses[:, 4])
        traj = poses if source == "poses" else extrinsics_from_poses(poses)
        inf = infer_actions(traj, cfg)
        tk.append(kb), tm.append(mouse), obs.append(inf.observed)
        pk.append(inf.keyboard), pm.append(inf.mouse)
    arrays = (np.concatenate(tk), np.concatenate(tm), np.concatenate(pk), np.concatenate(pm))
    observed = np.concatenate(obs)
    out = action_accuracy(*arrays, mask=observed)
    out["last_action_exact"] = action_accuracy(*arrays, mask=~observed)["action_exact"]  # the repeat guess
    return out


def measure_rendered(n: int) -> list[tuple[str, dict[str, float]]]:
    """Accuracy of inference from the c2w of n rendered clips (truth: the agents' actions)."""
    from worldstream.data.engine.clips import render_clip

    clips = [render_clip(i, i) for i in range(n)]
    rows = []
    for avg in ("mg3", "circular"):
        cfg = InferenceConfig(yaw_average=avg)
        infs = [infer_actions(c.c2w, cfg) for c in clips]
        acc = action_accuracy(*(np.concatenate(a) for a in (
            [c.keyboard for c in clips], [c.mouse for c in clips], [i.keyboard for i in infs],
            [i.mouse for i in infs])), mask=np.concatenate([i.observed for i in infs]))
        acc["last_action_exact"] = float(np.mean([
            (c.keyboard[-1] == i.keyboard[-1]).all() and (c.mouse[-1] == i.mouse[-1]).all()
            for c, i in zip(clips, infs)]))
        rows.append((f"rendered/{avg}/cont ({n} clips)", acc))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="action-inference accuracy on MG3-kinematics trajectories")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--noise", type=float, nargs=2, default=(1.0, 0.2), metavar=("POS", "DEG"),
                   help="pose noise (std) of the noisy rows: pose units, degrees")
    p.add_argument("--rendered", type=int, default=0, metavar="N",
                   help="also infer from the c2w of N clips rendered by the data engine (96x160, 97 frames)")
    args = p.parse_args(argv)
    rows = []
    for source in ("poses", "c2w"):
        for avg in ("mg3", "circular"):
            for rich, quant in ((False, True), (True, False)):
                cfg = InferenceConfig(yaw_average=avg, quantize_mouse=quant)
                acc = measure_accuracy(range(args.seeds), args.frames, source, cfg, rich=rich)
                name = f"{source}/{avg}/{'rich' if rich else 'grid'}/{'quant' if quant else 'cont'}"
                rows.append((name, acc))
    for avg in ("mg3", "circular"):
        cfg = InferenceConfig(yaw_average=avg, quantize_mouse=True)
        acc = measure_accuracy(range(args.seeds), args.frames, "c2w", cfg, noise=tuple(args.noise))
        rows.append((f"c2w/{avg}/grid/quant/noise {args.noise[0]:g} units {args.noise[1]:g} deg", acc))
    if args.rendered:
        rows.extend(measure_rendered(args.rendered))
    cols = ([f"key_{k}" for k in "WSAD"] + [f"mouse_{a}_{d}" for a in MOUSE_AXES for d in ("pos", "neg")]
            + ["action_exact", "last_action_exact"])
    print("| setting | frames | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for name, acc in rows:
        cells = " | ".join(f"{100 * acc[c]:.2f}" for c in cols)
        print(f"| {name} | {int(acc['n_frames'])} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
