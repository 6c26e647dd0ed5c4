"""Evaluation harness: ground-truth clips of held-out worlds, and the model driven by the same actions.

Shared by the memory, action and drift benches (eval/benchmarks/*.py):
* `ground_truth(world_seed, trajectory, num_frames)` renders a clip with the data engine (`render_clip`,
  one trajectory kind only): frames, c2w, keyboard, mouse, prompt and meta["revisit_pairs"] ([later,
  earlier] frame pairs at ~the same pose, data/engine/clips.py).
* `generate(bundle, cfg, clip)` starts a `WorldSession` from the clip's frame 0 and prompt and steps it with
  the clip's own action rows, so generated frame i is the model's guess of ground-truth frame i.

Frame alignment (SessionConfig.schedule; nano: first clip 25 frames incl. the image, then 16 per clip):
`reset` returns frame 0; the first `step` takes rows 0..first_step_frames (the official layout with a row for
frame 0: row f moves the camera from frame f to f + 1, as in the engine's `poses_from_actions`) and returns
frames 1..first_step_frames; every later step takes and returns the next `step_frames` rows/frames. The
output is truncated to the requested length.
NOTE when the length is not 1 + first_step_frames + k * step_frames, the last clip needs rows past the
clip's end: they are null actions (no key, no mouse). Null rows only shape frames that are dropped, but a
clip's frames are denoised together, so the benches ask for aligned lengths (`aligned_frames`).

Held-out worlds: the nano training clips (/work/data/nano_v1, `worldstream data render --seed 1 --worlds
120`) used world seeds `derive_seed(1, "world", i)` (data/render_cmd.py), 31-bit hashes; `check_held_out`
refuses any of those, so small seeds such as 900..903 are held out by construction (checked, not assumed).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import numpy as np

__all__ = ["TrainingWorlds", "TRAINING_WORLDS", "training_world_seeds", "check_held_out", "ground_truth",
           "aligned_frames", "Generation", "run_session", "generate", "session_config",
           "add_harness_arguments", "parse_seeds", "parse_trajectories", "load_for_bench",
           "add_bench_arguments", "parse_worlds", "run_bench"]


@dataclass(frozen=True)
class TrainingWorlds:
    """The render plan of the nano training set (its index.json: dataset.seed / dataset.worlds)."""

    render_seed: int = 1  # `worldstream data render --seed 1` (/work/data/nano_v1)
    worlds: int = 120  # 120 worlds x 5 clips = 600 clips


TRAINING_WORLDS = TrainingWorlds()
DEFAULT_WORLD_SEEDS = (900, 901, 902, 903)  # not training worlds (check_held_out verifies it)
NULL_KEYBOARD, NULL_MOUSE = np.zeros(6, np.float32), np.zeros(2, np.float32)


def training_world_seeds(plan: TrainingWorlds = TRAINING_WORLDS) -> set[int]:
    from worldstream.data.render_cmd import derive_seed

    return {derive_seed(plan.render_seed, "world", i) for i in range(plan.worlds)}


def check_held_out(world_seeds, plan: TrainingWorlds = TRAINING_WORLDS) -> list[int]:
    """The seeds as ints; ValueError if any is a training world (or the list is empty)."""
    seeds = [int(s) for s in world_seeds]
    if not seeds:
        raise ValueError("--world-seeds: give at least one world seed")
    used = sorted(set(seeds) & training_world_seeds(plan))
    if used:
        raise ValueError(f"--world-seeds {used} are training worlds (render --seed {plan.render_seed}, "
                         f"{plan.worlds} worlds); pick held-out seeds, e.g. 900,901,902,903")
    return seeds


########################################################################################################
# Ground truth


def ground_truth(world_seed: int, trajectory: str, num_frames: int, height: int = 96, width: int = 160,
                 clip_seed: int = 0):
    """A rendered Clip of world `world_seed`, trajectory kind `trajectory` only (deterministic).

    meta["trajectory"] is the kind produced: a scripted program with no clear spot falls back to a spin.
    """
    from worldstream.data.engine.agents import TRAJECTORIES
    from worldstream.data.engine.clips import EngineConfig, render_clip

    if trajectory not in TRAJECTORIES:
        raise ValueError(f"unknown trajectory {trajectory!r}; expected one of {TRAJECTORIES}")
    cfg = EngineConfig(height=height, width=width, num_frames=int(num_frames), trajectories=(trajectory,),
                       trajectory_weights=(1.0,))
    return render_clip(world_seed, clip_seed, cfg)


########################################################################################################
# Generation


def aligned_frames(cfg, num_frames: int) -> int:
    """The smallest session length >= num_frames: 1 + first_step_frames + k * step_frames (nano 25 + 16k)."""
    first = 1 + cfg.first_step_frames
    if num_frames <= first:
        return first
    return first + -(-(num_frames - first) // cfg.step_frames) * cfg.step_frames


@dataclass
class Generation:
    """One generated video and how it was made."""

    frames: np.ndarray  # uint8 [N, H, W, 3], frame i <-> ground-truth frame i
    step_seconds: float  # wall time of all `step` calls (DiT + decode), reset excluded
    reset_seconds: float  # encode + decode of frame 0
    step_frames: int  # frames the steps returned (before truncation)
    memory: list = field(default_factory=list)  # per clip: rollout MemoryInfo or None (no memory used)
    keyboard: np.ndarray | None = None  # [N, 6] the action rows the session used for frames 0..N-1
    poses: np.ndarray | None = None  # [N, 5] the session's poses (it starts at the origin, yaw 0)

    @property
    def fps(self) -> float:
        """Generated frames per second of stepping."""
        return self.step_frames / self.step_seconds if self.step_seconds > 0 else float("nan")

    @property
    def memory_latents(self) -> int:
        """Memory latents used over all clips (0 with memory off)."""
        return sum(len(m.latents) for m in self.memory if m is not None)


def _rows(a: np.ndarray, lo: int, hi: int, null: np.ndarray) -> np.ndarray:
    """Rows [lo, hi) of a [T, d] array, padded with the null row past T."""
    out = np.repeat(null[None], hi - lo, axis=0)
    take = a[lo:min(hi, len(a))]
    out[:len(take)] = take
    return out


def run_session(bundle, cfg, clip, num_frames: int | None = None, prompt=None) -> Generation:
    """Drive a WorldSession with the clip's actions from its frame 0 (see the module docstring)."""
    from worldstream.infer.session import WorldSession

    if clip.video is None:
        raise ValueError(f"clip {clip.key}: no video (frame 0 is the session's start image)")
    T = clip.num_frames
    n = T if num_frames is None else int(num_frames)
    if not 1 <= n <= T:
        raise ValueError(f"num_frames must be in [1, {T}] (the clip's length), got {n}")
    if (clip.height, clip.width) != (cfg.height, cfg.width):
        raise ValueError(f"clip {clip.key} is {clip.height}x{clip.width} but the session generates "
                         f"{cfg.height}x{cfg.width}")
    kb, ms = np.asarray(clip.keyboard, np.float32), np.asarray(clip.mouse, np.float32)
    out, memory, step_s = [], [], 0.0
    with WorldSession(bundle, cfg) as s:
        t0 = time.perf_counter()
        out.append(s.reset(clip.video[0], clip.prompt if prompt is None else prompt))
        reset_s = time.perf_counter() - t0
        done = 1  # frames returned so far
        while done < n:
            first = s.clip == 0
            lo, hi = (0 if first else done), done + s.next_step_frames  # first clip: + frame 0's row
            t0 = time.perf_counter()
            frames = s.step(_rows(kb, lo, hi, NULL_KEYBOARD), _rows(ms, lo, hi, NULL_MOUSE))
            step_s += time.perf_counter() - t0
            out.append(frames)
            memory.append(s.info.last.memory)
            done += len(frames)
        info = s.info
        kb_used, poses = np.array(info.keyboard[:n]), np.array(info.poses[:n])
    video = np.concatenate(out)
    return Generation(video[:n], step_s, reset_s, len(video) - 1, memory, kb_used, poses)


def generate(bundle, session_cfg, clip, num_frames: int | None = None) -> np.ndarray:
    """uint8 [N, H, W, 3]: the model's video of `clip` (N = num_frames or the clip's length)."""
    return run_session(bundle, session_cfg, clip, num_frames).frames


########################################################################################################
# Session settings and shared options


def session_config(checkpoint=None, *, sampler: str | None = None, steps: int | None = None,
                   seed: int | None = None, use_memory: bool = True):
    """The session the checkpoint suggests (infer/model_bundle.py `suggest_session_config`: the nano preset
    with the sampler of dit/meta.json), with explicit overrides."""
    from worldstream.infer.config import FEW_STEP_STEPS
    from worldstream.infer.model_bundle import suggest_session_config

    cfg = suggest_session_config(checkpoint, "nano")
    changes: dict = {"use_memory": use_memory}
    if sampler is not None:
        changes["sampler"] = sampler
        if sampler == "few_step":
            changes["steps"] = FEW_STEP_STEPS
        elif cfg.sampler == "few_step":  # leaving the student's sampler: the preset's multi-step default
            from worldstream.infer.config import preset

            changes["steps"] = preset("nano").steps
    if steps is not None:
        changes["steps"] = steps
    if seed is not None:
        changes["seed"] = seed
    return cfg.replace(**changes)


def parse_seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--world-seeds must be comma-separated integers, got {text!r}") from None


def parse_trajectories(text: str) -> list[str]:
    from worldstream.data.engine.agents import TRAJECTORIES

    names = [t.strip().replace("-", "_") for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in TRAJECTORIES]
    if bad or not names:
        raise ValueError(f"--trajectory: unknown {bad or text!r}; choose from {', '.join(TRAJECTORIES)}")
    return names


def add_harness_arguments(p: argparse.ArgumentParser, *, trajectory: str, world_seeds=DEFAULT_WORLD_SEEDS
                          ) -> None:
    """--world-seeds, --trajectory, --threads, --quick, --sampler, --steps, --seed (benches add the rest)."""
    p.add_argument("--world-seeds", default=",".join(str(s) for s in world_seeds),
                   help="held-out world seeds, comma-separated (training worlds are refused)")
    p.add_argument("--trajectory", default=trajectory,
                   help="engine trajectory kind(s), comma-separated (data/engine/agents.py TRAJECTORIES)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the machine is shared)")
    p.add_argument("--quick", action="store_true", help="small run: 1 world, short trajectory")
    p.add_argument("--sampler", choices=("unipc", "euler", "few_step"), default=None,
                   help="sampler (default: the checkpoint's dit/meta.json, else the nano preset's)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the sampler's)")
    p.add_argument("--seed", type=int, default=None, help="session noise seed (default: the preset's)")


def add_bench_arguments(p: argparse.ArgumentParser, *, default_out: str, trajectory: str) -> None:
    """All the options of a harness bench but its own: --json, --checkpoint, --out (benchmarks/common.py
    `add_common_arguments`) and `add_harness_arguments`."""
    from worldstream.eval.benchmarks.common import add_common_arguments

    add_common_arguments(p, default_out=default_out)
    add_harness_arguments(p, trajectory=trajectory)


def parse_worlds(args) -> tuple[list[int], list[str]]:
    """(world seeds, trajectory kinds) of a bench's --world-seeds / --trajectory; --quick keeps one world."""
    seeds = parse_seeds(args.world_seeds)
    trajectories = parse_trajectories(args.trajectory)
    return (seeds[:1] if args.quick else seeds), trajectories


def load_for_bench(args) -> tuple:
    """(bundle, checkpoint folder or None) for a bench's args; sets the thread count. The session settings:
    `session_config(checkpoint, sampler=args.sampler, steps=args.steps, seed=args.seed)`."""
    import torch

    from worldstream.infer.model_bundle import default_checkpoint, load_bundle_for

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or default_checkpoint("nano")
    cfg = session_config(checkpoint, sampler=args.sampler, steps=args.steps, seed=args.seed)
    return load_bundle_for(cfg, checkpoint), checkpoint


def run_bench(args, run, write) -> int:
    """The end of a harness bench's `main` (memory, drift): load the bundle (`load_for_bench`) and the
    session the checkpoint suggests with --sampler/--steps/--seed, `res = run(bundle, cfg, progress=print)`,
    then `write(res, args.out, args.json, checkpoint or "random init")` and print the markdown it returns.
    Returns the exit code 0."""
    bundle, checkpoint = load_for_bench(args)
    cfg = session_config(checkpoint, sampler=args.sampler, steps=args.steps, seed=args.seed)
    res = run(bundle, cfg, progress=lambda m: print(m, flush=True))
    print(write(res, args.out, args.json, str(checkpoint or "random init")))
    return 0
