"""Shared ingestion steps: OpenCV camera poses -> MG3's world, scale, frames, inferred actions -> Clip.

Every reader (RealEstate10K, poses.npy, nerfstudio) produces c2w in a *right-handed* world with an
*OpenCV* camera (x right, y down, z forward) and hands it to `make_clip`. Notable (docs/ingest.md):

* World alignment. up u = normalise(-mean_t camera_y(t)) (OpenCV y points down in the image;
  `up="horizon"` instead takes the direction orthogonal to all camera x axes, which a constant pitch
  does not bias, when the yaw varies enough);
  forward f = first camera's optical axis projected on the plane orthogonal to u; right r = f x u.
  A = [f; r; u] (rows) maps source-world vectors to MG3 (X forward, Y right, Z up). det(A) = -1:
  the *world* is reflected into MG3's left-handed frame; the camera frame stays OpenCV, so
  c2w_mg3_R = A @ c2w_src_R is a reflection, exactly like MG3's Rz Ry R_INIT. An upright level camera
  looking along f gets yaw 0, pitch 0, i.e. c2w_R = R_INIT.
* Origin and scale. position = k * A (c(t) - c(0)) in MG3 pose units; c2w translation = 0.01 * position.
  k (source units -> pose units) is `IngestConfig.scale` or `estimate_speed_scale`: the median
  horizontal step of the moving frames becomes MG3's 12.35 per frame (W held).
* Actions: `infer_actions` on the MG3 c2w with the circular yaw average (real geometry).
* Frames: `read_clip_frames` (image files, a video file, or none) and the size the intrinsics refer to,
  shared by the readers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from worldstream.data.inference import InferenceConfig, estimate_speed_scale, infer_actions
from worldstream.data.schema import Clip
from worldstream.data.shards import ShardConfig, list_shards, record_shard, shard_name, write_shard
from worldstream.geometry.camera import TRANSLATION_SCALE

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class IngestError(ValueError):
    """A source file is unusable; the message names the file and, when known, the line/frame."""

    def __init__(self, path: str | Path, reason: str, where: str | None = None):
        self.path, self.reason, self.where = str(path), reason, where
        super().__init__(f"{self.path}" + (f", {where}" if where else "") + f": {reason}")


@dataclass(frozen=True)
class IngestConfig:
    size: tuple[int, int] | None = None  # (H, W) of attached video; None keeps the source frame size
    default_size: tuple[int, int] = (360, 640)  # (H, W) the intrinsics refer to for poses-only RE10K clips
    scale: float | None = None  # source units -> MG3 pose units; None: estimated per clip (see module doc)
    moving_frac: float = 0.25  # scale estimate: a step counts as moving above this x the 90th-pct step
    ortho_tol: float = 1e-3  # max |R R^T - I| entry accepted for a rotation read from a file
    up_min_norm: float = 0.5  # |mean camera up| must exceed this: the cameras must agree on "up"
    up: Literal["camera_y", "horizon"] = "camera_y"  # how world up is estimated (see module doc)
    horizon_min_spread: float = 0.01  # "horizon": 2nd eigenvalue of mean x x^T (~ yaw variance, rad^2) needed
    min_frames: int = 2  # action inference needs one step
    prompt: str = ""  # prompt stored in every ingested clip
    inference: InferenceConfig = field(default_factory=lambda: InferenceConfig(yaw_average="circular"))


DEFAULT_INGEST = IngestConfig()


# ------------------------------------------------------------------------------------------------
# checks


def check_rotations(R: np.ndarray, path: str | Path, where: list[str], tol: float) -> None:
    """R [T,3,3] must be finite, orthonormal, det +1 (right-handed source); `where[i]` names frame i."""
    bad = ~np.isfinite(R).all(axis=(1, 2))
    if bad.any():
        i = int(np.argmax(bad))
        raise IngestError(path, "rotation has NaN/inf values", where[i])
    err = np.abs(R @ np.swapaxes(R, 1, 2) - np.eye(3)).max(axis=(1, 2))
    if (err > tol).any():
        i = int(np.argmax(err > tol))
        raise IngestError(path, f"rotation is not orthonormal (max |R R^T - I| = {err[i]:.3g} > {tol})",
                          where[i])
    det = np.linalg.det(R)
    if (det < 0).any():
        i = int(np.argmax(det < 0))
        raise IngestError(path, f"rotation has det {det[i]:+.3f}: expected a right-handed rotation (+1)",
                          where[i])


# ------------------------------------------------------------------------------------------------
# world alignment


def estimate_up(R: np.ndarray, cfg: IngestConfig) -> np.ndarray:
    """R [T,3,3] c2w rotations (OpenCV camera) -> unit world up [3]."""
    up = -R[:, :, 1].mean(axis=0)  # camera y (column 1) points down
    n = float(np.linalg.norm(up))
    if n < cfg.up_min_norm:
        raise ValueError(f"cameras do not agree on an up direction (|mean up| = {n:.2f} < {cfg.up_min_norm})")
    up = up / n
    if cfg.up == "camera_y":
        return up
    x = R[:, :, 0]  # camera x axes: horizontal for a camera that never rolls
    w, V = np.linalg.eigh(x.T @ x / len(x))  # ascending eigenvalues
    if w[1] >= cfg.horizon_min_spread:
        u = V[:, 0]  # the direction orthogonal to every camera x axis
    else:  # one viewing direction: only the roll can be removed
        u = up - (up @ V[:, 2]) * V[:, 2]
    u = u / np.linalg.norm(u)
    return u if u @ up > 0 else -u


def world_alignment(c2w_cv: np.ndarray, cfg: IngestConfig) -> np.ndarray:
    """c2w [T,4,4] (right-handed world, OpenCV camera) -> A [3,3]: rows = MG3 X, Y, Z in source coords."""
    R = c2w_cv[:, :3, :3]
    u = estimate_up(R, cfg)
    f = R[0, :, 2] - (R[0, :, 2] @ u) * u
    if np.linalg.norm(f) < 1e-6:  # first camera looks straight up/down: use its x axis as "right"
        r = R[0, :, 0] - (R[0, :, 0] @ u) * u
        f = np.cross(u, r / np.linalg.norm(r))
    f = f / np.linalg.norm(f)
    r = np.cross(f, u)
    return np.stack([f, r, u])  # det = -1


def opencv_to_mg3(c2w_cv: np.ndarray, cfg: IngestConfig) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """c2w [T,4,4] OpenCV/right-handed -> (MG3 c2w [T,4,4] float64, positions [T,3] pose units, info)."""
    c2w_cv = np.asarray(c2w_cv, dtype=np.float64)
    A = world_alignment(c2w_cv, cfg)
    origin = c2w_cv[0, :3, 3].copy()
    p = (c2w_cv[:, :3, 3] - origin) @ A.T  # [T,3] MG3 axes, source units
    k = cfg.scale if cfg.scale is not None else estimate_speed_scale(p, moving_frac=cfg.moving_frac)
    positions = p * k
    c2w = np.zeros_like(c2w_cv)
    c2w[:, :3, :3] = A @ c2w_cv[:, :3, :3]
    c2w[:, :3, 3] = positions * TRANSLATION_SCALE
    c2w[:, 3, 3] = 1.0
    info = {"world_from_source": A, "source_origin": origin, "scale_to_pose_units": float(k),
            "scale_mode": "fixed" if cfg.scale is not None else "median_step"}
    return c2w, positions, info


# ------------------------------------------------------------------------------------------------
# frames and video


def natural_key(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def list_images(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise NotADirectoryError(f"frames directory {directory} does not exist")
    return sorted((p for p in directory.iterdir() if p.suffix.lower() in IMAGE_EXTS), key=natural_key)


def resize_frames(frames: list[np.ndarray], size: tuple[int, int] | None, source: str) -> np.ndarray:
    """list of [H,W,3] uint8 -> [T,H',W',3] uint8 (bilinear to size=(H', W') when given)."""
    from PIL import Image

    out = []
    for i, fr in enumerate(frames):
        if size is not None and fr.shape[:2] != tuple(size):
            fr = np.asarray(Image.fromarray(fr).resize((size[1], size[0]), Image.BILINEAR))
        if out and fr.shape != out[0].shape:
            raise IngestError(source, f"frame size {fr.shape[:2]} differs from frame 0 {out[0].shape[:2]}; "
                                      "pass --size HxW", f"frame {i}")
        out.append(fr)
    return np.stack(out)


def load_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as e:
        raise IngestError(path, f"unreadable image ({e})") from e


def load_frames(paths: list[Path], size: tuple[int, int] | None,
                source: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Image files -> (video [T,H,W,3] uint8 at `size`, source (H, W) of the first frame)."""
    frames = [load_image(p) for p in paths]
    src = frames[0].shape[:2]
    return resize_frames(frames, size, source), (int(src[0]), int(src[1]))


def load_video_frames(path: str | Path, indices: np.ndarray | None, times_s: np.ndarray | None,
                      size: tuple[int, int] | None) -> tuple[np.ndarray, tuple[int, int]]:
    """Frames at `indices` (or nearest to `times_s`) of a video file -> ([T,H,W,3] uint8, source (H, W))."""
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file {path} does not exist")
    try:
        gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(gen)
    except (OSError, RuntimeError, StopIteration) as e:
        raise IngestError(path, f"unreadable video ({e})") from e
    W, H = meta["size"]
    if indices is None:
        fps = float(meta.get("fps") or 0.0)
        if fps <= 0:
            raise IngestError(path, "video has no frame rate; cannot map timestamps to frames")
        indices = np.round(np.asarray(times_s) * fps).astype(int)
    want = {int(i): k for k, i in enumerate(indices)}
    picked: dict[int, np.ndarray] = {}
    last = max(want) if want else -1
    try:
        for j, buf in enumerate(gen):
            if j in want:
                picked[j] = np.frombuffer(buf, dtype=np.uint8).reshape(H, W, 3)
            if j >= last:
                break
    finally:
        gen.close()
    missing = [int(i) for i in indices if int(i) not in picked]
    if missing:
        raise IngestError(path, f"video ends before frame {missing[0]} "
                                f"({len(missing)} requested frames missing)")
    frames = [picked[int(i)] for i in indices]
    return resize_frames(frames, size, str(path)), (int(H), int(W))


def read_clip_frames(source: str | Path, cfg: IngestConfig, default_size: tuple[int, int], *,
                     images: list[Path] | None = None, video: str | Path | None = None,
                     indices: np.ndarray | None = None, times_s: np.ndarray | None = None,
                     ) -> tuple[np.ndarray | None, tuple[int, int], tuple[int, int]]:
    """A reader's frames: image files (one per pose), else frames of a video file (at `indices` or nearest to
    `times_s`), else none (a poses-only clip). `source` (the camera file) is named in errors.

    Returns (video [T,H,W,3] uint8 at `cfg.size` or None, source (H, W): the frames' or `default_size`,
    (H, W) the pixel intrinsics refer to: the video's, else `cfg.size` or `default_size`).
    """
    frames, src = None, default_size
    if images is not None:
        frames, src = load_frames(images, cfg.size, str(source))
    elif video is not None:
        frames, src = load_video_frames(video, indices, times_s, cfg.size)
    size = (int(frames.shape[1]), int(frames.shape[2])) if frames is not None else (cfg.size or default_size)
    return frames, src, size


# ------------------------------------------------------------------------------------------------
# clip


def clip_key(prefix: str, name: str) -> str:
    """Shard-safe key: [A-Za-z0-9_-], no dots, at most 80 chars."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "clip"
    return f"{prefix}_{stem}"[:80]


def make_clip(path: str | Path, key: str, source: str, c2w_cv: np.ndarray, intrinsics_norm: np.ndarray,
              video: np.ndarray | None, size: tuple[int, int], cfg: IngestConfig,
              meta: dict[str, Any] | None = None) -> Clip:
    """Right-handed OpenCV c2w [T,4,4] + normalised (fx/W, fy/H, cx/W, cy/H) -> MG3 Clip with actions.

    size: (H, W) the pixel intrinsics refer to (the video's size when there is a video).
    path: the source file, named in errors.
    """
    if video is not None and len(video) != len(c2w_cv):
        raise IngestError(path, f"{len(video)} video frames for {len(c2w_cv)} camera poses")
    try:
        # 1. World alignment, origin, scale
        c2w, _, info = opencv_to_mg3(c2w_cv, cfg)
        # 2. Actions from the MG3 trajectory
        inf = infer_actions(c2w, cfg.inference)
    except IngestError:
        raise
    except ValueError as e:
        raise IngestError(path, str(e)) from e
    # 3. Pixel intrinsics for this size
    H, W = size
    fx, fy, cx, cy = np.asarray(intrinsics_norm, dtype=np.float64)
    intrinsics = np.array([fx * W, fy * H, cx * W, cy * H], dtype=np.float64)
    meta = dict(meta or {})
    meta.update(info)
    meta.update({"intrinsics_normalised": [float(fx), float(fy), float(cx), float(cy)],
                 "action_confidence": inf.mean_confidence, "max_roll_deg": float(np.abs(inf.roll).max())})
    return Clip(key=key, c2w=c2w, intrinsics=intrinsics, keyboard=inf.keyboard, mouse=inf.mouse,
                prompt=cfg.prompt, source=source, video=video, poses=inf.poses.astype(np.float32),
                height=H, width=W, meta=meta).validate()


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if m is None or int(m.group(1)) <= 0 or int(m.group(2)) <= 0:
        raise ValueError(f"--size must be HxW with positive integers, e.g. 96x160; got {text!r}")
    return int(m.group(1)), int(m.group(2))


# ------------------------------------------------------------------------------------------------
# shards


def write_clip_shards(out: str | Path, clips: Iterable[Clip], clips_per_shard: int,
                      shard_cfg: ShardConfig | None = None,
                      dataset: dict[str, Any] | None = None) -> dict[str, int]:
    """Stream clips into out/shard-XXXXXX.tar (atomic, in index.json) -> {"shards", "clips", "frames"}.

    `out` must hold no shards yet (a second run would mix two datasets).
    """
    if clips_per_shard < 1:
        raise ValueError(f"clips per shard must be >= 1, got {clips_per_shard}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if list_shards(out):
        raise ValueError(f"{out} already holds shards; write to a new or empty directory")
    counts = {"shards": 0, "clips": 0, "frames": 0}
    buf: list[Clip] = []

    def flush() -> None:
        name = shard_name(counts["shards"])
        info = write_shard(out / name, buf, shard_cfg or ShardConfig(), config=dataset)
        record_shard(out, name, info, dataset)
        counts["shards"] += 1
        counts["clips"] += info.samples
        counts["frames"] += info.frames
        buf.clear()

    for clip in clips:
        buf.append(clip)
        if len(buf) >= clips_per_shard:
            flush()
    if buf:
        flush()
    return counts
