"""nerfstudio `transforms.json` -> Clip in MG3's convention (docs/ingest.md).

* frames[].transform_matrix: 4x4 camera-to-world with an *OpenGL* camera (x right, y up, z back);
  to OpenCV (x right, y down, z forward): c2w_cv = c2w_gl @ diag(1, -1, -1, 1) (flip camera y and z).
* Intrinsics fl_x, fl_y, cx, cy, w, h in pixels: top level, or per frame (frame 0's are used; a change
  is recorded in meta). Distortion coefficients are ignored.
* Frames are ordered by file_path (natural sort: nerfstudio lists capture order but does not promise
  it). Images at <json dir>/<file_path> are attached when all exist; none existing -> poses only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from worldstream.data.ingest.common import (
    DEFAULT_INGEST,
    IngestConfig,
    IngestError,
    check_rotations,
    clip_key,
    make_clip,
    natural_key,
    read_clip_frames,
)
from worldstream.data.schema import Clip

TRANSFORMS_NAME = "transforms.json"
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])  # right-multiply: flips the camera's y and z axes
INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h")


def _number(value: Any, path: Path, where: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise IngestError(path, f"{name} must be a finite number, got {value!r}", where)
    return float(value)


def read_transforms(path: str | Path, cfg: IngestConfig = DEFAULT_INGEST) -> dict[str, Any]:
    """Parse and check transforms.json -> {c2w [T,4,4] OpenCV, intrinsics {key: value}, file_paths, vary}."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise IngestError(path, f"invalid JSON ({e.msg})", f"line {e.lineno}") from e
    except UnicodeDecodeError as e:
        raise IngestError(path, f"not a UTF-8 text file ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("frames"), list):
        raise IngestError(path, "expected a JSON object with a 'frames' list")
    frames = doc["frames"]
    if len(frames) < cfg.min_frames:
        raise IngestError(path, f"has {len(frames)} frames, need at least {cfg.min_frames}")
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict) or "transform_matrix" not in fr:
            raise IngestError(path, "frame has no transform_matrix", f"frames[{i}]")
    order = sorted(range(len(frames)), key=lambda i: natural_key(Path(str(frames[i].get("file_path", i)))))
    mats, where, intr_rows = [], [], []
    for i in order:
        fr, w = frames[i], f"frames[{i}]"
        try:
            m = np.asarray(fr["transform_matrix"], dtype=np.float64)
        except (ValueError, TypeError) as e:
            raise IngestError(path, f"transform_matrix is not numeric ({e})", w) from e
        if m.shape not in ((4, 4), (3, 4)):
            raise IngestError(path, f"transform_matrix has shape {list(m.shape)}, expected [4,4]", w)
        if not np.isfinite(m).all():
            raise IngestError(path, "transform_matrix has NaN/inf values", w)
        mats.append(m[:3])
        where.append(w)
        row = []
        for key in INTRINSIC_KEYS:
            if key in fr:
                row.append(_number(fr[key], path, w, key))
            elif key in doc:
                row.append(_number(doc[key], path, "top level", key))
            else:
                raise IngestError(path, f"missing intrinsic {key!r} (top level or per frame)", w)
        intr_rows.append(row)
    c2w_gl = np.tile(np.eye(4), (len(mats), 1, 1))
    c2w_gl[:, :3, :] = np.stack(mats)
    check_rotations(c2w_gl[:, :3, :3], path, where, cfg.ortho_tol)
    intr = np.asarray(intr_rows)  # [T,6]
    if (intr <= 0).any():
        raise IngestError(path, f"intrinsics must be positive, got {dict(zip(INTRINSIC_KEYS, intr[0]))}")
    return {"c2w": c2w_gl @ GL_TO_CV, "intrinsics": dict(zip(INTRINSIC_KEYS, intr[0].tolist())),
            "intrinsics_vary": bool(np.ptp(intr, axis=0).max() > 1e-6),
            "file_paths": [frames[i].get("file_path") for i in order]}


def load_clip(path: str | Path, cfg: IngestConfig = DEFAULT_INGEST) -> Clip:
    """transforms.json (or its directory) -> Clip; attaches the frames' images when they all exist."""
    path = Path(path)
    json_path = path / TRANSFORMS_NAME if path.is_dir() else path
    if not json_path.is_file():
        raise IngestError(json_path, "file does not exist")
    tr = read_transforms(json_path, cfg)
    k = tr["intrinsics"]
    src = (int(k["h"]), int(k["w"]))
    norm = np.array([k["fl_x"] / k["w"], k["fl_y"] / k["h"], k["cx"] / k["w"], k["cy"] / k["h"]])
    files = [json_path.parent / str(f) if f is not None else None for f in tr["file_paths"]]
    exists = [f is not None and f.is_file() for f in files]
    if any(exists) and not all(exists):
        missing = files[exists.index(False)]
        raise IngestError(json_path, f"image {missing} is missing "
                                     f"({exists.count(False)} of {len(files)} missing)")
    frames, _, size = read_clip_frames(json_path, cfg, src, images=files if all(exists) else None)
    meta = {"file": str(json_path), "source_size": list(src), "intrinsics_vary": tr["intrinsics_vary"]}
    name = json_path.parent.name if json_path.name == TRANSFORMS_NAME else json_path.stem
    return make_clip(json_path, clip_key("ns", name), "nerfstudio", tr["c2w"], norm, frames, size, cfg, meta)
