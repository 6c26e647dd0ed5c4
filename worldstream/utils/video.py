"""Atomic mp4 writing: uint8 frames [N, H, W, 3] -> H.264 (yuv420p) through imageio's ffmpeg writer.

The one mp4 writer of `worldstream preview`, `generate`, `play --terminal` and the training sample videos.

Notable:
* Atomic like utils/io.py: the video is encoded into a hidden temp file beside the target, fsync'ed, then
  renamed over it (`os.replace`); on any error the temp file is removed and the target is left untouched.
  NOTE the temp name ends in .mp4 (`.clip.tmp-<pid>.mp4`): imageio's ffmpeg writer picks the
  container from the file extension, so utils/io's `<name>.tmp-<pid>` cannot be used here.
* `macro_block_size=2`: sizes such as 96x160 are kept as they are (imageio's default 16 would pad them).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["MP4", "Mp4Config", "mp4_temp_path", "write_mp4"]


@dataclass(frozen=True)
class Mp4Config:
    codec: str = "libx264"  # H.264
    pixelformat: str = "yuv420p"  # what every player decodes
    macro_block_size: int = 2  # imageio pads H and W to multiples of this (2: the minimum yuv420p needs)
    quality: int = 8  # imageio/ffmpeg quality (0-10), the default of every caller


MP4 = Mp4Config()


def mp4_temp_path(path: str | os.PathLike) -> Path:
    """The hidden temp name `path` is encoded to by this process (same directory, always an .mp4 suffix)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}.mp4")


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int, quality: int = MP4.quality,
              cfg: Mp4Config = MP4) -> None:
    """uint8 frames [N, H, W, 3] -> an H.264 mp4 at `fps`, written atomically (temp file + os.replace)."""
    import imageio.v2 as imageio

    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"write_mp4 {path}: frames must be uint8 [N, H, W, 3] with N >= 1, got "
                         f"{frames.dtype} {list(frames.shape)}")
    if not path.parent.is_dir():
        raise NotADirectoryError(f"cannot write {path}: directory {path.parent} does not exist")
    tmp = mp4_temp_path(path)
    try:
        # 1. encode into the temp file (ffmpeg sees the .mp4 suffix)
        with imageio.get_writer(tmp, fps=fps, codec=cfg.codec, quality=quality, pixelformat=cfg.pixelformat,
                                macro_block_size=cfg.macro_block_size) as writer:
            for f in frames:  # [H, W, 3]
                writer.append_data(f)
        # 2. flush it to disk, then rename it over the target
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
