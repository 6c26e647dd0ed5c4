"""Clip: one Video-Pose-Action-Prompt sample, the unit every data path produces and consumes.

Conventions (MG3, facts section 4):
* `c2w` [T,4,4] float64, MG3's reflected Unreal-style camera-to-world (X forward, Y right, Z up;
  camera frame OpenCV x right / y down / z forward; translation = pose position * 0.01).
* `intrinsics` [4] float64 (fx, fy, cx, cy) in pixels of *this* video's H x W.
* `keyboard` [T,6] float32 multi-hot [W,S,A,D,Space,Attack]; `mouse` [T,2] float32 [pitch, yaw] deltas.
* `poses` [T,5] float32 (x, y, z, pitch, yaw) when the source has them (rendered worlds, inferred
  for ingested footage), else None.
* `video` uint8 [T,H,W,3] or None (poses-only ingestion).

The on-disk shard format is documented and implemented in `worldstream/data/shards.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Clip:
    key: str  # unique sample key inside a shard set, e.g. "w000123_c0004"
    c2w: np.ndarray  # [T,4,4] float64
    intrinsics: np.ndarray  # [4] float64 fx, fy, cx, cy (pixels)
    keyboard: np.ndarray  # [T,6] float32
    mouse: np.ndarray  # [T,2] float32
    prompt: str
    source: str  # "render" | "realestate10k" | "poses_npy" | "nerfstudio" | ...
    video: np.ndarray | None = None  # [T,H,W,3] uint8
    poses: np.ndarray | None = None  # [T,5] float32
    world_seed: int | None = None
    height: int | None = None  # pixel size the intrinsics refer to (set from video when present)
    width: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.video is not None and (self.height is None or self.width is None):
            self.height, self.width = int(self.video.shape[1]), int(self.video.shape[2])

    @property
    def num_frames(self) -> int:
        return int(self.c2w.shape[0])

    def validate(self) -> Clip:
        """Raise ValueError naming the field on any shape/dtype/finiteness problem."""
        T = self.num_frames

        def check(name: str, arr: np.ndarray | None, shape: tuple, kinds: str) -> None:
            if arr is None:
                return
            if not isinstance(arr, np.ndarray):
                raise ValueError(f"clip {self.key}: {name} must be a numpy array, got {type(arr).__name__}")
            if arr.dtype.kind not in kinds:
                raise ValueError(f"clip {self.key}: {name} has dtype {arr.dtype}, expected kind {kinds!r}")
            mismatch = any(s is not None and a != s for a, s in zip(arr.shape, shape))
            if len(arr.shape) != len(shape) or mismatch:
                want = "[" + ",".join("*" if s is None else str(s) for s in shape) + "]"
                raise ValueError(f"clip {self.key}: {name} has shape {list(arr.shape)}, expected {want}")
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                bad = int(np.argmax((~np.isfinite(arr.reshape(arr.shape[0], -1))).any(1))) if arr.ndim else 0
                raise ValueError(f"clip {self.key}: {name} has NaN/inf values (first at row {bad})")

        if T < 1:
            raise ValueError(f"clip {self.key}: c2w has no frames")
        check("c2w", self.c2w, (T, 4, 4), "f")
        check("intrinsics", self.intrinsics, (4,), "f")
        check("keyboard", self.keyboard, (T, 6), "f")
        check("mouse", self.mouse, (T, 2), "f")
        check("poses", self.poses, (T, 5), "f")
        check("video", self.video, (T, None, None, 3), "u")
        if self.video is not None and self.video.dtype != np.uint8:
            raise ValueError(f"clip {self.key}: video must be uint8, got {self.video.dtype}")
        if not isinstance(self.prompt, str):
            raise ValueError(f"clip {self.key}: prompt must be a string")
        return self
