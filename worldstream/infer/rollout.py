"""One streaming clip as a function: `rollout_clip(bundle, state, actions, cfg) -> (new_latents, info)`.

Shared by `WorldSession` (which adds VAE encoding/decoding), the benchmarks and the DMD self-rollout. No
decoding, no printing, no stdin. `rollout_clip` = `prepare_clip` (steps 1-3 and the DiT inputs of 4) + the
sampler + `commit_clip` (step 5); the DMD self-rollout calls the two halves itself for the segment it trains
(gradients through the student's sampling, teacher and critic evaluated on the same `ClipInputs`).
Per clip k (facts 4.7-4.9, 5.2-5.3; the numbers are `SessionConfig` fields):

1. Poses: the clip's new action rows extend the trajectory with MG3's kinematics from the previous clip's
   last pose (`poses_from_actions(first_pose=last_pose)`, the interactive pipeline), then `get_extrinsics`.
   Row f is the action at pixel frame f (it moves the camera from frame f to f + 1).
2. Plücker maps of the clip window (one pose per latent: its last frame; framewise relative; first latent
   identity; translations normalised) and, from clip 1 on, of the memory latents (each relative to its
   reference frame window_end - offset, unit translation). Vectorised numpy (geometry/camera.py), then the
   session dtype.
3. Memory: the MemoryBank retrieves one latent per reference frame among the latents before the window,
   the last slot being the anchor (latent 1). Memory latents enter the DiT first, with t = 0, null actions
   and their absolute latent indices as RoPE positions (no memory in clip 0, as in MG3).
4. Sampling: a fresh scheduler (FlowUniPC / Euler / few-step), per-token timesteps (0 on the clean prefix),
   the prefix (clip 0: the image latent; later: the previous clip's last P latents) re-stitched after every
   step (`diffusion.samplers.sample_clip`). Noise comes from the session's generator in the latent dtype.
5. Bookkeeping: the new latents go to the latent store (CPU) and the bank; latents nothing can read any more
   (evicted from the bank, older than the clean prefix) are dropped, so memory stays bounded.

The latent store keeps only what retrieval and the next prefix can use (ours; MG3 keeps the whole timeline on
the GPU): with the bank capped at `memory_max_entries`, an hour-long session holds a few thousand latents.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from einops import rearrange

from worldstream.data.actions import MG3_KINEMATICS, Kinematics, poses_from_actions
from worldstream.diffusion.samplers import DenoiseFn, make_scheduler, sample_clip
from worldstream.geometry.camera import (
    PIXEL_CENTER,
    ClipWindow,
    compute_relative_poses,
    extrinsics_from_poses,
    interpolate_poses_handedness,
    intrinsics_90fov,
    memory_relative_pose,
)
from worldstream.geometry.memory import MemoryBank
from worldstream.infer.config import SessionConfig
from worldstream.infer.model_bundle import InferenceBundle

__all__ = ["ClipGeometry", "RayGrid", "clip_plucker", "memory_plucker", "Trajectory", "LatentStore",
           "RolloutState", "MemoryInfo", "ClipInfo", "ClipInputs", "new_state",
           "rows_for_next_clip", "prepare_clip", "commit_clip", "rollout_clip"]

KEYBOARD_DIM, MOUSE_DIM, POSE_DIM = 6, 2, 5
INITIAL_FRAMES = 1024  # trajectory storage before its first doubling
INITIAL_LATENTS = 64  # latent store slots before its first doubling


########################################################################################################
# Geometry of a clip


@dataclass(frozen=True)
class ClipGeometry:
    """Pixel and latent grid of a session: image H x W, latents lat_h x lat_w, DiT tokens per latent."""

    height: int
    width: int
    lat_h: int
    lat_w: int
    tokens_per_frame: int
    plucker_h: int  # pixel grid the rays are cast on: latent grid x DiT camera_block (= the image size
    plucker_w: int  # when camera_block is the VAE spatial stride, as for every preset)

    @classmethod
    def of(cls, bundle: InferenceBundle, cfg: SessionConfig) -> ClipGeometry:
        vae, dit = bundle.vae_config, bundle.dit.cfg
        s = vae.spatial_stride
        _, ph, pw = dit.patch_size
        if cfg.height % s or cfg.width % s or (cfg.height // s) % ph or (cfg.width // s) % pw:
            raise ValueError(f"image size {cfg.height}x{cfg.width} must be a multiple of the VAE stride {s} "
                             f"times the DiT patch {ph}x{pw}")
        if cfg.schedule.temporal_stride != vae.temporal_stride:
            raise ValueError(f"clip schedule temporal_stride {cfg.schedule.temporal_stride} != VAE temporal "
                             f"stride {vae.temporal_stride}")
        if dit.action is not None and dit.action.vae_time_compression_ratio != vae.temporal_stride:
            raise ValueError(f"DiT action module groups {dit.action.vae_time_compression_ratio} frames per "
                             f"latent, the VAE {vae.temporal_stride}")
        lat_h, lat_w = cfg.height // s, cfg.width // s
        return cls(cfg.height, cfg.width, lat_h, lat_w, (lat_h // ph) * (lat_w // pw),
                   lat_h * dit.camera_block, lat_w * dit.camera_block)

    @property
    def intrinsics(self) -> np.ndarray:
        """[fx, fy, cx, cy] of the Plücker rays: MG3's 90 degree FOV on both axes (facts 4.5)."""
        return intrinsics_90fov(self.plucker_h, self.plucker_w)


class RayGrid:
    """Plücker maps of camera poses with the per-pixel camera-space rays computed once per session (ours).

    Same numbers as `geometry.camera.pixel_rays` + `rays_to_latent_map` (facts 4.6: origin + unit direction,
    rays through pixel centres, channels (ray channel, row-in-block, col-in-block)), in the poses' dtype, but
    the unit directions are cached in the folded latent layout [3, N] (N = b*b * lat_h * lat_w), so a map is
    one [F, 3, 3] x [3, N] product plus the origins: no per-call ray grid, no fold copy.
    """

    def __init__(self, geo: ClipGeometry):
        self.geo = geo
        self._dirs = {dt: self._camera_dirs(np.dtype(dt)) for dt in (np.float32, np.float64)}

    def _camera_dirs(self, dtype: np.dtype) -> np.ndarray:
        """Unit d_cam = ((u - cx)/fx, (v - cy)/fy, 1)/norm in `dtype`, as pixel_rays -> [3, N]."""
        g = self.geo
        fx, fy, cx, cy = (dtype.type(v) for v in g.intrinsics)
        u = np.arange(g.plucker_w, dtype=dtype) + dtype.type(PIXEL_CENTER)
        v = np.arange(g.plucker_h, dtype=dtype) + dtype.type(PIXEL_CENTER)
        dx = np.broadcast_to((u - cx) / fx, (g.plucker_h, g.plucker_w))
        dy = np.broadcast_to(((v - cy) / fy)[:, None], (g.plucker_h, g.plucker_w))
        d = np.stack([dx, dy, np.ones((g.plucker_h, g.plucker_w), dtype=dtype)], axis=-1)  # [H, W, 3]
        d = d / np.linalg.norm(d, axis=-1, keepdims=True)
        folded = rearrange(d, "(h c1) (w c2) j -> j (c1 c2 h w)", h=g.lat_h, w=g.lat_w)
        return np.ascontiguousarray(folded)

    def maps(self, rel: np.ndarray) -> np.ndarray:
        """Relative poses [F, 4, 4] (float32 clip / float64 memory) -> [1, 6*b*b, F, lat_h, lat_w]."""
        dtype = np.result_type(rel.dtype, np.float32)
        dirs = rel[:, :3, :3].astype(dtype) @ self._dirs[dtype.type]  # [F, 3, N] = R d_cam
        origin = np.broadcast_to(rel[:, :3, 3].astype(dtype)[:, :, None], dirs.shape)  # [F, 3, N]
        rays = np.concatenate([origin, dirs], axis=1)  # [F, 6, N]
        return rearrange(rays, "f c (k h w) -> 1 (c k) f h w", h=self.geo.lat_h, w=self.geo.lat_w)


########################################################################################################
# State containers


class Trajectory:
    """Per-pixel-frame actions and cameras of a session; storage doubles when full (amortised O(1))."""

    def __init__(self, kinematics: Kinematics = MG3_KINEMATICS, capacity: int = INITIAL_FRAMES):
        self.kinematics = kinematics
        self._kb = np.zeros((capacity, KEYBOARD_DIM), np.float32)
        self._mouse = np.zeros((capacity, MOUSE_DIM), np.float32)
        self._poses = np.zeros((capacity, POSE_DIM), np.float32)
        self._c2w = np.zeros((capacity, 4, 4), np.float64)
        self.n = 0
        self.last_pose: np.ndarray | None = None  # pose of frame n (the next clip's first pose), float64

    def __len__(self) -> int:
        return self.n

    @property
    def keyboard(self) -> np.ndarray:
        return self._kb[: self.n]  # [T, 6]

    @property
    def mouse(self) -> np.ndarray:
        return self._mouse[: self.n]  # [T, 2]

    @property
    def poses(self) -> np.ndarray:
        return self._poses[: self.n]  # [T, 5] (x, y, z, pitch, yaw)

    @property
    def c2ws(self) -> np.ndarray:
        return self._c2w[: self.n]  # [T, 4, 4] float64

    def _grow(self, need: int) -> None:
        cap = len(self._kb)
        if need <= cap:
            return
        while cap < need:
            cap *= 2
        for name in ("_kb", "_mouse", "_poses", "_c2w"):
            old = getattr(self, name)
            new = np.zeros((cap, *old.shape[1:]), old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

    def extend(self, keyboard: np.ndarray, mouse: np.ndarray) -> range:
        """Append rows; poses continue from `last_pose` with MG3's kinematics. Returns the new frame range."""
        poses, last = poses_from_actions(keyboard, mouse, self.last_pose, self.kinematics)  # [n, 5] f32
        n0, n1 = self.n, self.n + len(poses)
        self._grow(n1)
        self._kb[n0:n1], self._mouse[n0:n1], self._poses[n0:n1] = keyboard, mouse, poses
        self._c2w[n0:n1] = extrinsics_from_poses(poses)
        self.n, self.last_pose = n1, last
        return range(n0, n1)


class LatentStore:
    """The latent timeline on the CPU, holding only latents that can still be read (`retain`).

    One preallocated tensor [slots, C, h, w] in the latent dtype (compact, no per-latent objects); slots of
    dropped latents are reused; it doubles only when every slot is live.
    """

    def __init__(self, frame_shape: tuple[int, int, int], dtype: torch.dtype,
                 capacity: int = INITIAL_LATENTS):
        self._data = torch.zeros(capacity, *frame_shape, dtype=dtype)
        self._slot: dict[int, int] = {}
        self._free = list(range(capacity - 1, -1, -1))
        self.num_latents = 0  # timeline length: the index the next latent gets

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, latent: int) -> bool:
        return latent in self._slot

    @property
    def stored(self) -> list[int]:
        return sorted(self._slot)

    @property
    def nbytes(self) -> int:
        return self._data.numel() * self._data.element_size()

    def append(self, latents: torch.Tensor) -> range:
        """latents [1, C, n, h, w] -> stored as timeline indices [num_latents, num_latents + n)."""
        frames = rearrange(latents.detach().to("cpu", self._data.dtype), "1 c n h w -> n c h w")
        if frames.shape[1:] != self._data.shape[1:]:
            raise ValueError(f"latent store holds [C, h, w] = {list(self._data.shape[1:])}, got "
                             f"{list(frames.shape[1:])}")
        n = frames.shape[0]
        while len(self._free) < n:
            cap = self._data.shape[0]
            self._data = torch.cat([self._data, torch.zeros_like(self._data)])
            self._free = list(range(2 * cap - 1, cap - 1, -1)) + self._free
        slots = [self._free.pop() for _ in range(n)]
        self._data[torch.tensor(slots)] = frames
        new = range(self.num_latents, self.num_latents + n)
        self._slot.update(zip(new, slots))
        self.num_latents += n
        return new

    def get(self, latents: Iterable[int]) -> torch.Tensor:
        """Timeline indices (may repeat) -> [1, C, k, h, w]."""
        latents = [int(i) for i in latents]
        missing = [i for i in latents if i not in self._slot]
        if missing:
            raise KeyError(f"latent(s) {missing[:8]} are not stored (dropped or not generated yet; "
                           f"{len(self._slot)} of {self.num_latents} kept)")
        picked = self._data[torch.tensor([self._slot[i] for i in latents])]  # [k, C, h, w]
        return rearrange(picked, "k c h w -> 1 c k h w")

    def retain(self, keep: Iterable[int]) -> None:
        """Drop every stored latent not in `keep` (its slot is reused)."""
        keep = set(int(i) for i in keep)
        for i in [i for i in self._slot if i not in keep]:
            self._free.append(self._slot.pop(i))


@dataclass
class RolloutState:
    """Everything a session carries from clip to clip."""

    geometry: ClipGeometry
    rays: RayGrid  # cached per-pixel rays of the geometry
    context: torch.Tensor  # [text_len, text_dim] prompt embedding, DiT dtype
    trajectory: Trajectory
    latents: LatentStore
    bank: MemoryBank | None  # None: memory off
    generator: torch.Generator  # noise (and the few-step sampler's re-noising)
    clip: int = 0  # index of the next clip


@dataclass(frozen=True)
class MemoryInfo:
    """The memory a clip used: one entry per slot (the anchor last)."""

    latents: tuple[int, ...]
    frames: tuple[int, ...]  # representative pixel frame of each latent (its last frame)
    confidences: tuple[float, ...]  # sampled frustum overlap with the slot's reference frame
    base_frames: tuple[int, ...]  # reference frames (window end - offset)
    anchor: bool


@dataclass(frozen=True)
class ClipInfo:
    clip: int
    window: ClipWindow
    new_frames: tuple[int, int]  # frames added to the trajectory [start, end) (clip 0: with frame 0)
    new_latents: tuple[int, int]  # latents this clip generated [start, end)
    memory: MemoryInfo | None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase


@dataclass
class ClipInputs:
    """Everything the DiT sees while denoising one clip (prepared once; any DiT can be run on it)."""

    clip: int
    window: ClipWindow
    num_prefix: int  # P clean latents at the window start (clip 0: the image latent)
    prefix: torch.Tensor  # [1, C, P, h, w] clean prefix
    noise: torch.Tensor  # [1, C, F, h, w] initial noise of the whole window (prefix frames overwritten)
    keyboard: torch.Tensor  # [1, N, 6] action rows of the window
    mouse: torch.Tensor  # [1, N, 2]
    plucker: torch.Tensor  # [1, 6*b*b, M+F, h, w] memory maps first
    context: list[torch.Tensor]  # [text_len, text_dim] prompt embedding
    memory_kwargs: dict  # x_memory [1, C, M, h, w] + memory_latent_idx (empty without memory)
    memory: MemoryInfo | None
    new_frames: range  # trajectory frames this clip added
    tokens_per_frame: int

    def denoiser(self, dit) -> DenoiseFn:
        """(latents [1, C, F, h, w], timestep tokens [1, F * tokens]) -> dit's velocity [1, C, F, h, w]."""
        def denoise(latents: torch.Tensor, t_tokens: torch.Tensor) -> torch.Tensor:
            return dit(latents, t_tokens, self.context, mouse_cond=self.mouse, keyboard_cond=self.keyboard,
                       plucker_emb=self.plucker, predict_latent_idx=(self.window.latent_start,
                                                                     self.window.latent_end),
                       **self.memory_kwargs)
        return denoise


########################################################################################################
# Clip


def new_state(bundle: InferenceBundle, cfg: SessionConfig, image_latent: torch.Tensor,
              context: torch.Tensor) -> RolloutState:
    """Fresh state: latent 0 = the encoded image [1, C, 1, h, w], the prompt embedding [L, text_dim]."""
    geo = ClipGeometry.of(bundle, cfg)
    C = bundle.latent_channels
    if tuple(image_latent.shape) != (1, C, 1, geo.lat_h, geo.lat_w):
        raise ValueError(f"image_latent: expected [1, {C}, 1, {geo.lat_h}, {geo.lat_w}], got "
                         f"{list(image_latent.shape)}")
    store = LatentStore((C, geo.lat_h, geo.lat_w), cfg.torch_dtype)
    store.append(image_latent)
    bank = MemoryBank(cfg.memory_bank_config()) if cfg.use_memory else None
    generator = torch.Generator(bundle.device).manual_seed(cfg.seed)
    return RolloutState(geo, RayGrid(geo), context.to(bundle.device, bundle.dtype), Trajectory(), store, bank,
                        generator)


def rows_for_next_clip(state: RolloutState, cfg: SessionConfig) -> int:
    """Action rows the next clip needs: its window end minus the frames with rows (MG3: 57, then 40)."""
    return cfg.schedule.window(state.clip).end - state.trajectory.n


def clip_plucker(c2ws: np.ndarray, win: ClipWindow, rays: RayGrid) -> np.ndarray:
    """The clip's map [1, 6*b*b, F, h, w] float32 from the trajectory c2ws (`plucker_for_clip`, facts 4.7).

    One pose per latent (its last frame, selected by the official interpolation), framewise relative,
    translations normalised, the first latent the identity. Reads only the window's poses.
    """
    s, e = win.start, win.end
    src = np.arange(s, e)
    poses = interpolate_poses_handedness(src, c2ws[s:e, :3, :3], c2ws[s:e, :3, 3], win.targets)  # [F,4,4] f32
    return rays.maps(compute_relative_poses(poses, framewise=True, normalize_trans=True))


def memory_plucker(c2ws: np.ndarray, frames, bases, cfg: SessionConfig, rays: RayGrid) -> np.ndarray:
    """[1, 6*b*b, M, h, w] float64: each memory latent relative to its reference frame (facts 4.7).

    NOTE `memory_relative_pose` reads only the memory frame's latent block and the reference frame (and
    validates the array it gets), so each call gets just those poses, renumbered: the reference at 0, the
    block at 1..stride (the block of frame `stride`): the cost does not grow with the session.
    """
    sched, stride = cfg.schedule, cfg.schedule.temporal_stride
    rel = []
    for m, r in zip(frames, bases):
        first = int(sched.aligned(int(m)))
        poses = np.concatenate([c2ws[int(r)][None], c2ws[first:first + stride]])  # [1 + stride, 4, 4]
        rel.append(memory_relative_pose(poses, stride, 0, sched))
    return rays.maps(np.stack(rel))


class _Laps:
    """Seconds per named phase, each measured from the previous lap."""

    def __init__(self):
        self.timings: dict[str, float] = {}
        self._tick = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name], self._tick = now - self._tick, now


@torch.inference_mode()
def rollout_clip(bundle: InferenceBundle, state: RolloutState, actions, cfg: SessionConfig
                 ) -> tuple[torch.Tensor, ClipInfo]:
    """Generate clip `state.clip` -> (new latents [1, C, n, h, w] in the latent dtype, ClipInfo).

    `actions` = (keyboard [N, 6], mouse [N, 2]) (or anything with .keyboard / .mouse) for the frames the clip
    adds to the trajectory: N = `rows_for_next_clip` (MG3: 57 for clip 0, 40 later). Updates `state`.
    """
    traj = state.trajectory
    undo = (traj.n, traj.last_pose, state.generator.get_state())  # a failed clip leaves the state as it was
    timer = _Laps()
    try:
        inputs = prepare_clip(bundle, state, actions, cfg, timer.lap)
        return _sample_and_commit(bundle, state, inputs, cfg, timer)
    except BaseException:
        traj.n, traj.last_pose = undo[0], undo[1]
        state.generator.set_state(undo[2])
        raise


def _check_actions(state: RolloutState, actions, cfg: SessionConfig) -> tuple[np.ndarray, np.ndarray]:
    k = state.clip
    keyboard, mouse = (actions.keyboard, actions.mouse) if hasattr(actions, "keyboard") else actions
    keyboard = np.asarray(keyboard, np.float32)
    mouse = np.asarray(mouse, np.float32)
    need = rows_for_next_clip(state, cfg)
    if keyboard.shape != (need, KEYBOARD_DIM) or mouse.shape != (need, MOUSE_DIM):
        raise ValueError(f"clip {k} needs {need} action rows: keyboard [{need}, {KEYBOARD_DIM}] and mouse "
                         f"[{need}, {MOUSE_DIM}], got {list(keyboard.shape)} and {list(mouse.shape)}")
    if not (np.isfinite(keyboard).all() and np.isfinite(mouse).all()):
        raise ValueError(f"clip {k}: action rows contain NaN or inf")
    return keyboard, mouse


def prepare_clip(bundle: InferenceBundle, state: RolloutState, actions, cfg: SessionConfig,
                 lap=None) -> ClipInputs:
    """Steps 1-3 and the inputs of step 4 for clip `state.clip`: extends the trajectory and draws the noise.

    NOTE mutates `state` (trajectory, generator); `rollout_clip` undoes that on failure, direct callers
    own it.
    """
    keyboard, mouse = _check_actions(state, actions, cfg)
    lap = lap or (lambda name: None)
    k, geo, sched, traj = state.clip, state.geometry, cfg.schedule, state.trajectory
    win = sched.window(k)

    # 1. poses of the new frames from the previous clip's last pose
    new_frames = traj.extend(keyboard, mouse)
    c2ws = traj.c2ws
    lap("poses")

    # 2. clip Plücker map (the window's poses only: no O(history) work)
    s, e = win.start, win.end
    plucker = torch.from_numpy(clip_plucker(c2ws, win, state.rays))  # [1, 6*b*b, F, h, w]
    plucker = plucker.to(bundle.device, bundle.dtype)
    lap("plucker")

    # 3. memory: retrieval (bank), latents (store), Plücker maps relative to the reference frames
    memory, mem_kw = None, {}
    if state.bank is not None and k > 0:
        bases = win.base_frames(cfg.retrieval.base_offsets)
        got = state.bank.retrieve(c2ws[list(bases)], k=cfg.num_memory, before_frame=win.candidate_end,
                                  anchor=cfg.anchor, method=cfg.retrieval_method)
        memory = MemoryInfo(tuple(int(v) for v in got.latents), tuple(int(v) for v in got.frames),
                            tuple(float(v) for v in got.confidences), tuple(int(b) for b in bases),
                            cfg.anchor)
        lap("retrieval")
        mem_map = memory_plucker(c2ws, got.frames, bases, cfg, state.rays)  # [1, 6*b*b, M, h, w]
        mem_map = torch.from_numpy(mem_map).to(bundle.device, bundle.dtype)
        plucker = torch.cat([mem_map, plucker], dim=2)  # memory first, as the tokens
        mem_kw = dict(x_memory=state.latents.get(memory.latents).to(bundle.device),
                      memory_latent_idx=list(memory.latents))
        lap("plucker_memory")

    # 4. (inputs) noise, clean prefix, the window's action rows
    P = 1 if k == 0 else sched.past_latents
    F = win.latent_end - win.latent_start
    prefix = state.latents.get(range(win.latent_start, win.latent_start + P)).to(bundle.device)
    noise = torch.randn((1, bundle.latent_channels, F, geo.lat_h, geo.lat_w), generator=state.generator,
                        dtype=cfg.torch_dtype, device=bundle.device)
    rows_kb = torch.from_numpy(np.ascontiguousarray(traj.keyboard[s:e]))[None].to(bundle.device)  # [1, N, 6]
    rows_mouse = torch.from_numpy(np.ascontiguousarray(traj.mouse[s:e]))[None].to(bundle.device)  # [1, N, 2]
    return ClipInputs(k, win, P, prefix, noise, rows_kb, rows_mouse, plucker, [state.context], mem_kw, memory,
                      new_frames, geo.tokens_per_frame)


def _sample_and_commit(bundle: InferenceBundle, state: RolloutState, inputs: ClipInputs, cfg: SessionConfig,
                       timer: _Laps) -> tuple[torch.Tensor, ClipInfo]:
    # 4. sample: a fresh scheduler, per-token timesteps, the prefix re-stitched after every step
    P = inputs.num_prefix
    scheduler = make_scheduler(cfg.sampler, generator=state.generator)
    out = sample_clip(inputs.denoiser(bundle.dit), inputs.noise, inputs.prefix, P, scheduler, cfg.steps,
                      cfg.shift, tokens_per_frame=inputs.tokens_per_frame,
                      timestep_in_latent_dtype=cfg.timestep_in_latent_dtype)  # [1, C, F, h, w]
    new = out[:, :, P:].contiguous()
    timer.lap("sample")
    stored = commit_clip(state, inputs, new, cfg)
    timer.lap("bookkeeping")
    info = ClipInfo(inputs.clip, inputs.window, (inputs.new_frames.start, inputs.new_frames.stop),
                    (stored.start, stored.stop), inputs.memory, timer.timings)
    return new, info


def commit_clip(state: RolloutState, inputs: ClipInputs, new: torch.Tensor, cfg: SessionConfig) -> range:
    """Step 5 for clip `inputs`: store its new latents [1, C, n, h, w]; their timeline range."""
    win, sched = inputs.window, cfg.schedule
    # 5. bookkeeping: store, bank, drop what nothing can read any more
    stored = state.latents.append(new)
    expected = range(win.latent_start + inputs.num_prefix, win.latent_end)
    if stored != expected:
        raise RuntimeError(f"latent timeline out of step: stored {stored}, clip {inputs.clip} generated "
                           f"{expected}")
    keep = {0, *range(win.latent_end - sched.past_latents, win.latent_end)}
    if state.bank is not None:
        lat = np.arange(stored.start, stored.stop)
        fr = sched.last_frame(lat)
        state.bank.add_many(lat, state.trajectory.c2ws[fr], fr)
        keep.update(int(i) for i in state.bank.latents)
    state.latents.retain(keep)
    state.clip += 1
    return stored
