"""`worldstream preview`: render a short revisit clip of a small world -> preview.mp4 + contact_sheet.png.

The README's first command: no model needed, runs in seconds on a CPU. The clip comes from the
same `render_clip` the shard writer uses; the video is upscaled (nearest) for viewing, with a
W/A/S/D + mouse HUD in the corner; the contact sheet shows evenly spaced frames with their numbers.
Files are written atomically (temp file + os.replace).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

PREVIEW_FPS = 16
CONTACT_SHEET_FRAMES = 12
CONTACT_SHEET_COLUMNS = 4


def parse_size(text: str) -> tuple[int, int]:
    """'96x160' -> (96, 160) (height x width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must look like HEIGHTxWIDTH (e.g. 96x160), got {text!r}") from None
    if h <= 0 or w <= 0 or h % 2 or w % 2:
        raise ValueError(f"--size needs positive even height and width (H.264), got {text!r}")
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="world seed (clip seed is the same)")
    parser.add_argument("--out", type=Path, default=Path("preview"), help="output directory")
    parser.add_argument("--frames", type=int, default=97, help="number of frames (16 fps)")
    parser.add_argument("--size", default="96x160", help="render size HEIGHTxWIDTH")
    parser.add_argument("--scale", type=int, default=3, help="integer upscale of the video for viewing")
    parser.add_argument(
        "--trajectory",
        default="out_and_back",
        help="agent trajectory (out_and_back, loop_circle, spin, explore, bench, ...)",
    )
    parser.add_argument("--biome", default=None, help="force a biome (default: chosen by the seed)")
    parser.add_argument("--no-hud", action="store_true", help="do not draw the action HUD")


# ---- drawing ---------------------------------------------------------------------------------


def draw_hud(frame: np.ndarray, keyboard: np.ndarray, mouse: np.ndarray) -> np.ndarray:
    """Draw W/A/S/D keys (lit when held) and a mouse arrow (yaw, pitch) in the bottom-left corner."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(frame)
    d = ImageDraw.Draw(img)
    H = frame.shape[0]
    k = max(8, H // 14)  # key size in pixels
    x0, y0 = 4, H - 2 * k - 8
    keys = {"W": (1, 0, 0), "A": (0, 1, 2), "S": (1, 1, 1), "D": (2, 1, 3)}  # col, row, keyboard index
    for name, (col, row, idx) in keys.items():
        on = keyboard[idx] > 0.5
        box = (x0 + col * (k + 2), y0 + row * (k + 2), x0 + col * (k + 2) + k, y0 + row * (k + 2) + k)
        d.rectangle(box, fill=(250, 210, 40) if on else (40, 40, 40), outline=(230, 230, 230))
        d.text((box[0] + k // 2 - 3, box[1] + k // 2 - 5), name, fill=(0, 0, 0) if on else (200, 200, 200))
    # mouse: a circle with a dot displaced by (yaw, pitch); positive pitch looks down -> dot moves down
    cx, cy, r = x0 + 3 * (k + 2) + k, y0 + k, k
    d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(230, 230, 230))
    dx = float(np.clip(mouse[1] / 0.1, -1, 1)) * (r - 3)
    dy = float(np.clip(mouse[0] / 0.1, -1, 1)) * (r - 3)
    col = (250, 210, 40) if (abs(mouse[0]) > 0 or abs(mouse[1]) > 0) else (200, 200, 200)
    d.ellipse((cx + dx - 3, cy + dy - 3, cx + dx + 3, cy + dy + 3), fill=col)
    return np.asarray(img)


def contact_sheet(
    video: np.ndarray, count: int = CONTACT_SHEET_FRAMES, columns: int = CONTACT_SHEET_COLUMNS, scale: int = 2
) -> np.ndarray:
    """Grid of `count` evenly spaced frames (upscaled), each labelled with its frame number."""
    from PIL import Image, ImageDraw

    T, H, W, _ = video.shape
    idx = np.unique(np.linspace(0, T - 1, min(count, T)).round().astype(int))
    rows = int(np.ceil(len(idx) / columns))
    pad = 4
    sheet = Image.new(
        "RGB", (columns * (W * scale + pad) + pad, rows * (H * scale + pad) + pad), (20, 20, 20)
    )
    for n, t in enumerate(idx):
        tile = Image.fromarray(video[t]).resize((W * scale, H * scale), Image.NEAREST)
        d = ImageDraw.Draw(tile)
        d.rectangle((0, 0, 34, 12), fill=(0, 0, 0))
        d.text((2, 0), f"{t:03d}", fill=(255, 255, 255))
        sheet.paste(tile, (pad + (n % columns) * (W * scale + pad), pad + (n // columns) * (H * scale + pad)))
    return np.asarray(sheet)


def _atomic_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    Image.fromarray(image).save(tmp)
    os.replace(tmp, path)


# ---- command -------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    from worldstream.data.engine import TRAJECTORIES, EngineConfig, render_clip
    from worldstream.utils.video import write_mp4

    height, width = parse_size(args.size)
    if args.frames < 2:
        raise ValueError(f"--frames must be >= 2, got {args.frames}")
    if args.scale < 1:
        raise ValueError(f"--scale must be >= 1, got {args.scale}")
    if args.trajectory not in TRAJECTORIES:
        raise ValueError(f"--trajectory must be one of {', '.join(TRAJECTORIES)}; got {args.trajectory!r}")
    cfg = EngineConfig(
        height=height,
        width=width,
        num_frames=args.frames,
        fps=PREVIEW_FPS,
        trajectories=(args.trajectory,),
        trajectory_weights=(1.0,),
        biome=args.biome,
    )
    # 1. render
    clip = render_clip(args.seed, args.seed, cfg)
    # 2. video: upscale, HUD
    video = clip.video
    big = video.repeat(args.scale, axis=1).repeat(args.scale, axis=2) if args.scale > 1 else video
    if not args.no_hud:
        big = np.stack([draw_hud(f, k, m) for f, k, m in zip(big, clip.keyboard, clip.mouse)])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mp4, png = out / "preview.mp4", out / "contact_sheet.png"
    write_mp4(mp4, big, cfg.fps)
    _atomic_png(png, contact_sheet(video))
    # 3. report
    print(
        f"world {args.seed}: {clip.meta['biome']}, trajectory {clip.meta['trajectory']}, "
        f"{clip.num_frames} frames {height}x{width}"
    )
    print(f"prompt: {clip.prompt}")
    print(f"video: {mp4}")
    print(f"contact sheet: {png}")
    return 0
