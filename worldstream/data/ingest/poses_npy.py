"""`poses.npy` + `intrinsics.npy` -> Clip in MG3's convention (docs/ingest.md).

* poses.npy: [T,4,4] or [T,3,4] camera-to-world, right-handed world, OpenCV camera (x right, y down,
  z forward); a 4x4 bottom row must be [0, 0, 0, 1].
* intrinsics.npy (beside poses.npy): [3,3] K, [T,3,3] per frame (frame 0 is used; a change is
  recorded in meta), or [4] (fx, fy, cx, cy); all in pixels of the source frames.
* Source frame size: the frames' size when frames are given, else (2 cy, 2 cx) (principal point at
  the image centre).
* Frames: `--frames DIR` (one image per pose, natural order), `--video F` (frame i for pose i), or an
  `images/` directory beside poses.npy.
Arrays are loaded with allow_pickle=False (untrusted files).
"""

from __future__ import annotations

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

POSES_NAME, INTRINSICS_NAME, IMAGES_DIR = "poses.npy", "intrinsics.npy", "images"


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise IngestError(path, "file does not exist")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise IngestError(path, f"not a readable .npy array ({e})") from e
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu":
        raise IngestError(path, f"expected a numeric array, got dtype {getattr(arr, 'dtype', type(arr))}")
    return arr.astype(np.float64)


def read_poses(path: str | Path, cfg: IngestConfig = DEFAULT_INGEST) -> np.ndarray:
    """poses.npy -> c2w [T,4,4] float64 (checked: finite, orthonormal right-handed rotations)."""
    path = Path(path)
    arr = _load_npy(path)
    if arr.ndim != 3 or arr.shape[1:] not in ((4, 4), (3, 4)):
        raise IngestError(path, f"poses have shape {list(arr.shape)}, expected [T,4,4] or [T,3,4]")
    T = arr.shape[0]
    if T < cfg.min_frames:
        raise IngestError(path, f"has {T} poses, need at least {cfg.min_frames}")
    where = [f"frame {i}" for i in range(T)]
    finite = np.isfinite(arr).all(axis=(1, 2))
    if not finite.all():
        raise IngestError(path, "NaN/inf values", where[int(np.argmin(finite))])
    if arr.shape[1] == 4:
        bottom_err = np.abs(arr[:, 3] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=1)
        if (bottom_err > cfg.ortho_tol).any():
            i = int(np.argmax(bottom_err > cfg.ortho_tol))
            raise IngestError(path, f"bottom row is {arr[i, 3].tolist()}, expected [0, 0, 0, 1]", where[i])
    check_rotations(arr[:, :3, :3], path, where, cfg.ortho_tol)
    c2w = np.tile(np.eye(4), (T, 1, 1))
    c2w[:, :3, :] = arr[:, :3, :]
    return c2w


def read_intrinsics(path: str | Path, T: int) -> tuple[np.ndarray, bool]:
    """intrinsics.npy -> (fx, fy, cx, cy) [4] in pixels, whether they vary over frames."""
    path = Path(path)
    K = _load_npy(path)
    if K.shape == (4,):
        fx, fy, cx, cy = K
        vary = False
    elif K.shape == (3, 3) or (K.ndim == 3 and K.shape[1:] == (3, 3)):
        if K.ndim == 3 and K.shape[0] != T:
            raise IngestError(path, f"has {K.shape[0]} matrices for {T} poses")
        Ks = K.reshape(-1, 3, 3)
        fx, fy, cx, cy = Ks[0, 0, 0], Ks[0, 1, 1], Ks[0, 0, 2], Ks[0, 1, 2]
        vary = bool(np.ptp(Ks, axis=0).max() > 1e-6)
    else:
        raise IngestError(path, f"intrinsics have shape {list(K.shape)}, expected [3,3], [T,3,3] or [4]")
    values = np.array([fx, fy, cx, cy], dtype=np.float64)
    if not np.isfinite(values).all() or (values <= 0).any():
        raise IngestError(path, f"fx, fy, cx, cy must be finite and positive, got {values.tolist()}")
    return values, vary


def load_clip(path: str | Path, cfg: IngestConfig = DEFAULT_INGEST, frames_dir: str | Path | None = None,
              video: str | Path | None = None) -> Clip:
    """A directory holding poses.npy + intrinsics.npy (or the poses.npy path itself) -> Clip."""
    path = Path(path)
    poses_path = path / POSES_NAME if path.is_dir() else path
    c2w_cv = read_poses(poses_path, cfg)
    T = len(c2w_cv)
    intr_px, vary = read_intrinsics(poses_path.parent / INTRINSICS_NAME, T)
    if frames_dir is None and video is None and (poses_path.parent / IMAGES_DIR).is_dir():
        frames_dir = poses_path.parent / IMAGES_DIR
    images = None
    if frames_dir is not None:
        images = list_images(frames_dir)
        if len(images) != T:
            raise IngestError(poses_path, f"frames directory {frames_dir} has {len(images)} images "
                                          f"for {T} poses")
    centred = (int(round(2 * intr_px[3])), int(round(2 * intr_px[2])))  # principal point at the centre
    frames, src, size = read_clip_frames(poses_path, cfg, centred, images=images, video=video,
                                         indices=np.arange(T))
    fx, fy, cx, cy = intr_px
    norm = np.array([fx / src[1], fy / src[0], cx / src[1], cy / src[0]])
    name = poses_path.parent.name if poses_path.name == POSES_NAME else poses_path.stem
    meta = {"file": str(poses_path), "source_size": list(src), "intrinsics_vary": vary}
    return make_clip(poses_path, clip_key("npy", name), "poses_npy", c2w_cv, norm, frames, size, cfg, meta)
