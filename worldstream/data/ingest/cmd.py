"""`worldstream data ingest`: RealEstate10K / poses.npy / transforms.json -> clip shards in MG3's convention.

A bad input (corrupt, truncated, NaN, non-orthonormal rotation, missing frames) is reported with its
file and line and skipped; the rest of the batch goes on. Exit code 0 if any input was ingested,
1 if all failed. Conventions and formulas: docs/ingest.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

FORMATS = ("realestate10k", "poses_npy", "nerfstudio")
VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".mov", ".avi")
DEFAULT_CLIPS_PER_SHARD = 64


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="camera files / clip directories, or directories holding many of them")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, type=Path, help="output dataset directory (no shards in it yet)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--frames", type=Path, help="frames directory (or a directory of per-clip frame dirs)")
    src.add_argument("--video", type=Path, help="video file (or a directory of <clip>.mp4 files)")
    p.add_argument("--size", help="HxW of the attached video and of the intrinsics, e.g. 96x160")
    p.add_argument("--scale", type=float, help="source units -> MG3 pose units (default: estimated per clip)")
    p.add_argument("--up", choices=("camera_y", "horizon"), default="camera_y", help="world-up estimate")
    p.add_argument("--prompt", default="", help="prompt stored in every clip")
    p.add_argument("--clips-per-shard", type=int, default=DEFAULT_CLIPS_PER_SHARD)
    p.add_argument("--video-format", choices=("npz", "mp4"), default="npz")


def expand_inputs(fmt: str, inputs: list[str]) -> list[Path]:
    """Input arguments -> one path per clip (files or clip directories); missing paths fail later."""
    marker = {"poses_npy": "poses.npy", "nerfstudio": "transforms.json"}.get(fmt)
    items: list[Path] = []
    for text in inputs:
        path = Path(text)
        if not path.is_dir():
            items.append(path)
        elif fmt == "realestate10k":
            items.extend(sorted(path.glob("*.txt")) or [path])
        elif (path / marker).is_file():
            items.append(path)
        else:
            items.extend(sorted(d for d in path.iterdir() if (d / marker).is_file()) or [path])
    return items


def _stem(fmt: str, item: Path) -> str:
    return item.stem if fmt == "realestate10k" else (item.name if item.is_dir() else item.parent.name)


def _media_for(item_stem: str, media: Path | None, single: bool, kind: str) -> Path | None:
    """Frames dir / video of one clip: MEDIA/<stem>[.ext] when it exists, else MEDIA for a single input."""
    if media is None:
        return None
    if media.is_dir():
        if kind == "frames" and (media / item_stem).is_dir():
            return media / item_stem
        if kind == "video":
            for ext in VIDEO_EXTS:
                if (media / f"{item_stem}{ext}").is_file():
                    return media / f"{item_stem}{ext}"
    if single and (kind == "frames" or media.is_file()):
        return media
    raise FileNotFoundError(f"no {kind} for clip {item_stem!r} in {media} (expected {media}/{item_stem}"
                            f"{'/' if kind == 'frames' else '.mp4'})")


def main(args: argparse.Namespace) -> int:
    from worldstream.data.ingest import nerfstudio, poses_npy, realestate10k
    from worldstream.data.ingest.common import IngestConfig, parse_size, write_clip_shards
    from worldstream.data.shards import ShardConfig

    cfg = IngestConfig(size=parse_size(args.size) if args.size else None, scale=args.scale, up=args.up,
                       prompt=args.prompt)
    if args.format == "nerfstudio" and (args.frames or args.video):
        raise ValueError("nerfstudio frames come from the file_path entries of transforms.json; "
                         "drop --frames/--video")
    items = expand_inputs(args.format, args.inputs)
    single = len(items) == 1
    results: list[tuple[Path, str]] = []
    keys: set[str] = set()

    def clips() -> Iterator:
        for item in items:
            try:
                stem = _stem(args.format, item)
                frames = _media_for(stem, args.frames, single, "frames")
                video = _media_for(stem, args.video, single, "video")
                if args.format == "realestate10k":
                    clip = realestate10k.load_clip(item, cfg, frames_dir=frames, video=video)
                elif args.format == "poses_npy":
                    clip = poses_npy.load_clip(item, cfg, frames_dir=frames, video=video)
                else:
                    clip = nerfstudio.load_clip(item, cfg)
            except (ValueError, OSError) as e:  # IngestError is a ValueError; missing files are OSErrors
                results.append((item, f"FAILED  {e}"))
                print(f"FAILED  {e}", file=sys.stderr)
                continue
            base, n = clip.key, 1
            while clip.key in keys:  # same stem in two input directories
                n += 1
                clip.key = f"{base[:76]}_{n}"
            keys.add(clip.key)
            vid = f"video {clip.height}x{clip.width}" if clip.video is not None else "poses only"
            line = (f"ok      {clip.key}: {clip.num_frames} frames, {vid}, "
                    f"scale {clip.meta['scale_to_pose_units']:.3g}, "
                    f"action confidence {clip.meta['action_confidence']:.2f}")
            results.append((item, line))
            print(line)
            yield clip

    dataset = {"source": "ingest", "format": args.format, "size": list(cfg.size) if cfg.size else None,
               "scale": cfg.scale, "up": cfg.up}
    shard_cfg = ShardConfig(video_format=args.video_format)
    counts = write_clip_shards(args.out, clips(), args.clips_per_shard, shard_cfg, dataset)
    failed = sum(r.startswith("FAILED") for _, r in results)
    print(f"\ningested {len(results) - failed} of {len(results)} inputs ({counts['frames']} frames) into "
          f"{counts['shards']} shard(s) in {args.out}; {failed} failed")
    return 0 if failed < len(results) else 1
