"""Cameras in MG3's conventions (official `utils/cam_utils.py`, `utils/utils.py`; facts section 4).

* World: Unreal-style, left-handed: X forward, Y right, Z up.
* Camera: OpenCV (x right, y down, z forward).
* c2w rotation = Rz(yaw) Ry(pitch) Rx(roll) @ R_INIT with R_INIT mapping camera z -> world +X,
  camera x -> world +Y, camera y -> world -Z. det(R_INIT) = -1, so every c2w rotation is a
  reflection; relative poses (products of two reflections) are proper rigid transforms.
* translation = pose position * 0.01.

What else lives here (all MG3-exact, checked by the golden `camera_*` / `retrieval_*` vectors):
* `compute_relative_poses` (4.4), `interpolate_poses_handedness` (4.3: SLERP needs proper rotations,
  so reflections are flipped by diag(1, 1, -1) first and flipped back after).
* "Plücker" maps (4.6): NOTE they are (origin, unit direction), *not* the moment o x d. Pixel rays at
  full resolution are folded to latent resolution with channels ordered (ray channel, row-in-block,
  col-in-block): 6 * 16 * 16 = 1536 for MG3.
* `ClipSchedule` (4.7-4.9, 5.2): which frames a clip covers, its Plücker targets, latent ranges,
  and frame <-> latent mapping. The MG3 numbers 57/56/40/4 are fields so smaller presets can reuse it.

Precision follows the official code: clip maps are float32 (interpolation returns float32), memory
poses are float64 (the reference extrinsic is float64). One numpy implementation of each formula;
the `*_torch` helpers only convert.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from einops import rearrange

# rows: world axes; columns: camera axes (x right, y down, z forward)
R_INIT = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
TRANSLATION_SCALE = 0.01  # pose units (cm-like) -> extrinsic units
FOV_DEG = 90.0  # MG3 `get_intrinsics`: 90 deg on both axes (non-square focal lengths)
HANDEDNESS_FLIP = np.diag([1.0, 1.0, -1.0])  # turns a reflection into a proper rotation (4.3)
RAY_CHANNELS = 6  # [o_x, o_y, o_z, d_x, d_y, d_z]
PIXEL_CENTER = 0.5  # rays go through pixel centres: u = x + 0.5, v = y + 0.5


####################################################################################################
# Extrinsics and intrinsics
####################################################################################################


def euler_to_matrix(roll: np.ndarray, pitch: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Rz(yaw) @ Ry(pitch) @ Rx(roll), angles in degrees, batched -> [T,3,3] float64."""
    r, p, y = (np.deg2rad(np.asarray(a, dtype=np.float64)) for a in (roll, pitch, yaw))
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    one, zero = np.ones_like(r), np.zeros_like(r)
    Rx = np.stack([one, zero, zero, zero, cr, -sr, zero, sr, cr], -1).reshape(*r.shape, 3, 3)
    Ry = np.stack([cp, zero, sp, zero, one, zero, -sp, zero, cp], -1).reshape(*r.shape, 3, 3)
    Rz = np.stack([cy, -sy, zero, sy, cy, zero, zero, zero, one], -1).reshape(*r.shape, 3, 3)
    return Rz @ Ry @ Rx


def extrinsics_from_poses(poses: np.ndarray, translation_scale: float = TRANSLATION_SCALE) -> np.ndarray:
    """`get_extrinsics`: poses [T,5] (x, y, z, pitch, yaw) -> c2w [T,4,4] float64 (roll = 0)."""
    poses = np.asarray(poses)
    if poses.ndim != 2 or poses.shape[1] != 5:
        raise ValueError(f"poses must be [T, 5] (x, y, z, pitch, yaw), got {list(poses.shape)}")
    T = poses.shape[0]
    pitch = poses[:, 3].astype(np.float64)
    yaw = poses[:, 4].astype(np.float64)
    c2w = np.zeros((T, 4, 4), dtype=np.float64)
    c2w[:, :3, :3] = euler_to_matrix(np.zeros(T), pitch, yaw) @ R_INIT
    c2w[:, :3, 3] = poses[:, :3].astype(np.float64) * translation_scale
    c2w[:, 3, 3] = 1.0
    return c2w


def intrinsics_90fov(height: int, width: int, fov_deg: float = FOV_DEG) -> np.ndarray:
    """`get_intrinsics(H, W)`: the same FOV on *both* axes -> [fx, fy, cx, cy] float64.

    f = (size / 2) / tan(fov / 2), as the official code computes it (tan(pi/4) rounds to
    0.9999999999999999, so fx = 640.0000000000001 at W = 1280, bit-exact with the golden vectors).
    """
    half = np.tan(np.deg2rad(fov_deg) / 2.0)
    return np.array([width / 2.0 / half, height / 2.0 / half, width / 2.0, height / 2.0], dtype=np.float64)


####################################################################################################
# Validation helpers
####################################################################################################


def check_c2ws(c2ws: np.ndarray, name: str = "c2ws") -> np.ndarray:
    """Validate a stack of camera-to-world matrices [N,4,4] (finite); returns it as an ndarray."""
    c2ws = np.asarray(c2ws)
    if c2ws.ndim != 3 or c2ws.shape[1:] != (4, 4):
        raise ValueError(f"{name} must be [N, 4, 4] camera-to-world matrices, got {list(c2ws.shape)}")
    if not np.issubdtype(c2ws.dtype, np.floating):
        raise ValueError(f"{name} must be floating point, got {c2ws.dtype}")
    bad = ~np.isfinite(c2ws).all(axis=(1, 2))
    if bad.any():
        raise ValueError(f"{name} has non-finite (NaN/inf) values in pose(s) "
                         f"{np.flatnonzero(bad)[:8].tolist()}")
    return c2ws


def _check_intrinsics(K: np.ndarray) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64).reshape(-1)
    if K.shape != (4,) or not np.isfinite(K).all() or K[0] <= 0 or K[1] <= 0:
        raise ValueError(f"K must be [fx, fy, cx, cy] with positive focal lengths, got {K.tolist()}")
    return K


####################################################################################################
# Relative poses and interpolation (facts 4.3, 4.4)
####################################################################################################


def compute_relative_poses(c2ws: np.ndarray, framewise: bool = False,
                           normalize_trans: bool = True) -> np.ndarray:
    """`compute_relative_poses`: [N,4,4] -> [N,4,4] in the input dtype.

    rel_i = inv(c2w_0) @ c2w_i with rel_0 = identity. framewise: rel_i <- inv(rel_{i-1}) @ rel_i for
    i >= 1, computed from the *unmodified* list (each frame relative to the previous one).
    normalize_trans: every translation is divided by the largest translation norm in the set (if > 0).
    """
    c2ws = check_c2ws(c2ws)
    dtype = c2ws.dtype
    rel = np.linalg.inv(c2ws[:1]) @ c2ws  # [N,4,4]
    rel[0] = np.eye(4, dtype=dtype)
    if framewise and len(rel) > 1:
        rel = np.concatenate([rel[:1], np.linalg.inv(rel[:-1]) @ rel[1:]], axis=0)
    if normalize_trans:
        scale = np.linalg.norm(rel[:, :3, 3], axis=-1).max()
        if scale > 0:
            rel[:, :3, 3] = rel[:, :3, 3] / scale
    return rel.astype(dtype, copy=False)


def _linear_extrapolating(src: np.ndarray, values: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolation with linear extrapolation (scipy `interp1d(fill_value="extrapolate")`
    semantics: segment = searchsorted(src, tgt) clipped to [1, N-1]; y = slope * (x - x_lo) + y_lo)."""
    hi = np.clip(np.searchsorted(src, tgt), 1, len(src) - 1)
    lo = hi - 1
    slope = (values[hi] - values[lo]) / (src[hi] - src[lo])[:, None]
    return slope * (tgt - src[lo])[:, None] + values[lo]


def interpolate_poses_handedness(src_indices: np.ndarray, R: np.ndarray, t: np.ndarray,
                                 tgt_indices: np.ndarray) -> np.ndarray:
    """`_interpolate_camera_poses_handedness`: poses at times `src_indices` -> [n,4,4] f32 at `tgt_indices`.

    1. If the median det(R) < 0 (MG3's reflections), right-multiply by diag(1,1,-1) so SLERP sees
       proper rotations; undo the flip at the end.
    2. Translations: linear, extrapolated outside the source range.
    3. Rotations: quaternions made sign-consistent (q_i -> -q_i when q_i . q_{i-1} < 0), then SLERP.
       NOTE SLERP cannot extrapolate: targets outside the source range take the nearest end rotation.
    With targets equal to source times (the pipelines' use) this is a selector.
    """
    from scipy.spatial.transform import Rotation, Slerp

    src = np.asarray(src_indices, dtype=np.float64).reshape(-1)
    tgt = np.asarray(tgt_indices, dtype=np.float64).reshape(-1)
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    N = len(src)
    if R.shape != (N, 3, 3) or t.shape != (N, 3):
        raise ValueError(f"R must be [{N},3,3] and t [{N},3] for {N} source indices, "
                         f"got {list(R.shape)}, {list(t.shape)}")
    if N == 0 or not (np.isfinite(R).all() and np.isfinite(t).all() and np.isfinite(src).all()):
        raise ValueError("interpolation needs >= 1 finite source pose (got empty or NaN/inf input)")
    if N > 1 and not (np.diff(src) > 0).all():
        raise ValueError(f"src_indices must be strictly increasing, got {src.tolist()}")
    # 1. handedness
    flip = np.median(np.linalg.det(R)) < 0
    if flip:
        R = R @ HANDEDNESS_FLIP
    out = np.zeros((len(tgt), 4, 4), dtype=np.float64)
    out[:, 3, 3] = 1.0
    if N == 1:
        out[:, :3, :3] = R[0]
        out[:, :3, 3] = t[0]
    else:
        # 2. translations
        out[:, :3, 3] = _linear_extrapolating(src, t, tgt)
        # 3. rotations
        q = Rotation.from_matrix(R).as_quat()
        for i in range(1, N):  # sequential: each sign depends on the (possibly flipped) previous one
            if np.dot(q[i], q[i - 1]) < 0:
                q[i] = -q[i]
        slerp = Slerp(src, Rotation.from_quat(q))
        out[:, :3, :3] = slerp(np.clip(tgt, src[0], src[-1])).as_matrix()
    if flip:
        out[:, :3, :3] = out[:, :3, :3] @ HANDEDNESS_FLIP
    return out.astype(np.float32)


####################################################################################################
# "Plücker" rays (facts 4.6): origin + unit direction per pixel, folded to latent resolution
####################################################################################################


def pixel_rays(c2ws: np.ndarray, K: np.ndarray, height: int, width: int) -> np.ndarray:
    """`get_plucker_embeddings`: c2ws [F,4,4], K [fx,fy,cx,cy] -> rays [F,H,W,6] (o_x,o_y,o_z,d_x,d_y,d_z).

    d_cam = ((u - cx)/fx, (v - cy)/fy, 1) normalised, u = x + 0.5, v = y + 0.5; d_world = R d_cam;
    o = the camera translation. Computed in the poses' dtype (float32 clip, float64 memory).
    """
    c2ws = check_c2ws(c2ws)
    fx, fy, cx, cy = _check_intrinsics(K)
    dtype = np.result_type(c2ws.dtype, np.float32)
    u = np.arange(width, dtype=dtype) + dtype.type(PIXEL_CENTER)
    v = np.arange(height, dtype=dtype) + dtype.type(PIXEL_CENTER)
    dx = np.broadcast_to((u - dtype.type(cx)) / dtype.type(fx), (height, width))
    dy = np.broadcast_to(((v - dtype.type(cy)) / dtype.type(fy))[:, None], (height, width))
    d_cam = np.stack([dx, dy, np.ones((height, width), dtype=dtype)], axis=-1)  # (H, W, 3)
    d_cam = d_cam / np.linalg.norm(d_cam, axis=-1, keepdims=True)
    R = c2ws[:, :3, :3].astype(dtype)
    d_world = np.einsum("fij,hwj->fhwi", R, d_cam)  # (F, H, W, 3)
    origin = np.broadcast_to(c2ws[:, None, None, :3, 3].astype(dtype), d_world.shape)
    return np.concatenate([origin, d_world], axis=-1)


def rays_to_latent_map(rays: np.ndarray, lat_h: int, lat_w: int) -> np.ndarray:
    """[F,H,W,6] -> [1, 6*c1*c2, F, lat_h, lat_w] with c1 = H/lat_h, c2 = W/lat_w.

    Channel index = ray_channel * c1*c2 + row_in_block * c2 + col_in_block (1536 channels for MG3's 16x16).
    """
    F, H, W, C = rays.shape
    if C != RAY_CHANNELS or H % lat_h or W % lat_w:
        raise ValueError(f"rays [F,H,W,{RAY_CHANNELS}] with H, W multiples of the latent grid "
                         f"({lat_h}x{lat_w}), got {list(rays.shape)}")
    return rearrange(rays, "f (h c1) (w c2) c -> 1 (c c1 c2) f h w", h=lat_h, w=lat_w)


def build_plucker_from_c2ws(c2ws: np.ndarray, src_indices, tgt_indices, framewise: bool, K: np.ndarray,
                            height: int, width: int, lat_h: int, lat_w: int) -> np.ndarray:
    """A clip's map: poses at `src_indices` -> [1, 1536, len(tgt), lat_h, lat_w] float32.

    1. select/interpolate the target poses (float32), 2. relative poses (framewise for clips,
    translations normalised; the first target becomes the identity), 3. pixel rays, 4. fold.
    """
    c2ws = check_c2ws(c2ws)
    src = np.asarray(src_indices, dtype=np.float64).reshape(-1)
    if len(src) != len(c2ws):
        raise ValueError(f"need one c2w per source index: {len(c2ws)} poses vs {len(src)} indices")
    poses = interpolate_poses_handedness(src, c2ws[:, :3, :3], c2ws[:, :3, 3], tgt_indices)  # (T, 4, 4) f32
    rel = compute_relative_poses(poses, framewise=framewise, normalize_trans=True)
    return rays_to_latent_map(pixel_rays(rel, K, height, width), lat_h, lat_w)


def build_plucker_from_pose(c2w: np.ndarray, K: np.ndarray, height: int, width: int,
                            lat_h: int, lat_w: int) -> np.ndarray:
    """One (relative) pose [4,4] or [1,4,4] -> [1, 1536, 1, lat_h, lat_w] in the pose's dtype (f64 memory)."""
    c2w = np.asarray(c2w)
    c2w = c2w[None] if c2w.ndim == 2 else c2w
    if c2w.shape != (1, 4, 4):
        raise ValueError(f"build_plucker_from_pose takes one pose [4,4] or [1,4,4], "
                         f"got {list(np.shape(c2w))}")
    return rays_to_latent_map(pixel_rays(c2w, K, height, width), lat_h, lat_w)


def _to_torch(array: np.ndarray, dtype=None, device=None):
    import torch

    return torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=dtype)


def build_plucker_from_c2ws_torch(*args, dtype=None, device=None, **kwargs):
    """`build_plucker_from_c2ws` returned as a torch tensor (same numbers; cast with `dtype`, e.g. bf16)."""
    return _to_torch(build_plucker_from_c2ws(*args, **kwargs), dtype, device)


def build_plucker_from_pose_torch(*args, dtype=None, device=None, **kwargs):
    """`build_plucker_from_pose` returned as a torch tensor."""
    return _to_torch(build_plucker_from_pose(*args, **kwargs), dtype, device)


####################################################################################################
# Clip schedule and frame <-> latent mapping (facts 4.7-4.9, 5.2)
####################################################################################################


@dataclass(frozen=True)
class ClipWindow:
    """Frames and latents of clip k. All ranges are [start, end)."""

    index: int
    start: int  # first pixel frame of the window (0 for the first clip, 40k+1 later)
    end: int  # exclusive end (57 + 40k)
    targets: tuple[int, ...]  # one pose per latent: the latent's last frame (frame 0 for latent 0)
    latent_start: int  # `predict_latent_idx` = (latent_start, latent_end)
    latent_end: int
    new_latent_start: int  # latents generated by this clip: [new_latent_start, latent_end)
    candidate_end: int  # retrieval candidates are pixel frames [1, candidate_end) (= start)

    @property
    def frames(self) -> range:
        return range(self.start, self.end)

    def base_frames(self, offsets: tuple[int, ...]) -> tuple[int, ...]:
        """Retrieval reference frames `selected_index_base` = end - offset (MG3: end-1, end-9, ...)."""
        return tuple(self.end - o for o in offsets)


@dataclass(frozen=True)
class ClipSchedule:
    """MG3's streaming clip schedule (facts 5.2). Defaults are the official numbers."""

    first_clip_frames: int = 57  # clip 0: the image frame + 14 latents * 4 frames
    clip_frames: int = 56  # later windows: 14 latents * 4 frames (`clip_frame`)
    new_frames: int = 40  # frames generated per later clip (10 latents)
    past_latents: int = 4  # clean prefix of later clips: the previous clip's last 4 latents (16 frames)
    temporal_stride: int = 4  # VAE temporal compression (frames per latent after latent 0)

    def __post_init__(self):
        s = self.temporal_stride
        if s < 1 or (self.first_clip_frames - 1) % s or self.clip_frames % s or self.new_frames % s:
            raise ValueError(f"ClipSchedule: first_clip_frames-1, clip_frames and new_frames must be "
                             f"multiples of temporal_stride={s}, got {self}")
        if self.past_latents * s + self.new_frames != self.clip_frames:
            raise ValueError(f"ClipSchedule: past_latents*temporal_stride + new_frames must equal "
                             f"clip_frames, got {self}")
        if self.first_clip_frames <= self.past_latents * s:
            raise ValueError(f"ClipSchedule: the first clip must be longer than the clean prefix, got {self}")

    @property
    def new_latents(self) -> int:
        return self.new_frames // self.temporal_stride

    @property
    def first_clip_latents(self) -> int:
        return (self.first_clip_frames - 1) // self.temporal_stride + 1

    def num_frames(self, num_clips: int) -> int:
        """Video length after `num_clips` clips (57 + 40 (n-1) for MG3)."""
        return self.first_clip_frames + self.new_frames * (num_clips - 1) if num_clips > 0 else 0

    def latent_of(self, frames):
        """`get_latent_idx`: (f - 1)//stride + 1 with Python floor (frame 0 -> latent 0). int or int array."""
        f = np.asarray(frames, dtype=np.int64)
        out = (f - 1) // self.temporal_stride + 1
        return int(out) if out.ndim == 0 else out

    def aligned(self, frames):
        """`align_frame_to_block`: first frame of f's latent block, (f-1)//stride*stride + 1; 1 for f = 0."""
        f = np.asarray(frames, dtype=np.int64)
        out = np.where(f > 0, (f - 1) // self.temporal_stride * self.temporal_stride + 1, 1)
        return int(out) if out.ndim == 0 else out

    def last_frame(self, latents):
        """The frame representing latent L (its last frame): stride * L (latent 0 -> frame 0)."""
        out = np.asarray(latents, dtype=np.int64) * self.temporal_stride
        return int(out) if out.ndim == 0 else out

    def window(self, k: int) -> ClipWindow:
        """Clip k: [0, 57) for k = 0, then [40k + 1, 40k + 57) (facts 4.7 / 5.2)."""
        if k < 0:
            raise ValueError(f"clip index must be >= 0, got {k}")
        end = self.first_clip_frames + self.new_frames * k
        start = 0 if k == 0 else end - self.clip_frames
        latent_start = self.latent_of(start)
        latent_end = self.latent_of(end - 1) + 1
        new_start = latent_start if k == 0 else latent_start + self.past_latents
        targets = tuple(int(f) for f in self.last_frame(np.arange(latent_start, latent_end)))
        return ClipWindow(k, start, end, targets, latent_start, latent_end, new_start, start)


MG3_SCHEDULE = ClipSchedule()


def plucker_for_clip(c2ws: np.ndarray, window: ClipWindow, K: np.ndarray, height: int, width: int,
                     lat_h: int, lat_w: int) -> np.ndarray:
    """The clip part of the Plücker map for `window` from the whole trajectory c2ws [T,4,4] (facts 4.7)."""
    c2ws = check_c2ws(c2ws)
    if window.end > len(c2ws):
        raise ValueError(f"clip {window.index} needs frames up to {window.end - 1}, "
                         f"trajectory has {len(c2ws)}")
    return build_plucker_from_c2ws(c2ws[window.start:window.end], np.arange(window.start, window.end),
                                   window.targets, True, K, height, width, lat_h, lat_w)


def memory_relative_pose(c2ws: np.ndarray, memory_frame: int, reference_frame: int,
                         schedule: ClipSchedule = MG3_SCHEDULE) -> np.ndarray:
    """Relative pose the pipeline feeds to a memory latent's Plücker map -> [4,4] float64 (facts 4.7).

    Memory block = `stride` frames from aligned(memory_frame); its last frame is selected through
    `interpolate_poses_handedness` (so it is rounded to float32, as officially), then made relative to
    the float64 reference (base) frame with `compute_relative_poses(framewise=False)`, which scales the
    translation to unit length (unless it is zero).
    """
    c2ws = check_c2ws(c2ws)
    first = schedule.aligned(memory_frame)
    block = np.arange(first, first + schedule.temporal_stride)
    if block[-1] >= len(c2ws) or not 0 <= reference_frame < len(c2ws):
        raise ValueError(f"memory frame {memory_frame} (block {block[0]}..{block[-1]}) or reference frame "
                         f"{reference_frame} outside the trajectory of {len(c2ws)} frames")
    pose = interpolate_poses_handedness(block, c2ws[block, :3, :3], c2ws[block, :3, 3], block[-1:])
    pair = np.stack([c2ws[reference_frame].astype(np.float64), pose[0].astype(np.float64)])
    return compute_relative_poses(pair, framewise=False, normalize_trans=True)[1]
