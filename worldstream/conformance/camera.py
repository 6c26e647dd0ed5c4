"""Conformance group `camera`: the golden `camera_*` vectors (golden README section 4).

Everything is discovered from the files (sequence names from the `<name>.poses` keys, the relative /
interpolation / intrinsics cases from their key names, the Plücker call arguments from the JSON):
* per action sequence: poses from `poses_from_actions` (float32, exact or within 1 ulp), the extra
  `last_pose` and the extrinsics of the golden poses (<= 1e-12 relative, float64);
* `relative.*` / `relative64.*` (compute_relative_poses), `interp.*` (handedness-aware interpolation),
  `intrinsics.HxW`, `plucker.clip` and `plucker.pose` (<= 1e-6 absolute).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from worldstream.conformance import CaseResult, compare, guarded

GROUP = "camera"
VECTORS, META = "camera_vectors.safetensors", "camera_vectors.json"
TOL_ULP = 1.0  # README: float32 poses exact, or within 1 float32 ulp
TOL_REL64 = 1e-12  # README: float64 outputs <= 1e-12 relative
TOL_ABS = 1e-6  # README: relative poses, interpolation, Plücker maps <= 1e-6 absolute


def applies(root: Path) -> bool:
    return (Path(root) / VECTORS).is_file()


def ulp_case(case: str, actual: np.ndarray, expected: np.ndarray) -> CaseResult:
    """Max distance in float32 ulps (of the expected value)."""
    a, e = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    if a.shape != e.shape:
        return CaseResult(GROUP, case, False, None, TOL_ULP, f"shape {a.shape} != expected {e.shape}")
    ulps = np.abs(a.astype(np.float64) - e) / np.spacing(np.abs(e))
    worst = float(ulps.max()) if ulps.size else 0.0
    return CaseResult(GROUP, case, bool(worst <= TOL_ULP), worst, TOL_ULP, "float32 ulps")


def rel_case(group: str, case: str, actual, expected, tol: float = TOL_REL64) -> CaseResult:
    """max |a - e| / max |e| (shape mismatch fails)."""
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if a.shape != e.shape:
        return CaseResult(group, case, False, None, tol, f"shape {a.shape} != expected {e.shape}")
    scale = max(float(np.abs(e).max()) if e.size else 0.0, np.finfo(np.float64).tiny)
    diff = float(np.abs(a - e).max()) / scale if a.size else 0.0
    return CaseResult(group, case, bool(np.isfinite(diff) and diff <= tol), diff, tol, "relative")


def check(root: Path) -> Iterator[CaseResult]:
    from safetensors.numpy import load_file

    root = Path(root)
    g = load_file(str(root / VECTORS))
    meta_path = root / META
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    for name in sorted({k[: -len(".poses")] for k in g if k.endswith(".poses")}):
        yield from guarded(GROUP, name, lambda n=name: _sequence(g, n))
    for prefix in ("relative", "relative64"):
        if any(k.startswith(prefix + ".framewise") for k in g):
            yield from guarded(GROUP, prefix, lambda p=prefix: _relative(g, p))
    if "interp.src_c2ws" in g:
        yield from guarded(GROUP, "interp", lambda: _interp(g))
    yield from guarded(GROUP, "intrinsics", lambda: _intrinsics(g))
    if "plucker.clip.out" in g:
        yield from guarded(GROUP, "plucker.clip", lambda: _plucker_clip(g, meta))
    if "plucker.pose.out" in g:
        yield from guarded(GROUP, "plucker.pose", lambda: _plucker_pose(g, meta))


def _sequence(g: dict, name: str) -> Iterator[CaseResult]:
    from worldstream.data.actions import poses_from_actions
    from worldstream.geometry.camera import extrinsics_from_poses

    poses, last = poses_from_actions(g[f"{name}.keyboard"], g[f"{name}.mouse"])
    yield ulp_case(f"{name}.poses", poses, g[f"{name}.poses"])
    if f"{name}.last_pose" in g:
        yield rel_case(GROUP, f"{name}.last_pose", last, g[f"{name}.last_pose"])
    if f"{name}.extrinsics" in g:  # from the golden poses, so each step is checked on its own
        E = extrinsics_from_poses(g[f"{name}.poses"])
        yield rel_case(GROUP, f"{name}.extrinsics", E, g[f"{name}.extrinsics"])


def _relative(g: dict, prefix: str) -> Iterator[CaseResult]:
    from worldstream.geometry.camera import compute_relative_poses

    inputs = [k for k in g if k.startswith(prefix + ".input")]
    if len(inputs) != 1:
        raise ValueError(f"expected one '{prefix}.input*' tensor, found {inputs}")
    c2ws = g[inputs[0]]
    for key in sorted(k for k in g if k.startswith(prefix + ".framewise")):
        m = re.fullmatch(re.escape(prefix) + r"\.framewise([01])_norm([01])", key)
        if m is None:
            raise ValueError(f"unrecognised key {key}")
        out = compute_relative_poses(c2ws, framewise=m.group(1) == "1", normalize_trans=m.group(2) == "1")
        dtype_ok = out.dtype == g[key].dtype
        note = "" if dtype_ok else f"dtype {out.dtype} != {g[key].dtype}"
        r = compare(GROUP, key, out, g[key], TOL_ABS, note)
        r.passed = r.passed and dtype_ok
        yield r


def _interp(g: dict) -> Iterator[CaseResult]:
    from worldstream.geometry.camera import interpolate_poses_handedness

    src, c2ws = g["interp.src_indices"], g["interp.src_c2ws"]
    names = {k.split(".")[1] for k in g if k.startswith("interp.") and k.endswith(".tgt_indices")}
    for name in sorted(names):
        tgt = g[f"interp.{name}.tgt_indices"]
        out = interpolate_poses_handedness(src, c2ws[:, :3, :3], c2ws[:, :3, 3], tgt)
        yield compare(GROUP, f"interp.{name}", out, g[f"interp.{name}.out"], TOL_ABS)


def _intrinsics(g: dict) -> Iterator[CaseResult]:
    from worldstream.geometry.camera import intrinsics_90fov

    for key in sorted(k for k in g if re.fullmatch(r"intrinsics\.\d+x\d+", k)):
        H, W = (int(v) for v in key.split(".")[1].split("x"))
        yield compare(GROUP, key, intrinsics_90fov(H, W), g[key], TOL_ABS)


def _plucker_clip(g: dict, meta: dict) -> CaseResult:
    from worldstream.geometry.camera import build_plucker_from_c2ws, intrinsics_90fov

    pj = meta["plucker"]
    (H, W), (lh, lw), clip = pj["pixels_hw"], pj["latents_hw"], pj["clip"]
    out = build_plucker_from_c2ws(g["plucker.clip.input_c2ws"], clip["src_indices"], clip["tgt_indices"],
                                  bool(clip["framewise"]), intrinsics_90fov(H, W), H, W, lh, lw)
    return compare(GROUP, "plucker.clip", out, g["plucker.clip.out"], TOL_ABS)


def _plucker_pose(g: dict, meta: dict) -> CaseResult:
    from worldstream.geometry.camera import build_plucker_from_pose, intrinsics_90fov

    pj = meta["plucker"]
    (H, W), (lh, lw) = pj["pixels_hw"], pj["latents_hw"]
    out = build_plucker_from_pose(g["plucker.pose.input_c2w"], intrinsics_90fov(H, W), H, W, lh, lw)
    return compare(GROUP, "plucker.pose", out, g["plucker.pose.out"], TOL_ABS)
