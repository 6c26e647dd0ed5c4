"""Scripted players: MG3 actions per frame, poses from MG3's kinematics, no walking through walls.

Notable:
* Agents only choose actions (keyboard [T,6] multi-hot W,S,A,D; mouse [T,2] [pitch, yaw] deltas);
  poses always come from `worldstream.data.actions.poses_from_actions` (facts 4.1), with the
  first pose (x, y, eye height, 0, yaw) in pose units (cm). `Trajectory.poses` is that output.
* Trajectories (`TRAJECTORIES`): exploration (walk / turn / strafe / glance, look-ahead obstacle
  avoidance by turning in place), and revisits for memory training: out-and-back (out, 180 turn,
  back, 180 turn -> the first view again), retreat (forward then backward on the same line),
  loops (square with turns, strafed square, circle), spin in place (360 degrees), and MG3's
  benchmark random actions (`bench_actions`, facts 5.6).
* Revisits within one ~97-frame clip need faster turns than MG3's usual 0.1 mouse step
  (1.5 deg/frame, so 180 degrees takes 120 frames): `AgentConfig.revisit_turn_mouse` (0.2/0.3/0.5,
  i.e. 3/4.5/7.5 deg/frame). These are exact in float32, so a full turn returns to the same yaw.
* Scripted programs are placed by searching start poses: the path for a start at the origin and
  yaw 0 is rotated/translated to each candidate and checked against the world's clearance grid
  in one vectorised test; the winner is then recomputed exactly and re-checked.
* Everything is deterministic from an integer seed (numpy Generator; python `random.Random` for the
  MG3 benchmark actions, as the official code uses python `random`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from worldstream.data.actions import KEY_INDEX, next_pose, poses_from_actions
from worldstream.data.engine.world import World, check_seed

TrajectoryName = Literal[
    "explore", "out_and_back", "retreat", "loop_square", "loop_strafe", "loop_circle", "spin", "bench"
]
TRAJECTORIES: tuple[str, ...] = (
    "explore",
    "out_and_back",
    "retreat",
    "loop_square",
    "loop_strafe",
    "loop_circle",
    "spin",
    "bench",
)
REVISIT_TRAJECTORIES = ("out_and_back", "retreat", "loop_square", "loop_strafe", "loop_circle", "spin")


@dataclass(frozen=True)
class AgentConfig:
    eye_height: float = 170.0  # pose z in pose units (cm): the camera is 1.7 m above the ground
    radius: float = 0.45  # metres of clearance required at every pose
    look_ahead: float = 1.4  # metres that must be free ahead of a moving explorer
    explore_mouse: float = 0.1  # exploration turn/pitch step (1.5 deg/frame, MG3's usual value)
    revisit_turn_mouse: tuple[float, ...] = (
        0.2,
        0.3,
        0.5,
    )  # in-place turns for revisits (3/4.5/7.5 deg/frame)
    min_leg_frames: int = 12  # shortest walking leg of an out-and-back / square loop
    max_glance_frames: int = 4  # a pitch glance goes this many frames up/down and back (<= 6 degrees)
    explore_segment: tuple[int, int] = (8, 32)  # frames per exploration behaviour
    start_candidates: int = 512  # start poses tried per placement search
    start_clearance: float = 1.0  # metres of clearance at the start position
    preferred_clearance: float = 1.0  # placement prefers paths keeping this much room (m) ...
    preferred_view: float = 8.0  # ... and a mean free view distance of at least this (m)
    view_probe_every: int = 8  # frames between view-openness probes
    view_probe_max: float = 20.0  # metres probed along the view direction
    explore_start_clearance: float = 2.5  # explorers start in open space when there is any
    bench_reseeds: int = 6  # alternative bench action draws tried before falling back to exploration
    explore_weights: tuple[tuple[str, float], ...] = (
        ("walk", 0.32),
        ("walk_turn", 0.26),
        ("strafe", 0.08),
        ("diagonal", 0.10),
        ("turn", 0.12),
        ("glance", 0.07),
        ("idle", 0.05),
    )


@dataclass
class Trajectory:
    name: str  # requested trajectory
    kind: str  # what was produced (differs from `name` only on a fallback)
    keyboard: np.ndarray  # [T,6] float32
    mouse: np.ndarray  # [T,2] float32
    poses: np.ndarray  # [T,5] float32 (x, y, z, pitch, yaw), pose units (cm, degrees)
    info: dict = field(default_factory=dict)


# ---- MG3 benchmark actions (facts 5.6) ------------------------------------------------------

_BENCH_MOVES = ("forward", "left", "right")
_BENCH_DOUBLE = ("forward_left", "forward_right")
_BENCH_CAMERA = {"camera_l": (0.0, -0.1), "camera_r": (0.0, 0.1)}
_BENCH_KEYS = {
    "forward": KEY_INDEX["W"],
    "back": KEY_INDEX["S"],
    "left": KEY_INDEX["A"],
    "right": KEY_INDEX["D"],
}
BENCH_BLOCK = 12  # frames per template block (3 x the 4-row template)
BENCH_TEMPLATE_ROWS = 4


def bench_templates() -> list[str]:
    """The 45-entry template list, in order: doubles x5, cameras x5, singles x5, then move x camera."""
    names = list(_BENCH_DOUBLE) * 5 + list(_BENCH_CAMERA) * 5 + list(_BENCH_MOVES) * 5
    names += [f"{m}_{c}" for m in _BENCH_MOVES + _BENCH_DOUBLE for c in _BENCH_CAMERA]
    return names


def _bench_row(name: str) -> tuple[np.ndarray, np.ndarray]:
    kb = np.zeros(6, np.float32)
    mouse = np.zeros(2, np.float32)
    for sub, col in _BENCH_KEYS.items():  # substring test, as the official template builder
        if sub in name:
            kb[col] = 1.0
    for sub, val in _BENCH_CAMERA.items():
        if sub in name:
            mouse[:] = val
    return kb, mouse


def bench_actions(num_frames: int, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """MG3 `Bench_actions_universal(num_frames)` with python random state `rng` -> (kb [T,6], mouse [T,2]).

    Frame 0 = a random template's first row; then blocks of 12 frames (the last one cut short),
    each a random template tiled. NOTE each block also draws its length from a one-entry list
    ([12]) with randint(0, 0), which consumes random state; reproduced so seeds match the official
    sequences (golden `bench_57_seed42` and `bench_random`).
    """
    templates = bench_templates()
    kb = np.zeros((num_frames, 6), np.float32)
    mouse = np.zeros((num_frames, 2), np.float32)
    block_lengths = [BENCH_BLOCK]
    t = 0
    while t < num_frames:
        length = block_lengths[rng.randint(0, len(block_lengths) - 1)]
        k, m = _bench_row(templates[rng.randint(0, len(templates) - 1)])
        if t == 0:
            kb[0], mouse[0] = k, m
            t = 1
        else:
            length = min(length, num_frames - t)
            kb[t : t + length], mouse[t : t + length] = k, m
            t += length
    return kb, mouse


# ---- helpers -----------------------------------------------------------------------------------


def _row(keys: str = "", pitch: float = 0.0, yaw: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    kb = np.zeros(6, np.float32)
    for k in keys:
        kb[KEY_INDEX[k]] = 1.0
    return kb, np.array([pitch, yaw], np.float32)


def _compile(program: list[tuple[str, float, float, int]], num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """[(keys, pitch, yaw, count)] -> kb [T,6], mouse [T,2]; truncated to T, padded with idle rows."""
    kb = np.zeros((num_frames, 6), np.float32)
    mouse = np.zeros((num_frames, 2), np.float32)
    t = 0
    for keys, pitch, yaw, count in program:
        n = max(0, min(count, num_frames - t))
        k, m = _row(keys, pitch, yaw)
        kb[t : t + n], mouse[t : t + n] = k, m
        t += n
    return kb, mouse


def _turn_frames(degrees: float, mouse: float) -> int:
    return int(round(degrees / (15.0 * mouse)))


def path_clear(world: World, poses: np.ndarray, radius: float) -> bool:
    """True if every pose position (cm) keeps `radius` metres from obstacles and the boundary."""
    return bool((world.clearance(poses[:, 0] / 100.0, poses[:, 1] / 100.0) >= radius).all())


def _place(world: World, kb: np.ndarray, mouse: np.ndarray, rng: np.random.Generator, cfg: AgentConfig):
    """Search a start (x, y, yaw) from which the action program stays clear; exact poses or None."""
    rel, _ = poses_from_actions(kb, mouse, np.array([0, 0, cfg.eye_height, 0, 0], np.float32))
    rel_xy = rel[:, :2].astype(np.float64) / 100.0  # [T,2] metres, start at origin heading +X
    # 1. candidate starts: clear cells, yaw on MG3's 1.5 degree lattice
    ok = np.argwhere(world.free_distance >= max(cfg.start_clearance, cfg.radius))
    if len(ok) == 0:
        return None
    K = cfg.start_candidates
    pick = ok[rng.integers(len(ok), size=K)]
    cell = world.cfg.grid_cell
    xy0 = -world.cfg.arena_size / 2 + (pick + 0.5) * cell + rng.uniform(-0.4, 0.4, (K, 2)) * cell  # [K,2]
    yaw0 = rng.integers(0, 240, size=K) * 1.5 - 180.0  # [K]
    # 2. rotate + translate the relative path for all candidates, test clearance at once
    c, s = np.cos(np.deg2rad(yaw0)), np.sin(np.deg2rad(yaw0))
    px = xy0[:, None, 0] + c[:, None] * rel_xy[None, :, 0] - s[:, None] * rel_xy[None, :, 1]  # [K,T]
    py = xy0[:, None, 1] + s[:, None] * rel_xy[None, :, 0] + c[:, None] * rel_xy[None, :, 1]
    min_clear = world.clearance(px, py).min(axis=1)  # [K]
    eligible = min_clear >= cfg.radius + 0.05  # small margin for MG3's yaw-wrap step quirk
    # 3. view openness: mean free distance along the view direction at a few frames of the path
    frames = np.arange(0, rel.shape[0], cfg.view_probe_every)
    yaw = np.deg2rad(yaw0[:, None] + rel[None, frames, 4])  # [K,F]
    dist = np.arange(1, cfg.view_probe_max + 1e-9, 1.0)  # [D]
    vx = px[:, frames, None] + np.cos(yaw)[..., None] * dist  # [K,F,D]
    vy = py[:, frames, None] + np.sin(yaw)[..., None] * dist
    hit = world.clearance(vx, vy) < cfg.radius
    run = np.where(hit.any(-1), dist[np.argmax(hit, axis=-1)] - 1.0, cfg.view_probe_max)  # [K,F]
    view = run.mean(axis=1)  # [K]
    # 4. prefer roomy paths with open views (not a wall filling the frame), in the random order;
    #    else any clear path, most open view first; exact recompute and re-check
    preferred = np.flatnonzero(
        eligible & (min_clear >= cfg.preferred_clearance) & (view >= cfg.preferred_view)
    )
    rest = np.flatnonzero(eligible)
    rest = rest[np.argsort(-view[rest], kind="stable")]
    for k in list(preferred[:8]) + list(rest[:8]):
        first = np.array([xy0[k, 0] * 100, xy0[k, 1] * 100, cfg.eye_height, 0.0, yaw0[k]], np.float32)
        poses, _ = poses_from_actions(kb, mouse, first)
        if path_clear(world, poses, cfg.radius):
            return poses
    return None


# ---- scripted revisit programs --------------------------------------------------------------


def _pick_turn(
    cfg: AgentConfig, rng: np.random.Generator, degrees: float, turns: int, budget: int, min_walk: int
) -> float:
    """A random revisit turn speed among those leaving >= min_walk frames for walking (else the fastest)."""
    speeds = sorted(cfg.revisit_turn_mouse)
    fitting = [s for s in speeds if budget - turns * _turn_frames(degrees, s) >= min_walk]
    if not fitting:
        return speeds[-1]
    return float(fitting[int(rng.integers(len(fitting)))])


def _program(name: str, T: int, rng: np.random.Generator, cfg: AgentConfig):
    """Action program for a scripted trajectory of T frames (T-1 actions shape the T poses)."""
    budget = T - 1
    sgn = 1.0 if rng.random() < 0.5 else -1.0
    info: dict = {}
    if name == "out_and_back":
        s = _pick_turn(cfg, rng, 180, 2, budget, 2 * cfg.min_leg_frames)
        turn = _turn_frames(180, s)
        leg = max(1, (budget - 2 * turn) // 2)
        prog = [("W", 0, 0, leg), ("", 0, sgn * s, turn), ("W", 0, 0, leg), ("", 0, sgn * s, turn)]
        info = {"leg_frames": leg, "turn_mouse": s, "return_frame": 2 * leg + 2 * turn}
    elif name == "retreat":
        pause = int(rng.integers(0, 5))
        leg = max(1, (budget - pause) // 2)
        prog = [("W", 0, 0, leg), ("", 0, 0, pause), ("S", 0, 0, leg)]
        info = {"leg_frames": leg, "return_frame": 2 * leg + pause}
    elif name == "loop_square":
        s = _pick_turn(cfg, rng, 90, 4, budget, 4 * max(4, cfg.min_leg_frames // 2))
        turn = _turn_frames(90, s)
        leg = max(1, (budget - 4 * turn) // 4)
        prog = [("W", 0, 0, leg), ("", 0, sgn * s, turn)] * 4
        info = {"leg_frames": leg, "turn_mouse": s, "return_frame": 4 * (leg + turn)}
    elif name == "loop_strafe":
        leg = max(1, budget // 4)
        order = ["W", "D", "S", "A"] if sgn > 0 else ["W", "A", "S", "D"]
        prog = [(k, 0, 0, leg) for k in order]
        info = {"leg_frames": leg, "return_frame": 4 * leg}
    elif name == "loop_circle":
        speeds = sorted(cfg.revisit_turn_mouse)
        fitting = [v for v in speeds if _turn_frames(360, v) <= budget]
        s = fitting[0] if fitting else speeds[-1]
        lap = _turn_frames(360, s)
        prog = [("W", 0, sgn * s, budget)]
        info = {"turn_mouse": s, "return_frame": lap}
    elif name == "spin":
        speeds = sorted(cfg.revisit_turn_mouse)
        fitting = [v for v in speeds if _turn_frames(360, v) <= budget]
        s = float(fitting[int(rng.integers(len(fitting)))]) if fitting else speeds[-1]
        spin = _turn_frames(360, s)
        before = int(rng.integers(0, max(1, budget - spin) + 1))
        after = max(0, budget - spin - before)
        prog = [("W", 0, 0, before), ("", 0, sgn * s, spin), ("W", 0, 0, after)]
        info = {"turn_mouse": s, "spin_start": before, "return_frame": before + spin}
    else:
        raise ValueError(f"unknown scripted trajectory {name!r}")
    if info.get("return_frame", 0) > budget:  # clip too short to come back
        info["return_frame"] = None
    kb, mouse = _compile(prog, T)
    return kb, mouse, info


# ---- exploration -----------------------------------------------------------------------------


def _free_run(
    world: World, x: float, y: float, yaw_deg: float, radius: float, limit: float = 20.0, step: float = 0.5
) -> float:
    """Metres one can walk from (x, y) along yaw before clearance drops below radius (capped)."""
    d = np.arange(step, limit + 1e-9, step)
    a = np.deg2rad(yaw_deg)
    blocked = np.flatnonzero(world.clearance(x + np.cos(a) * d, y + np.sin(a) * d) < radius)
    return float(d[blocked[0]] - step) if len(blocked) else limit


def _explore(world: World, T: int, rng: np.random.Generator, cfg: AgentConfig) -> Trajectory:
    """Reactive exploration: random behaviours, look-ahead avoidance by turning in place."""
    ok = np.argwhere(world.free_distance >= cfg.explore_start_clearance)
    if len(ok) == 0:
        ok = np.argwhere(world.free_distance >= max(cfg.start_clearance, cfg.radius))
    cell = world.cfg.grid_cell
    ij = ok[int(rng.integers(len(ok)))]
    x0, y0 = -world.cfg.arena_size / 2 + (ij + 0.5) * cell
    # face the most open of 16 directions (on MG3's 1.5 degree yaw lattice), plus jitter
    dirs = np.arange(16) * 22.5 + rng.uniform(0, 22.5)
    room = [_free_run(world, x0, y0, d, cfg.radius) for d in dirs]
    yaw0 = float(np.round(dirs[int(np.argmax(room))] / 1.5) * 1.5)
    yaw0 = yaw0 - 360.0 if yaw0 >= 180.0 else yaw0
    pose = np.array([x0 * 100, y0 * 100, cfg.eye_height, 0.0, yaw0], np.float32)
    first = pose.copy()
    names = [n for n, _ in cfg.explore_weights]
    weights = np.array([w for _, w in cfg.explore_weights], np.float64)
    weights /= weights.sum()
    m = cfg.explore_mouse
    kb = np.zeros((T, 6), np.float32)
    mouse = np.zeros((T, 2), np.float32)
    queue: list[tuple[np.ndarray, np.ndarray]] = []
    avoid_dir = 0.0
    n_avoid = 0

    def behaviour() -> list[tuple[np.ndarray, np.ndarray]]:
        name = names[int(rng.choice(len(names), p=weights))]
        n = int(rng.integers(cfg.explore_segment[0], cfg.explore_segment[1] + 1))
        sg = 1.0 if rng.random() < 0.5 else -1.0
        if name == "walk":
            return [_row("W")] * n
        if name == "walk_turn":
            return [_row("W", 0, sg * m)] * n
        if name == "strafe":
            return [_row("D" if sg > 0 else "A")] * (n // 2)
        if name == "diagonal":
            return [_row("WD" if sg > 0 else "WA")] * n
        if name == "turn":
            return [_row("", 0, sg * m)] * n
        if name == "glance":  # pitch out and back: keeps |pitch| <= max_glance * 1.5 deg
            k = int(rng.integers(1, cfg.max_glance_frames + 1))
            return [_row("", sg * m, 0)] * k + [_row("", -sg * m, 0)] * k
        return [_row("")] * (n // 2)  # idle

    def blocked(p: np.ndarray, k: np.ndarray, mo: np.ndarray) -> bool:
        nxt = next_pose(p, k, mo).astype(np.float32)
        dx, dy = (float(nxt[0]) - float(p[0])) / 100.0, (float(nxt[1]) - float(p[1])) / 100.0
        step = float(np.hypot(dx, dy))
        if step == 0.0:
            return False
        ax, ay = (
            float(nxt[0]) / 100.0 + dx / step * cfg.look_ahead,
            float(nxt[1]) / 100.0 + dy / step * cfg.look_ahead,
        )
        return bool(
            world.clearance(nxt[0] / 100.0, nxt[1] / 100.0) < cfg.radius
            or world.clearance(ax, ay) < cfg.radius * 0.5
        )

    def free_side(p: np.ndarray) -> float:
        """+1 to turn right (positive yaw), -1 left: the side with more room within 6 m."""
        room = {
            sg: sum(
                _free_run(world, p[0] / 100.0, p[1] / 100.0, float(p[4]) + sg * deg, cfg.radius, 8.0)
                for deg in (30, 60, 90, 120)
            )
            for sg in (1.0, -1.0)
        }
        return 1.0 if room[1.0] >= room[-1.0] else -1.0

    for t in range(T):
        if n_avoid > 0:
            k, mo = _row("", 0, avoid_dir * m)
            n_avoid -= 1
        else:
            if not queue:
                queue = behaviour()
            k, mo = queue[0]
            if blocked(pose, k, mo):
                queue = []
                avoid_dir = free_side(pose)
                n_avoid = int(rng.integers(12, 40))  # turn 18-60 degrees, then re-check
                k, mo = _row("", 0, avoid_dir * m)
            else:
                queue.pop(0)
        kb[t], mouse[t] = k, mo
        pose = next_pose(pose, k, mo).astype(np.float32)
    poses, _ = poses_from_actions(kb, mouse, first)
    return Trajectory("explore", "explore", kb, mouse, poses, {"start": first.tolist()})


# ---- entry point --------------------------------------------------------------------------------


def _derive_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 0x5A6E7]))


def plan_trajectory(
    world: World, name: str, num_frames: int, seed: int, cfg: AgentConfig | None = None
) -> Trajectory:
    """Actions + MG3 poses for trajectory `name` in `world`, deterministic from `seed`."""
    cfg = cfg or AgentConfig()
    seed = check_seed(seed, "seed")
    if name not in TRAJECTORIES:
        raise ValueError(f"unknown trajectory {name!r}; expected one of {TRAJECTORIES}")
    if isinstance(num_frames, bool) or not isinstance(num_frames, int | np.integer) or num_frames < 2:
        raise ValueError(f"num_frames must be an int >= 2, got {num_frames!r}")
    T = int(num_frames)
    rng = _derive_rng(seed)
    if name == "explore":
        return _explore(world, T, rng, cfg)
    if name == "bench":
        for attempt in range(cfg.bench_reseeds):
            bench_seed = seed if attempt == 0 else seed + 1_000_003 * attempt
            kb, mouse = bench_actions(T, random.Random(bench_seed))
            poses = _place(world, kb, mouse, rng, cfg)
            if poses is not None:
                return Trajectory(name, "bench", kb, mouse, poses, {"bench_seed": bench_seed})
        traj = _explore(world, T, rng, cfg)
        traj.name, traj.info["fallback_from"] = name, "bench"
        return traj
    kb, mouse, info = _program(name, T, rng, cfg)
    poses = _place(world, kb, mouse, rng, cfg)
    if poses is None:  # no clear spot for this program (tiny or crowded world): spin in place
        kb, mouse, info = _program("spin", T, rng, cfg)
        kb[:], mouse[:, 0] = 0.0, 0.0  # pure in-place turning never collides
        ok = np.argwhere(world.free_distance >= cfg.radius)
        ij = ok[int(rng.integers(len(ok)))]
        x0, y0 = -world.cfg.arena_size / 2 + (ij + 0.5) * world.cfg.grid_cell
        first = np.array([x0 * 100, y0 * 100, cfg.eye_height, 0.0, 0.0], np.float32)
        poses, _ = poses_from_actions(kb, mouse, first)
        info["fallback_from"] = name
        return Trajectory(name, "spin", kb, mouse, poses, info)
    return Trajectory(name, name, kb, mouse, poses, info)
