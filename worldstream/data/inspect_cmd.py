"""`worldstream data inspect DIR`: what is in a shard directory, as numbers and two pictures.

Prints shard/clip/frame counts, sources and biomes, prompt examples, per-clip speed and yaw-rate
summaries, revisits, key and mouse usage, and read errors; writes `stats.json`, `contact_sheet.png`
(evenly spaced frames of clips from across the shards) and `trajectories.png` (top-down camera paths
with heading ticks). Motion is measured from c2w, so it works for every source (rendered or ingested):
speed in pose units per frame (MG3: one W frame = 12.35), yaw from the camera's forward axis.
"""

from __future__ import annotations

import argparse
import io
import json
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worldstream.data.actions import KEYS, MG3_KINEMATICS
from worldstream.data.schema import Clip
from worldstream.geometry.camera import TRANSLATION_SCALE


@dataclass(frozen=True)
class InspectConfig:
    sheet_clips: int = 6  # rows of the contact sheet
    sheet_frames: int = 8  # columns (evenly spaced frames per clip)
    sheet_min_height: int = 72  # upscale (nearest) smaller frames to at least this many pixels
    max_trajectories: int = 32  # camera paths drawn
    heading_ticks: int = 8  # heading ticks per path
    heading_tick_frac: float = 0.02  # tick length as a fraction of the plotted extent
    legend_entries: int = 10
    prompt_examples: int = 5
    revisit_radius: float = 100.0  # pose units (1 m): "back at a visited place"...
    revisit_heading_deg: float = 45.0  # ...looking the same way (within this angle)...
    revisit_gap_frac: float = 0.25  # ...after at least this fraction of the clip away


# -------------------------------------------------------------------------------------------------
# per-clip motion


def positions(clip: Clip) -> np.ndarray:
    """[T,3] camera positions in pose units (c2w translation / MG3's 0.01 scale)."""
    return clip.c2w[:, :3, 3] / TRANSLATION_SCALE


def yaw_deg(clip: Clip) -> np.ndarray:
    """[T] heading in degrees from the camera's forward axis (camera +z, c2w column 2) in the XY plane."""
    fwd = clip.c2w[:, :3, 2]
    return np.degrees(np.arctan2(fwd[:, 1], fwd[:, 0]))


def wrap180(a: np.ndarray) -> np.ndarray:
    return (a + 180.0) % 360.0 - 180.0


def has_revisit(pos: np.ndarray, yaw: np.ndarray, cfg: InspectConfig) -> bool:
    """Does the camera come back near an earlier pose (same place, same view) after a gap?"""
    T = len(pos)
    gap = max(2, int(cfg.revisit_gap_frac * T))
    if T <= gap:
        return False
    dist = np.linalg.norm(pos[:, None, :2] - pos[None, :, :2], axis=-1)  # [T,T]
    dyaw = np.abs(wrap180(yaw[:, None] - yaw[None, :]))
    t, s = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
    hit = (t - s >= gap) & (dist < cfg.revisit_radius) & (dyaw < cfg.revisit_heading_deg)
    # exclude standing still: the camera must have left (moved > radius) in between
    if not hit.any():
        return False
    for ti, si in zip(*np.nonzero(hit)):
        if dist[si, si:ti].max() > cfg.revisit_radius or dyaw[si, si:ti].max() > cfg.revisit_heading_deg:
            return True
    return False


@dataclass
class ClipSummary:
    key: str
    prompt: str
    source: str
    biome: str | None
    frames: int
    size: str
    speed: float  # mean horizontal speed, pose units / frame
    yaw_rate: float  # mean |yaw change|, degrees / frame
    path_length: float  # pose units
    revisit: bool
    keys_on: np.ndarray  # [6] frames with each key held
    mouse_on: np.ndarray  # [2] frames with |pitch|, |yaw| above the dead zone
    xy: np.ndarray  # [T,2] positions
    yaw: np.ndarray  # [T] degrees


def summarise(clip: Clip, cfg: InspectConfig) -> ClipSummary:
    pos, yaw = positions(clip), yaw_deg(clip)
    step = np.linalg.norm(np.diff(pos[:, :2], axis=0), axis=-1) if clip.num_frames > 1 else np.zeros(1)
    turn = np.abs(wrap180(np.diff(yaw))) if clip.num_frames > 1 else np.zeros(1)
    biome = clip.meta.get("biome") or clip.meta.get("theme")
    return ClipSummary(
        key=clip.key, prompt=clip.prompt, source=clip.source, biome=None if biome is None else str(biome),
        frames=clip.num_frames, size=f"{clip.height}x{clip.width}", speed=float(step.mean()),
        yaw_rate=float(turn.mean()), path_length=float(step.sum()), revisit=has_revisit(pos, yaw, cfg),
        keys_on=(clip.keyboard > 0.5).sum(0),
        mouse_on=(np.abs(clip.mouse) >= MG3_KINEMATICS.mouse_deadzone).sum(0), xy=pos[:, :2], yaw=yaw)


def spread(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"min": float(v.min()), "median": float(np.median(v)), "mean": float(v.mean()),
            "max": float(v.max())}


# -------------------------------------------------------------------------------------------------
# pictures


def contact_sheet(clips: list[Clip], cfg: InspectConfig) -> Any:
    """PIL image: one row per clip (label + `sheet_frames` evenly spaced frames)."""
    from PIL import Image, ImageDraw

    H, W = clips[0].video.shape[1:3]
    scale = max(1, -(-cfg.sheet_min_height // H))
    ch, cw = H * scale, W * scale
    label_h = 14
    sheet = Image.new("RGB", (cw * cfg.sheet_frames, (ch + label_h) * len(clips)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for r, clip in enumerate(clips):
        y0 = r * (ch + label_h)
        label = f"{clip.key}: {clip.prompt}"[: cw * cfg.sheet_frames // 6]  # ~6 px per default-font glyph
        draw.text((3, y0 + 1), label, fill=(230, 230, 230))
        idx = np.linspace(0, clip.num_frames - 1, cfg.sheet_frames).round().astype(int)
        for c, t in enumerate(idx):
            frame = Image.fromarray(clip.video[t])
            if frame.size != (W, H):  # clips of another size: fit the cell
                frame = frame.resize((W, H))
            sheet.paste(frame.resize((cw, ch), Image.NEAREST), (c * cw, y0 + label_h))
    return sheet


def _draw_paths(ax: Any, paths: list[tuple[str, np.ndarray, np.ndarray]], cfg: InspectConfig,
                title: str, axis_names: tuple[str, str] = ("world right", "world forward")) -> None:
    """paths: (key, xy [T,2], yaw [T] deg). Screen right = world +Y, screen up = world +X: the true
    view from above in MG3's left-handed X-forward / Y-right / Z-up frame."""
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab20")
    extent = max(float(np.ptp(np.concatenate([xy for _, xy, _ in paths]), axis=0).max()), 1.0)
    tick = cfg.heading_tick_frac * extent
    for i, (key, xy, yaw) in enumerate(paths):
        color = cmap(i % 20)
        x, y = xy[:, 0], xy[:, 1]
        ax.plot(y, x, "-", color=color, lw=1.2, label=key if i < cfg.legend_entries else None)
        ax.plot(y[0], x[0], "o", color=color, ms=4)
        idx = np.linspace(0, len(x) - 1, min(cfg.heading_ticks, len(x))).round().astype(int)
        rad = np.radians(yaw[idx])
        for j, dx, dy in zip(idx, np.cos(rad), np.sin(rad)):
            ax.plot([y[j], y[j] + tick * dy], [x[j], x[j] + tick * dx], "-", color=color, lw=2)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel(f"y ({axis_names[0]}), pose units")
    ax.set_ylabel(f"x ({axis_names[1]}), pose units")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def trajectory_plot(summaries: list[ClipSummary], cfg: InspectConfig) -> bytes:
    """PNG bytes, two top-down panels: paths in world coordinates (coverage), and each path moved to
    start at the origin heading up (+X), which shows the trajectory shapes (loops, out-and-back, spins)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = summaries[: cfg.max_trajectories]
    world = [(s.key, s.xy, s.yaw) for s in shown]
    local = []
    for s in shown:
        c, si = np.cos(np.radians(s.yaw[0])), np.sin(np.radians(s.yaw[0]))
        d = s.xy - s.xy[0]
        rel = np.stack([c * d[:, 0] + si * d[:, 1], -si * d[:, 0] + c * d[:, 1]], axis=-1)  # rotate by -yaw0
        local.append((s.key, rel, wrap180(s.yaw - s.yaw[0])))
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.5), dpi=100)
    _draw_paths(axes[0], world, cfg, f"world coordinates ({len(shown)} clips; o = start, ticks = heading)")
    _draw_paths(axes[1], local, cfg, "relative to each clip's start pose (start heading = up)",
                ("right of start", "ahead of start"))
    axes[0].legend(fontsize=6, loc="best")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


# -------------------------------------------------------------------------------------------------
# the command


def inspect_dataset(root: Path, out: Path, cfg: InspectConfig = InspectConfig()) -> dict[str, Any]:
    from worldstream.data.shards import ShardReader, iter_shard
    from worldstream.utils.io import atomic_write_bytes, atomic_write_json

    reader = ShardReader(root, with_video=False)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        summaries = [summarise(c, cfg) for c in reader]
    if not summaries:
        raise ValueError(f"{root}: no readable clips ({reader.stats.as_dict()})")
    total_frames = sum(s.frames for s in summaries)
    keys_on = np.sum([s.keys_on for s in summaries], axis=0)
    mouse_on = np.sum([s.mouse_on for s in summaries], axis=0)
    stats = {
        "root": str(root), "shards": len(reader), "clips": len(summaries), "frames": total_frames,
        "sizes": dict(Counter(s.size for s in summaries)),
        "sources": dict(Counter(s.source for s in summaries)),
        "biomes": dict(Counter(s.biome for s in summaries if s.biome is not None)),
        "prompt_examples": list(dict.fromkeys(s.prompt for s in summaries))[: cfg.prompt_examples],
        "speed_units_per_frame": spread([s.speed for s in summaries]),
        "yaw_rate_deg_per_frame": spread([s.yaw_rate for s in summaries]),
        "path_length_units": spread([s.path_length for s in summaries]),
        "revisit_fraction": float(np.mean([s.revisit for s in summaries])),
        "key_usage": {k: float(n / total_frames) for k, n in zip(KEYS, keys_on)},
        "mouse_usage": {a: float(n / total_frames) for a, n in zip(("pitch", "yaw"), mouse_on)},
        "read": reader.stats.as_dict(),
    }

    # contact sheet: the first video clip of evenly spaced shards (spread over the dataset)
    sheet_clips: list[Clip] = []
    picks = np.unique(np.linspace(0, len(reader) - 1, cfg.sheet_clips).round().astype(int))
    per_shard = -(-cfg.sheet_clips // len(picks))
    for i in picks:
        taken = 0
        for clip in iter_shard(reader.paths[i]):
            if clip.video is not None and taken < per_shard and len(sheet_clips) < cfg.sheet_clips:
                sheet_clips.append(clip)
                taken += 1
            if taken == per_shard:
                break
    out.mkdir(parents=True, exist_ok=True)
    files = {"stats": out / "stats.json", "trajectories": out / "trajectories.png"}
    atomic_write_json(files["stats"], stats)
    atomic_write_bytes(files["trajectories"], trajectory_plot(summaries, cfg))
    if sheet_clips:
        buf = io.BytesIO()
        contact_sheet(sheet_clips, cfg).save(buf, format="PNG")
        files["contact_sheet"] = out / "contact_sheet.png"
        atomic_write_bytes(files["contact_sheet"], buf.getvalue())
    stats["files"] = {k: str(v) for k, v in files.items()}
    return stats


def format_stats(s: dict[str, Any]) -> str:
    def fmt(d: dict[str, float]) -> str:
        return f"min {d['min']:.2f}  median {d['median']:.2f}  mean {d['mean']:.2f}  max {d['max']:.2f}"

    lines = [
        f"{s['root']}: {s['shards']} shards, {s['clips']} clips, {s['frames']} frames",
        "sizes:    " + ", ".join(f"{k} x{v}" for k, v in s["sizes"].items()),
        "sources:  " + ", ".join(f"{k} x{v}" for k, v in s["sources"].items()),
        "biomes:   " + (", ".join(f"{k} x{v}" for k, v in sorted(s["biomes"].items())) or "(none recorded)"),
        "speed (units/frame):   " + fmt(s["speed_units_per_frame"]),
        "yaw rate (deg/frame):  " + fmt(s["yaw_rate_deg_per_frame"]),
        "path length (units):   " + fmt(s["path_length_units"]),
        f"clips with a revisit:  {100 * s['revisit_fraction']:.0f}%",
        "keys held (% frames):  " + "  ".join(f"{k} {100 * v:.0f}" for k, v in s["key_usage"].items()),
        "mouse active (% frames): " + "  ".join(f"{k} {100 * v:.0f}" for k, v in s["mouse_usage"].items()),
        "prompts:",
        *[f"  - {p}" for p in s["prompt_examples"]],
    ]
    r = s["read"]
    if r["shards_failed"] or r["samples_skipped"]:
        lines.append(f"read problems: {r['shards_failed']} shard(s) failed, "
                     f"{r['samples_skipped']} sample(s) skipped")
    lines += [f"wrote {v}" for v in s.get("files", {}).values()]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", type=Path, help="dataset directory (shard-*.tar + index.json)")
    p.add_argument("--out", type=Path, help="where to write stats.json and the PNGs (default: ROOT/inspect)")
    p.add_argument("--json", action="store_true", help="print the stats as JSON instead of text")


def main(args: argparse.Namespace) -> int:
    stats = inspect_dataset(args.root, args.out or args.root / "inspect")
    print(json.dumps(stats, indent=1) if args.json else format_stats(stats))
    return 0
