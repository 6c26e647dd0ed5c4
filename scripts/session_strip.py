"""A PNG strip of evenly spaced frames: of a video, or ground truth above the model's frames (README picture).

    worldstream generate --actions "w*40 mouse:right*32 w*24 mouse:left*32" --out out/session.mp4
    python scripts/session_strip.py out/session.mp4 docs/assets/session_strip.png --frames 8 --rows 2
    # a held-out world's trajectory rendered (top) and generated from its frame 0 and actions (bottom)
    python scripts/session_strip.py --compare 905 --trajectory out_and_back docs/assets/session_strip.png
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np


def strip(frames: np.ndarray, count: int, rows: int) -> np.ndarray:
    """uint8 [T, H, W, 3] -> a grid of `count` evenly spaced frames on `rows` rows."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [T, H, W, 3], got {list(frames.shape)}")
    if count < 1 or rows < 1 or count % rows:
        raise ValueError(f"--frames {count} must be a positive multiple of --rows {rows}")
    idx = np.linspace(0, len(frames) - 1, count).round().astype(int)
    per_row = count // rows
    lines = [np.concatenate(list(frames[idx[r * per_row:(r + 1) * per_row]]), axis=1) for r in range(rows)]
    return np.concatenate(lines, axis=0)


def compare(world_seed: int, trajectory: str, num_frames: int, count: int,
            checkpoint: str | None) -> np.ndarray:
    """Ground truth (top row) and the model's frames (bottom row) of one held-out trajectory."""
    import torch

    from worldstream.eval.harness import check_held_out, generate, ground_truth, session_config
    from worldstream.infer.model_bundle import load_bundle_for

    torch.set_num_threads(1)
    check_held_out([world_seed])
    cfg = session_config(checkpoint)
    clip = ground_truth(world_seed, trajectory, num_frames, cfg.height, cfg.width)
    fake = generate(load_bundle_for(cfg, checkpoint), cfg, clip)
    return np.concatenate([strip(clip.video, count, 1), strip(fake, count, 1)], axis=0)


def main() -> int:
    import imageio.v3 as iio
    from PIL import Image

    from worldstream.utils.io import atomic_write_bytes

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("video", type=Path, nargs="?", help="a video (not with --compare)")
    p.add_argument("out", type=Path, help="PNG to write (atomically)")
    p.add_argument("--frames", type=int, default=8, help="frames per strip")
    p.add_argument("--rows", type=int, default=2, help="rows (video mode)")
    p.add_argument("--compare", type=int, metavar="WORLD_SEED", help="held-out world: ground truth vs model")
    p.add_argument("--trajectory", default="out_and_back", help="engine trajectory kind (--compare)")
    p.add_argument("--num-frames", type=int, default=153, help="session length (--compare)")
    p.add_argument("--checkpoint", default=None, help="model folder (default: the shipped checkpoints/nano)")
    p.add_argument("--scale", type=int, default=2, help="integer upscale of the strip")
    a = p.parse_args()
    if (a.video is None) == (a.compare is None):
        p.error("give either a video or --compare WORLD_SEED")
    if a.compare is not None:
        grid = compare(a.compare, a.trajectory, a.num_frames, a.frames, a.checkpoint)
    else:
        grid = strip(iio.imread(a.video), a.frames, a.rows)
    grid = grid.repeat(a.scale, axis=0).repeat(a.scale, axis=1) if a.scale > 1 else grid
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG", optimize=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(a.out, buf.getvalue())
    print(f"wrote {a.out} ({grid.shape[1]}x{grid.shape[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
