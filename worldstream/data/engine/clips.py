"""`render_clip(world_seed, clip_seed, cfg) -> Clip`: the data engine's one entry point.

Notable:
* Deterministic in (world_seed, clip_seed, cfg): the world from world_seed, the trajectory
  choice and the agent from (world_seed, clip_seed), the prompt template from the same stream.
  The shard writer may call it in any order, from any process.
* One World + Renderer is cached per process (the last world_seed / size / world config), so
  consecutive clips of one world pay world generation and GL upload once.
* Clip conventions: video uint8 [T,H,W,3]; c2w [T,4,4] float64 from MG3's `get_extrinsics`
  (poses in cm, metres in c2w); intrinsics [fx, fy, cx, cy] with square pixels and a 90 degree
  horizontal FOV (fx = fy = W/2) -- see renderer.py for why this differs from MG3's fy = H/2.
* meta: biome, trajectory (requested and produced), landmark visibility per name, revisit
  frame pairs (a later frame at ~the same pose as an earlier one), agent info, world descriptor.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import numpy as np

from worldstream.data.engine.agents import TRAJECTORIES, AgentConfig, TrajectoryName, plan_trajectory
from worldstream.data.engine.prompts import clip_prompt, landmark_visibility, visible_landmarks
from worldstream.data.engine.renderer import Renderer, check_size
from worldstream.data.engine.world import BIOMES, World, WorldConfig, check_seed
from worldstream.data.schema import Clip
from worldstream.geometry.camera import extrinsics_from_poses

ENGINE_VERSION = 1  # bump when the same seeds would render different clips

# default trajectory mix: about half revisits (memory training needs them), MG3 bench actions, exploration
DEFAULT_TRAJECTORY_WEIGHTS = {
    "explore": 0.28,
    "out_and_back": 0.14,
    "retreat": 0.08,
    "loop_square": 0.08,
    "loop_strafe": 0.07,
    "loop_circle": 0.07,
    "spin": 0.10,
    "bench": 0.18,
}
REVISIT_POSITION_TOL = 0.25  # metres: a later frame within this distance ...
REVISIT_YAW_TOL = 10.0  # ... and yaw (degrees) of an earlier one counts as a revisit
REVISIT_MIN_GAP = 8  # frames between the two views of a revisit


@dataclass(frozen=True)
class EngineConfig:
    height: int = 96
    width: int = 160
    num_frames: int = 97  # MG3's first clip (57 frames) + one later clip (40 frames)
    fps: int = 16  # playback rate stored with the clip (MG3 trains at 16 fps)
    trajectories: tuple[TrajectoryName, ...] = tuple(DEFAULT_TRAJECTORY_WEIGHTS)
    trajectory_weights: tuple[float, ...] = tuple(DEFAULT_TRAJECTORY_WEIGHTS.values())
    biome: str | None = None  # force one biome for every world (None: the world seed chooses)
    msaa: int = 0  # multisample anti-aliasing samples (0, 2, 4, 8); 4 smooths edges for ~25% less speed
    world: WorldConfig = field(default_factory=WorldConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)

    def __post_init__(self) -> None:
        check_size(self.height, self.width)
        for name in ("num_frames", "fps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (2 if name == "num_frames" else 1):
                raise ValueError(
                    f"EngineConfig.{name} must be an int >= {2 if name == 'num_frames' else 1}, got {v!r}"
                )
        if len(self.trajectories) == 0 or len(self.trajectories) != len(self.trajectory_weights):
            raise ValueError(
                f"EngineConfig.trajectories ({len(self.trajectories)}) and trajectory_weights "
                f"({len(self.trajectory_weights)}) must be non-empty and of equal length"
            )
        bad = [t for t in self.trajectories if t not in TRAJECTORIES]
        if bad:
            raise ValueError(
                f"EngineConfig.trajectories has unknown names {bad}; expected from {TRAJECTORIES}"
            )
        w = np.asarray(self.trajectory_weights, dtype=np.float64)
        if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(
                f"EngineConfig.trajectory_weights must be >= 0 with a positive sum, got "
                f"{self.trajectory_weights}"
            )
        if self.msaa not in (0, 2, 4, 8):
            raise ValueError(f"EngineConfig.msaa must be 0, 2, 4 or 8, got {self.msaa!r}")
        if self.biome is not None and self.biome not in BIOMES:
            raise ValueError(f"EngineConfig.biome must be one of {BIOMES} or None, got {self.biome!r}")


_CACHE = threading.local()  # per thread: a GL context is current in one thread only


def get_world(world_seed: int, cfg: EngineConfig) -> tuple[World, Renderer]:
    """The (World, Renderer) for world_seed, cached per thread (one at a time)."""
    c = _CACHE.__dict__
    if c.get("pid") != os.getpid():  # NOTE after a fork the parent's GL objects are unusable: drop them
        c.update(key=None, world=None, renderer=None, pid=os.getpid())
    key = (world_seed, cfg.biome, cfg.world, cfg.height, cfg.width, cfg.msaa)
    if c["key"] != key:
        if c["renderer"] is not None:
            c["renderer"].release()
            c.update(key=None, world=None, renderer=None)
        world = World.generate(world_seed, cfg.world, biome=cfg.biome)
        c.update(key=key, world=world, renderer=Renderer(world, cfg.height, cfg.width, samples=cfg.msaa))
    return c["world"], c["renderer"]


def revisit_pairs(
    poses: np.ndarray,
    min_gap: int = REVISIT_MIN_GAP,
    pos_tol: float = REVISIT_POSITION_TOL,
    yaw_tol: float = REVISIT_YAW_TOL,
) -> list[list[int]]:
    """[[later, earlier], ...]: for each frame, the first frame >= min_gap earlier at ~the same pose."""
    xy = poses[:, :2].astype(np.float64) / 100.0
    yaw = poses[:, 4].astype(np.float64)
    out = []
    for j in range(min_gap, len(poses)):
        earlier = np.arange(0, j - min_gap + 1)
        d = np.linalg.norm(xy[earlier] - xy[j], axis=1)
        dyaw = np.abs((yaw[earlier] - yaw[j] + 180.0) % 360.0 - 180.0)
        hit = np.flatnonzero((d <= pos_tol) & (dyaw <= yaw_tol))
        if len(hit):
            out.append([int(j), int(earlier[hit[0]])])
    return out


def render_clip(world_seed: int, clip_seed: int, cfg: EngineConfig | None = None) -> Clip:
    """Render one clip of world `world_seed` with agent/trajectory `clip_seed` (deterministic)."""
    cfg = cfg or EngineConfig()
    if not isinstance(cfg, EngineConfig):
        raise ValueError(f"cfg must be an EngineConfig, got {type(cfg).__name__}")
    world_seed = check_seed(world_seed, "world_seed")
    clip_seed = check_seed(clip_seed, "clip_seed")
    # 1. world + renderer (cached), clip rng
    world, renderer = get_world(world_seed, cfg)
    rng = np.random.default_rng(np.random.SeedSequence([world_seed, clip_seed, ENGINE_VERSION]))
    w = np.asarray(cfg.trajectory_weights, dtype=np.float64)
    name = cfg.trajectories[int(rng.choice(len(w), p=w / w.sum()))]
    # 2. agent actions -> MG3 poses -> c2w
    traj = plan_trajectory(world, name, cfg.num_frames, seed=clip_seed, cfg=cfg.agent)
    c2w = extrinsics_from_poses(traj.poses)  # [T,4,4] float64
    # 3. frames
    video = renderer.render(c2w)  # [T,H,W,3] uint8
    # 4. prompt from what the clip shows
    counts = landmark_visibility(world, c2w, renderer.intrinsics, cfg.height, cfg.width)
    visible = visible_landmarks(counts)
    prompt = clip_prompt(world.descriptor, visible, rng)
    meta = {
        "engine_version": ENGINE_VERSION,
        "biome": world.biome,
        "trajectory": traj.kind,
        "trajectory_requested": traj.name,
        "agent": traj.info,
        "landmarks_visible": visible,
        "landmark_frames": counts,
        "revisit_pairs": revisit_pairs(traj.poses),
        "world": world.descriptor,
        "fps": cfg.fps,
        "intrinsics_convention": "square pixels, 90 deg horizontal FOV: fx = fy = W/2, cx = W/2, cy = H/2",
    }
    clip = Clip(
        key=f"w{world_seed:06d}_c{clip_seed:06d}",
        c2w=c2w,
        intrinsics=renderer.intrinsics.copy(),
        keyboard=traj.keyboard,
        mouse=traj.mouse,
        prompt=prompt,
        source="render",
        video=video,
        poses=traj.poses,
        world_seed=world_seed,
        meta=meta,
    )
    return clip.validate()
