"""worldstream.data.engine: procedural worlds -> rendered clips (video, MG3 poses/actions, prompt).

    from worldstream.data.engine import EngineConfig, render_clip
    clip = render_clip(world_seed, clip_seed, EngineConfig())   # deterministic Clip

Modules: world.py (biomes, layout, collision), mesh.py / textures.py (geometry and texture
builders), renderer.py (moderngl EGL renderer, `render_frames`, `measure_fps`), agents.py
(scripted players, MG3 bench actions), prompts.py (clip prompts), clips.py (`render_clip`).
Importing this package does not touch OpenGL; the context is created on the first render.
"""

from worldstream.data.engine.agents import (
    TRAJECTORIES,
    AgentConfig,
    Trajectory,
    bench_actions,
    plan_trajectory,
)
from worldstream.data.engine.clips import EngineConfig, get_world, render_clip
from worldstream.data.engine.renderer import Renderer, intrinsics, measure_fps, render_frames
from worldstream.data.engine.world import BIOMES, World, WorldConfig

__all__ = [
    "BIOMES",
    "TRAJECTORIES",
    "AgentConfig",
    "EngineConfig",
    "Renderer",
    "Trajectory",
    "World",
    "WorldConfig",
    "bench_actions",
    "get_world",
    "intrinsics",
    "measure_fps",
    "plan_trajectory",
    "render_clip",
    "render_frames",
]
