"""RealEstate10K camera files -> Clip in MG3's convention (docs/ingest.md).

File format (one file per clip, from the dataset's release):
```
<video URL>
<timestamp_us> fx fy cx cy 0 0 r00 r01 r02 t0 r10 r11 r12 t1 r20 r21 r22 t2     (one line per frame)
```
fx fy cx cy are normalised by the image width/height; the 3x4 matrix is world-to-camera, row-major,
right-handed world, OpenCV camera (x right, y down, z forward). c2w = [R^T | -R^T t].
Frames: a directory holding `<timestamp_us>.<png|jpg>` (or exactly one image per line, in natural
order), or a video file (frame = round(timestamp_s * fps)). Scale is arbitrary per clip (SfM), so
translations are rescaled (common.IngestConfig.scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worldstream.data.ingest.common import (
    DEFAULT_INGEST,
    IngestConfig,
    IngestError,
    check_rotations,
    clip_key,
    list_images,
    make_clip,
    read_clip_frames,
)
from worldstream.data.schema import Clip

NUM_COLUMNS = 19  # timestamp + 4 intrinsics + 2 unused + 12 pose entries
US_PER_S = 1e6


@dataclass
class CameraFile:
    path: Path
    url: str
    timestamps_us: np.ndarray  # [T] int64
    intrinsics_norm: np.ndarray  # [T,4] float64 fx/W, fy/H, cx/W, cy/H
    w2c: np.ndarray  # [T,3,4] float64
    lines: list[int]  # 1-based file line of each frame

    @property
    def c2w(self) -> np.ndarray:
        """[T,4,4] camera-to-world (right-handed world, OpenCV camera)."""
        R, t = self.w2c[:, :, :3], self.w2c[:, :, 3]
        c2w = np.zeros((len(R), 4, 4))
        c2w[:, :3, :3] = np.swapaxes(R, 1, 2)
        c2w[:, :3, 3] = -np.einsum("tji,tj->ti", R, t)  # -R^T t
        c2w[:, 3, 3] = 1.0
        return c2w


def read_camera_file(path: str | Path, cfg: IngestConfig = DEFAULT_INGEST) -> CameraFile:
    """Parse and check one RealEstate10K camera file; IngestError names the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise IngestError(path, f"not a UTF-8 text file ({e})") from e
    lines = text.splitlines()
    if not any(ln.strip() for ln in lines):
        raise IngestError(path, "empty file (expected a URL line and one camera line per frame)")
    first = next(i for i, ln in enumerate(lines) if ln.strip())
    url = lines[first].strip()
    if len(url.split()) != 1 or _is_number(url):
        raise IngestError(path, f"expected the video URL, got {url[:60]!r}", f"line {first + 1}")
    rows, where = [], []
    for i in range(first + 1, len(lines)):
        tokens = lines[i].split()
        if not tokens:
            continue
        if len(tokens) != NUM_COLUMNS:
            raise IngestError(path, f"expected {NUM_COLUMNS} columns, got {len(tokens)} (truncated line?)",
                              f"line {i + 1}")
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            bad = next(t for t in tokens if not _is_number(t))
            raise IngestError(path, f"non-numeric token {bad[:30]!r}", f"line {i + 1}") from None
        if not np.isfinite(values).all():
            col = int(np.argmax(~np.isfinite(values)))
            raise IngestError(path, f"NaN/inf value in column {col + 1}", f"line {i + 1}")
        rows.append(values)
        where.append(f"line {i + 1}")
    if len(rows) < cfg.min_frames:
        raise IngestError(path, f"has {len(rows)} camera lines, need at least {cfg.min_frames}")
    data = np.asarray(rows, dtype=np.float64)  # [T,19]
    ts = data[:, 0]
    if (ts != np.round(ts)).any() or (ts < 0).any():
        i = int(np.argmax((ts != np.round(ts)) | (ts < 0)))
        raise IngestError(path, f"timestamp {ts[i]} is not a non-negative integer (microseconds)", where[i])
    if (np.diff(ts) <= 0).any():
        i = int(np.argmax(np.diff(ts) <= 0)) + 1
        raise IngestError(path, f"timestamp {int(ts[i])} does not increase (previous {int(ts[i - 1])})",
                          where[i])
    intr = data[:, 1:5]
    if (intr[:, :2] <= 0).any():
        i = int(np.argmax((intr[:, :2] <= 0).any(1)))
        raise IngestError(path, f"focal lengths must be positive, got fx={intr[i, 0]}, fy={intr[i, 1]}",
                          where[i])
    w2c = data[:, 7:19].reshape(-1, 3, 4)
    check_rotations(w2c[:, :, :3], path, where, cfg.ortho_tol)
    return CameraFile(path, url, ts.astype(np.int64), intr, w2c, [int(w.split()[1]) for w in where])


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def frames_for(cams: CameraFile, frames_dir: Path) -> list[Path]:
    """Image per camera line: `<timestamp>.<ext>` when all exist, else one image per line in natural order."""
    images = list_images(frames_dir)
    by_stem = {p.stem: p for p in images}
    named = [by_stem.get(str(int(t))) for t in cams.timestamps_us]
    if all(p is not None for p in named):
        return named  # type: ignore[return-value]
    if len(images) == len(cams.timestamps_us):
        return images
    raise IngestError(cams.path, f"frames directory {frames_dir} has {len(images)} images and no "
                                 f"<timestamp>.<ext> names; expected {len(cams.timestamps_us)}")


def load_clip(path: str | Path, cfg: IngestConfig = DEFAULT_INGEST, frames_dir: str | Path | None = None,
              video: str | Path | None = None) -> Clip:
    """One camera file (+ optional frames directory or video file) -> Clip."""
    cams = read_camera_file(path, cfg)
    images = frames_for(cams, Path(frames_dir)) if frames_dir is not None else None
    frames, _, size = read_clip_frames(path, cfg, cfg.default_size, images=images, video=video,
                                       times_s=cams.timestamps_us / US_PER_S)
    dt = np.diff(cams.timestamps_us) / US_PER_S
    intr = cams.intrinsics_norm
    meta = {"url": cams.url, "file": cams.path.name, "timestamps_us": cams.timestamps_us,
            "fps": float(1.0 / np.median(dt)),
            "intrinsics_vary": bool(np.ptp(intr, axis=0).max() > 1e-6)}
    return make_clip(cams.path, clip_key("re10k", cams.path.stem), "realestate10k", cams.c2w, intr[0], frames,
                     size, cfg, meta)
