"""`worldstream generate`: image + prompt + action script -> mp4 with a key/mouse HUD, plus `<out>.json`.

    worldstream generate --actions "w*24 mouse:right*24 mouse:left*24 s*16" --seed 3 --out walk.mp4

* Model: `--checkpoint DIR` (ours or the official release folder); default `checkpoints/<preset>` when it
  exists, else the preset randomly initialised (a warning says so; the trained nano ships later).
* Image: `--image PATH` (any size/mode; centre-cropped and resized), default frame 0 of a procedural world
  rendered by the data engine (world seed `--world-seed`, default `--seed`), whose prompt is then the default.
* Actions: the action script language (infer/actions_script.py, docs/inference.md). The video covers the
  script's frames, rounded up to whole clips with idle rows.
* Output: `--out` (mp4, `SessionConfig.fps` = 16 fps) and the same path with `.json`: per clip the frames,
  latents, poses, retrieved memory (latents, frames, confidences, reference frames) and timings, plus the
  sha256 of the raw decoded frames (same seed + same inputs -> same frames, hence same hash).
* Session: the one the checkpoint suggests (`suggest_session_config`: a DMD student samples with the
  few-step sampler), then the flags. The DiT runs on `--threads` intra-op threads (default 1, see
  `config.DEFAULT_CPU_DIT_THREADS`). With `--async-decode` the whole script is known up front, so clip k+1
  is submitted before clip k's frames are taken: the DiT samples k+1 while the worker decodes k.
All model work goes through `WorldSession`; this module parses, builds, calls and writes.
"""

from __future__ import annotations

import argparse
import hashlib
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HUD_TARGET_HEIGHT = 384  # default --scale: upscale small videos to about this height for viewing
DEFAULT_PROMPT = "a first-person walk through a small world"  # used with --image and no --prompt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from worldstream.infer.actions_script import DEFAULT_SCRIPT

    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="checkpoint folder (default: checkpoints/<preset> if present, else random init)")
    parser.add_argument("--preset", default="nano", choices=("nano", "mg3_5b"), help="session/model preset")
    parser.add_argument("--image", type=Path, default=None,
                        help="start image (default: a frame rendered from a procedural world)")
    parser.add_argument("--world-seed", type=int, default=None,
                        help="world of the default image (default: --seed)")
    parser.add_argument("--prompt", default=None,
                        help="text prompt (default: the rendered world's description)")
    parser.add_argument("--actions", default=DEFAULT_SCRIPT,
                        help="action script, e.g. 'w*40 w+d*16 mouse:right*24 bench:7*57' "
                             f"(default: {DEFAULT_SCRIPT!r})")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (same seed + inputs -> same video)")
    parser.add_argument("--out", type=Path, default=Path("out.mp4"), help="output mp4 (json beside it)")
    add_session_arguments(parser)
    parser.add_argument("--int8", action="store_true", help="INT8 attention projections")
    parser.add_argument("--light-vae", action="store_true", help="decode with the pruned LightVAE decoder")
    parser.add_argument("--async-decode", action="store_true",
                        help="decode in a worker process, overlapped with the DiT's next clip")
    parser.add_argument("--scale", type=int, default=None,
                        help=f"integer upscale of the video (default: to ~{HUD_TARGET_HEIGHT} px high)")
    parser.add_argument("--no-hud", action="store_true", help="do not draw the key/mouse HUD")


def add_session_arguments(parser: argparse.ArgumentParser) -> None:
    """Sampling and speed options shared by `generate` and `play` (no torch import: `--help` stays fast)."""
    parser.add_argument("--sampler", choices=("unipc", "euler", "few_step"), default=None,
                        help="sampler (default: the checkpoint's; few_step for a DMD student, else UniPC)")
    parser.add_argument("--steps", type=int, default=None,
                        help="denoising steps per clip (default: the sampler's: UniPC 3, few_step 4)")
    parser.add_argument("--shift", type=float, default=None, help="timestep shift (default: preset, 5.0)")
    parser.add_argument("--no-memory", action="store_true", help="no memory retrieval (ablation)")
    parser.add_argument("--int8-compute", choices=("auto", "int8", "dequant"), default="auto",
                        help="how INT8 layers compute: int8 GEMM (W8A8) or dequantised weights "
                             "(default auto: int8 on CUDA, dequant on CPUs, where W8A8 is slower)")
    parser.add_argument("--threads", type=int, default=None,
                        help="DiT intra-op threads (default: config.DEFAULT_CPU_DIT_THREADS = 1; with async "
                             "decode the decode worker gets the other cores)")


def apply_session_arguments(cfg, args: argparse.Namespace):
    """`cfg` (the checkpoint's suggestion) with --sampler/--steps/--shift/--no-memory/--int8-compute/
    --threads applied."""
    from worldstream.infer.config import FEW_STEP_STEPS, SessionConfig, with_cpu_threads

    changes = {"use_memory": not args.no_memory, "int8_compute": args.int8_compute}
    for name in ("sampler", "steps", "shift"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.sampler is not None and args.steps is None:  # the chosen sampler's own step count
        changes["steps"] = FEW_STEP_STEPS if args.sampler == "few_step" else SessionConfig.steps
    if args.sampler is None and args.steps is not None and cfg.sampler == "few_step" \
            and args.steps != FEW_STEP_STEPS:
        raise ValueError(f"--steps {args.steps}: the checkpoint's few-step sampler has {FEW_STEP_STEPS} "
                         "fixed steps; pass --sampler unipc (or euler) to sample with other step counts")
    return with_cpu_threads(cfg.replace(**changes), args.threads)


@dataclass
class GenerateResult:
    frames: np.ndarray  # uint8 [T, H, W, 3] as decoded (no HUD, no upscale)
    keyboard: np.ndarray  # [T, 6] the action row of every frame (the script padded with idle rows)
    mouse: np.ndarray  # [T, 2]
    record: dict  # the json record


def session_config(args: argparse.Namespace):
    from worldstream.infer.model_bundle import suggest_session_config

    cfg = suggest_session_config(args.checkpoint, args.preset)
    cfg = cfg.replace(seed=args.seed, int8=args.int8, light_vae=args.light_vae or cfg.light_vae,
                      async_decode=args.async_decode)
    return apply_session_arguments(cfg, args)


def _start_image(args: argparse.Namespace, cfg) -> tuple[np.ndarray, str, str]:
    """(uint8 image, prompt, description of the image source)."""
    if args.image is not None:
        from PIL import Image, UnidentifiedImageError

        if not args.image.is_file():
            raise FileNotFoundError(f"--image not found: {args.image}")
        try:
            with Image.open(args.image) as im:
                image = np.array(im.convert("RGB"))
        except UnidentifiedImageError:
            raise ValueError(f"--image {args.image} is not an image PIL can read") from None
        return image, args.prompt or DEFAULT_PROMPT, str(args.image)
    from worldstream.data.engine import EngineConfig, render_clip

    seed = args.seed if args.world_seed is None else args.world_seed
    clip = render_clip(seed, seed, EngineConfig(height=cfg.height, width=cfg.width, num_frames=2))
    return clip.video[0], args.prompt or clip.prompt, f"procedural world {seed} ({clip.meta['biome']})"


def run(args: argparse.Namespace) -> GenerateResult:
    """Build the session, stream every clip; no files written."""
    import torch

    from worldstream.infer.actions_script import parse_script
    from worldstream.infer.model_bundle import load_bundle_for
    from worldstream.infer.session import WorldSession

    t_start = time.perf_counter()
    # 1. config, actions (whole clips), start image, model
    cfg = session_config(args)
    rows = parse_script(args.actions)
    sched = cfg.schedule
    clips = 1
    while sched.num_frames(clips) < len(rows):
        clips += 1
    rows = rows.pad_to(sched.num_frames(clips))
    image, prompt, image_source = _start_image(args, cfg)
    bundle = load_bundle_for(cfg, args.checkpoint, args.preset)

    def clip_rows(k: int) -> tuple[np.ndarray, np.ndarray]:  # clip 0: rows of frames 0..end-1
        start = 0 if k == 0 else sched.window(k - 1).end
        end = sched.window(k).end
        return rows.keyboard[start:end], rows.mouse[start:end]

    # 2. stream: reset, then clip by clip; async: clip k+1 is submitted before clip k's frames are taken
    threads_before = torch.get_num_threads()
    if not cfg.async_decode:
        torch.set_num_threads(cfg.dit_threads)  # async: the session splits the cores itself
    ahead = 1 if cfg.async_decode else 0
    try:
        with WorldSession(bundle, cfg) as session:
            frames = [session.reset(image, prompt)]
            clip_records = []
            submitted = 0
            t_stream = time.perf_counter()
            for k in range(clips):
                while submitted < min(clips, k + 1 + ahead):
                    session.submit(*clip_rows(submitted))
                    submitted += 1
                frames.append(session.next_frames())
                clip_records.append(_clip_record(k, sched, session.info))
            t_end = time.perf_counter()
    finally:
        torch.set_num_threads(threads_before)
    video = np.concatenate(frames)  # [T, H, W, 3]

    # 3. record
    stream_s = t_end - t_stream
    record = {
        "checkpoint": bundle.source, "random_init": bundle.random_init, "preset": args.preset,
        "image": image_source, "prompt": prompt, "actions": args.actions, "seed": cfg.seed,
        "size": [cfg.height, cfg.width], "fps": cfg.fps, "num_frames": int(len(video)),
        "frames_sha256": hashlib.sha256(video.tobytes()).hexdigest(),
        "session": {"sampler": cfg.sampler, "steps": cfg.steps, "shift": cfg.shift,
                    "use_memory": cfg.use_memory, "num_memory": cfg.num_memory, "int8": cfg.int8,
                    "int8_compute": cfg.int8_compute, "light_vae": cfg.light_vae,
                    "async_decode": cfg.async_decode, "dit_threads": cfg.dit_threads,
                    "dtype": cfg.dtype, "first_clip_frames": sched.first_clip_frames,
                    "clip_frames": sched.clip_frames, "new_frames": sched.new_frames,
                    "past_latents": sched.past_latents},
        "clips": clip_records,
        "timing": {"total_s": t_end - t_start, "stream_s": stream_s,
                   "stream_fps": (len(video) - 1) / stream_s if stream_s > 0 else None},
    }
    return GenerateResult(video, rows.keyboard, rows.mouse, record)


def _clip_record(k: int, sched, info) -> dict:
    """Clip k's json record; `info` = the session's SessionInfo right after clip k's frames were taken."""
    w, last = sched.window(k), info.last
    first_frame = 1 if k == 0 else sched.window(k - 1).end
    mem = last.memory
    return {
        "clip": k,
        "frames": [first_frame, w.end],
        "latents": list(last.new_latents),
        "window_frames": [w.start, w.end],
        "poses": info.poses[first_frame:w.end].tolist(),
        "memory": None if mem is None else {
            "latents": list(mem.latents), "frames": list(mem.frames),
            "confidences": list(mem.confidences), "reference_frames": list(mem.base_frames),
            "anchor": mem.anchor},
        "timings": last.timings,
    }


def hud_video(result: GenerateResult, scale: int | None, hud: bool) -> np.ndarray:
    """Upscale (nearest) and draw the key/mouse HUD of each frame's action row."""
    from worldstream.data.preview import draw_hud

    video = result.frames
    scale = max(1, HUD_TARGET_HEIGHT // video.shape[1]) if scale is None else scale
    if scale < 1:
        raise ValueError(f"--scale must be >= 1, got {scale}")
    big = video.repeat(scale, axis=1).repeat(scale, axis=2) if scale > 1 else video
    if not hud:
        return big
    return np.stack([draw_hud(f, result.keyboard[i], result.mouse[i]) for i, f in enumerate(big)])


def main(args: argparse.Namespace) -> int:
    from worldstream.infer.model_bundle import RandomInitWarning
    from worldstream.utils.io import atomic_write_json
    from worldstream.utils.video import write_mp4

    out = Path(args.out)
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"--out must end in .mp4, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RandomInitWarning)
        result = run(args)
    for w in caught:
        print(f"worldstream: warning: {w.message}")
    write_mp4(out, hud_video(result, args.scale, not args.no_hud), result.record["fps"])
    json_path = out.with_suffix(".json")
    atomic_write_json(json_path, result.record)
    r = result.record
    print(f"{r['num_frames']} frames {r['size'][0]}x{r['size'][1]} in {len(r['clips'])} clips, "
          f"{r['timing']['stream_fps']:.1f} frames/s streaming ({r['checkpoint']})")
    print(f"prompt: {r['prompt']}")
    print(f"video: {out}\nrecord: {json_path}")
    return 0
