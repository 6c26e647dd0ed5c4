"""DiT conditioning for a training window cut from a clip's latent timeline (base and memory stages).

The inference pipeline (facts 4.7-4.9, 5.2-5.3) decides, per clip, which latents are clean, which poses
feed the Plücker maps, which action rows are passed and which memory latents are retrieved. Training
reproduces the same inputs for a window at any position of a clip:

* Windows (`TrainWindow`): later-clip style = `past_latents` clean latents + `new_latents` noisy ones
  starting at any latent s >= 1 (MG3: 4 + 10 at s = 10k + 1); first-clip style = latent 0 (the image) +
  past + new noisy latents (MG3: 1 + 14). Pixel frames [stride*(s-1)+1, stride*(s+n-1)+1), i.e. every
  frame of the window's latents; for the first clip [0, stride*(n-1)+1).
* Action rows: the window's pixel frames, so N = stride*n (later) or stride*(n-1)+1 (first clip), the
  official grouping rule (facts 3.2). Memory latents get the null action (+1 mouse, -1 keyboard).
* Per-token timesteps: sigma * 1000 on the noisy latents, 0 on the clean prefix and on memory (5.3).
* Plücker maps (4.7): the window's poses at each latent's last frame, framewise relative, translations
  normalised, first latent = identity; each memory latent relative to its reference ("base") frame
  window_end - offset, translation normalised to unit length. Memory maps come first. Computed once per
  sample in numpy (float32 window, float64 memory, as officially).
* Memory (4.9-4.11): retrieved from the clip's own latents *before* the window by camera geometry, with
  the MG3 training sampler `select_memory_idx` ("sampler", facts 4.11) or the pipelines' frustum selector
  `select_memory_idx_fov` ("fov", 4.9); the anchor rule puts latent 1 (frame 4) in the last slot. RoPE
  uses absolute latent indices: `memory_latent_idx` = the memory latents' timeline indices,
  `predict_latent_idx` = the window's range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from einops import rearrange, repeat

from worldstream.data.actions import NULL_KEYBOARD, NULL_MOUSE
from worldstream.geometry.camera import (
    ClipSchedule,
    build_plucker_from_c2ws,
    intrinsics_90fov,
    memory_relative_pose,
    pixel_rays,
    rays_to_latent_map,
)
from worldstream.geometry.retrieval import (
    RetrievalConfig,
    apply_anchor,
    select_memory_idx,
    select_memory_idx_fov,
)
from worldstream.train.batch import ClipLatents, LatentBatch

__all__ = [
    "TrainWindowConfig", "MemoryWindowConfig", "TrainWindow", "sample_windows", "window_action_rows",
    "token_timesteps", "null_memory_actions", "window_plucker", "memory_plucker", "retrieve_memory",
    "build_latent_batch",
]

IntrinsicsMode = Literal["fov90", "clip"]


@dataclass(frozen=True)
class TrainWindowConfig:
    """Shape of a training window (nano defaults; MG3: past 4, new 10)."""

    past_latents: int = 2  # P: clean prefix of a later-clip window (MG3 4 = "16 past frames")
    new_latents: int = 4  # F: noisy latents of a later-clip window (MG3 10 = 40 frames)
    p_i2v: float = 0.2  # probability that a micro-batch is first-clip style (image latent + P + F noisy)
    temporal_stride: int = 4  # VAE temporal compression: pixel frames per latent after latent 0
    shared_start: bool = False  # one window start for the whole micro-batch (fewer DiT calls without memory)

    def __post_init__(self) -> None:
        if self.past_latents < 1 or self.new_latents < 1:
            raise ValueError(f"TrainWindowConfig: past_latents and new_latents must be >= 1, got {self}")
        if not 0.0 <= self.p_i2v <= 1.0:
            raise ValueError(f"TrainWindowConfig: p_i2v must be in [0, 1], got {self.p_i2v}")
        if self.temporal_stride < 1:
            raise ValueError(f"TrainWindowConfig: temporal_stride must be >= 1, got {self.temporal_stride}")

    @property
    def window_latents(self) -> int:
        """Latents of a later-clip window (MG3 14)."""
        return self.past_latents + self.new_latents

    @property
    def first_clip_latents(self) -> int:
        """Latents of a first-clip window: the image latent + the rest noisy (MG3 15)."""
        return 1 + self.window_latents

    @property
    def schedule(self) -> ClipSchedule:
        """The streaming clip schedule these windows train (nano: 25 / 24 / 16 frames)."""
        s, n = self.temporal_stride, self.window_latents
        return ClipSchedule(first_clip_frames=s * n + 1, clip_frames=s * n, new_frames=s * self.new_latents,
                            past_latents=self.past_latents, temporal_stride=s)


@dataclass(frozen=True)
class MemoryWindowConfig:
    """Memory retrieval for training windows (nano defaults; MG3: 5 slots, offsets 1..33)."""

    num_memory: int = 4  # M memory latents per window, the anchor included (MG3 5)
    retriever: Literal["sampler", "fov"] = "sampler"  # facts 4.11 training sampler | 4.9 pipeline selector
    anchor: bool = True  # MG3 rule: the last slot is the anchor frame (4 -> latent 1)
    # reference ("base") frames = window end - offset, one per slot (Plücker reference; "fov" scores them;
    # "sampler" puts its point balls around those inside the window). MG3 spacing of 8 frames.
    retrieval: RetrievalConfig = field(default_factory=lambda: RetrievalConfig(base_offsets=(1, 9, 17, 25)))

    def __post_init__(self) -> None:
        if self.num_memory < 1:
            raise ValueError(f"MemoryWindowConfig: num_memory must be >= 1, got {self.num_memory}")
        if len(self.retrieval.base_offsets) != self.num_memory:
            raise ValueError(f"MemoryWindowConfig: retrieval.base_offsets {self.retrieval.base_offsets} must "
                             f"give one reference frame per memory slot ({self.num_memory})")
        if self.retriever not in ("sampler", "fov"):
            raise ValueError(f"MemoryWindowConfig: retriever must be 'sampler' or 'fov', "
                             f"got {self.retriever!r}")

    @property
    def retrieved(self) -> int:
        """Slots filled by retrieval (the anchor slot is not)."""
        return self.num_memory - int(self.anchor)


########################################################################################################
# Window geometry


@dataclass(frozen=True)
class TrainWindow:
    """Latents [start, start + num_latents) of a timeline and the pixel frames they cover."""

    start: int  # first latent (0 for a first-clip window)
    num_latents: int
    first_clip: bool
    stride: int = 4

    def __post_init__(self) -> None:
        if self.first_clip and self.start != 0:
            raise ValueError(f"a first-clip window starts at latent 0 (the image), got start={self.start}")
        if not self.first_clip and self.start < 1:
            raise ValueError(f"a later-clip window starts at latent >= 1, got start={self.start}")

    @property
    def latent_end(self) -> int:
        return self.start + self.num_latents

    @property
    def frame_start(self) -> int:
        """First pixel frame: 0, or the first frame of latent `start` (MG3 40k + 1)."""
        return 0 if self.first_clip else self.stride * (self.start - 1) + 1

    @property
    def frame_end(self) -> int:
        """Exclusive end: one past the last frame of the last latent (MG3 57 + 40k)."""
        return self.stride * (self.latent_end - 1) + 1

    @property
    def num_rows(self) -> int:
        """Action rows = window frames: stride*n (later) or stride*(n-1)+1 (first clip)."""
        return self.frame_end - self.frame_start

    @property
    def targets(self) -> np.ndarray:
        """The pose frame of each latent: its last frame stride*L (latent 0: frame 0)."""
        return self.stride * np.arange(self.start, self.latent_end)

    def base_frames(self, offsets: Sequence[int]) -> list[int]:
        """Retrieval reference frames frame_end - offset (MG3 `selected_index_base`)."""
        return [self.frame_end - int(o) for o in offsets]


def sample_windows(num_latents: int, batch: int, cfg: TrainWindowConfig, min_start: int = 1,
                   generator: torch.Generator | None = None) -> list[TrainWindow]:
    """Draw one micro-batch of windows from timelines of `num_latents` latents (torch RNG: resumable).

    1. first-clip style with probability `p_i2v` (the whole micro-batch: shapes must agree), else
    2. later-clip windows starting uniformly in [min_start, T - P - F] (per sample, or shared).
    """
    T = num_latents
    if float(torch.rand((), generator=generator)) < cfg.p_i2v:
        if T < cfg.first_clip_latents:
            raise ValueError(f"a first-clip window needs {cfg.first_clip_latents} latents, clips have {T}")
        return [TrainWindow(0, cfg.first_clip_latents, True, cfg.temporal_stride)] * batch
    hi = T - cfg.window_latents
    if hi < min_start:
        raise ValueError(f"a later-clip window of {cfg.window_latents} latents starting at latent >= "
                         f"{min_start} needs clips of >= {min_start + cfg.window_latents} latents, "
                         f"the clips have {T}")
    n = 1 if cfg.shared_start else batch
    starts = torch.randint(min_start, hi + 1, (n,), generator=generator).tolist()
    starts = starts * batch if cfg.shared_start else starts
    return [TrainWindow(int(s), cfg.window_latents, False, cfg.temporal_stride) for s in starts]


########################################################################################################
# Actions and timesteps


def window_action_rows(rows: torch.Tensor, frame_start: torch.Tensor, num_rows: int) -> torch.Tensor:
    """rows [B, Nf, C], frame_start [B] int64 -> the window rows [B, num_rows, C] (one gather)."""
    idx = frame_start.to(rows.device)[:, None] + torch.arange(num_rows, device=rows.device)[None]  # [B, N]
    if int(idx.max()) >= rows.shape[1]:
        raise ValueError(f"window action rows end at frame {int(idx.max())}, "
                         f"the clip has {rows.shape[1]} frames")
    return torch.gather(rows, 1, idx[..., None].expand(-1, -1, rows.shape[2]))


def null_memory_actions(batch: int, memory: int, keyboard_dim: int, mouse_dim: int,
                        device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The official memory actions (facts 3.1): keyboard -1 [B, M, 6], mouse +1 [B, M, 2]."""
    return (torch.full((batch, memory, keyboard_dim), NULL_KEYBOARD, device=device),
            torch.full((batch, memory, mouse_dim), NULL_MOUSE, device=device))


def token_timesteps(sigma: torch.Tensor, num_frames: int, num_prefix: int, tokens_per_frame: int,
                    num_train_timesteps: int) -> torch.Tensor:
    """sigma [B] -> per-token DiT timesteps [B, F*S]: sigma * 1000 on noisy frames, 0 on the clean prefix."""
    t = (sigma.float() * num_train_timesteps)[:, None].expand(-1, num_frames).clone()  # [B, F]
    t[:, :num_prefix] = 0.0
    return repeat(t, "b f -> b (f s)", s=tokens_per_frame)


########################################################################################################
# Plücker maps and memory retrieval (numpy, once per sample)


def window_plucker(c2ws: np.ndarray, window: TrainWindow, K: np.ndarray, height: int, width: int,
                   lat_h: int, lat_w: int) -> np.ndarray:
    """The window's map [6*b*b, n, lat_h, lat_w] float32 (facts 4.7, as `plucker_for_clip`)."""
    if window.frame_end > len(c2ws):
        raise ValueError(f"window frames [{window.frame_start}, {window.frame_end}) exceed the clip's "
                         f"{len(c2ws)} camera poses")
    fs, fe = window.frame_start, window.frame_end
    out = build_plucker_from_c2ws(c2ws[fs:fe], np.arange(fs, fe), window.targets, True, K, height, width,
                                  lat_h, lat_w)
    return out[0].astype(np.float32)


def memory_plucker(c2ws: np.ndarray, memory_frames: Sequence[int], reference_frames: Sequence[int],
                   schedule: ClipSchedule, K: np.ndarray, height: int, width: int, lat_h: int,
                   lat_w: int) -> np.ndarray:
    """Memory maps [6*b*b, M, lat_h, lat_w] float32: each memory latent's last frame relative to its
    reference frame, translation scaled to unit length (float64 poses, facts 4.7)."""
    rel = np.stack([memory_relative_pose(c2ws, int(m), int(r), schedule)
                    for m, r in zip(memory_frames, reference_frames)])  # [M, 4, 4] f64
    return rays_to_latent_map(pixel_rays(rel, K, height, width), lat_h, lat_w)[0].astype(np.float32)


def retrieve_memory(c2ws: np.ndarray, window: TrainWindow, cfg: MemoryWindowConfig, schedule: ClipSchedule,
                    rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Memory pixel frames [M] from the clip's frames before the window, and their reference frames [M].

    "sampler": `select_memory_idx` (facts 4.11) over the latents before the window for the retrieved
    slots, then the anchor appended (the same picks as retrieving M and overwriting the last slot,
    since the sampler is greedy). "fov": `select_memory_idx_fov` per reference frame, then `apply_anchor`.
    """
    rc = cfg.retrieval
    refs = window.base_frames(rc.base_offsets)
    if min(refs) < 0:
        raise ValueError(f"memory reference frames {refs} of window latents [{window.start}, "
                         f"{window.latent_end}) fall before frame 0; shorten retrieval.base_offsets")
    if cfg.retriever == "fov":
        picks, _ = select_memory_idx_fov(c2ws, window.frame_start, refs, rc)
        return (apply_anchor(picks, rc) if cfg.anchor else picks), refs
    picks = select_memory_idx(c2ws, window.frame_start, window.frame_end, window.frame_start, cfg.retrieved,
                              rng, is_train=True, schedule=schedule, cfg=rc)
    return (picks + [rc.anchor_frame] if cfg.anchor else picks), refs


########################################################################################################
# The batch


def _intrinsics(clip: ClipLatents, b: int, mode: IntrinsicsMode, height: int, width: int) -> np.ndarray:
    if mode == "fov90":
        return intrinsics_90fov(height, width)
    if mode == "clip":
        if clip.intrinsics is None:
            raise ValueError("intrinsics='clip' needs ClipLatents.intrinsics [B, 4]; none given")
        return clip.intrinsics[b].detach().cpu().double().numpy()
    raise ValueError(f"intrinsics mode must be 'fov90' or 'clip', got {mode!r}")


def _gather_latents(latents: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """latents [B, C, T, h, w], index [B, K] int64 -> [B, C, K, h, w]."""
    rows = torch.arange(latents.shape[0], device=latents.device)[:, None]
    picked = latents.transpose(1, 2)[rows, index.to(latents.device)]  # [B, K, C, h, w]
    return rearrange(picked, "b k c h w -> b c k h w")


def build_latent_batch(clip: ClipLatents, windows: Sequence[TrainWindow], cfg: TrainWindowConfig,
                       camera_block: int, *, memory: MemoryWindowConfig | None = None,
                       rng: np.random.Generator | None = None,
                       intrinsics: IntrinsicsMode = "fov90") -> LatentBatch:
    """The DiT conditioning of one window per sample (see the module docstring).

    camera_block = pixels per latent pixel of the Plücker map (`DiTConfig.camera_block`); the maps are
    computed at (h * camera_block, w * camera_block) pixels. Memory (if `memory`) is retrieved for
    later-clip windows only: the first clip has none, as in the pipeline.
    """
    # 1. windows must agree in shape; latents, frames and actions of the window
    B, _, T, lat_h, lat_w = clip.latents.shape
    if len(windows) != B:
        raise ValueError(f"need one window per sample: {len(windows)} windows for a batch of {B}")
    w0 = windows[0]
    if any((w.num_latents, w.first_clip) != (w0.num_latents, w0.first_clip) for w in windows):
        raise ValueError("all windows of a micro-batch must have the same length and style (first clip or "
                         "not)")
    if max(w.latent_end for w in windows) > T:
        raise ValueError(f"window latents end at {max(w.latent_end for w in windows)}, the clips have {T}")
    starts = torch.tensor([w.start for w in windows], dtype=torch.long)
    lat_idx = starts[:, None] + torch.arange(w0.num_latents)[None]  # [B, n]
    latents = _gather_latents(clip.latents, lat_idx)  # [B, C, n, h, w]
    frame_start = torch.tensor([w.frame_start for w in windows], dtype=torch.long)
    keyboard = window_action_rows(clip.keyboard, frame_start, w0.num_rows)  # [B, N, 6]
    mouse = window_action_rows(clip.mouse, frame_start, w0.num_rows)  # [B, N, 2]

    # 2. per sample: retrieval and Plücker maps (numpy geometry, once per sample)
    height, width = lat_h * camera_block, lat_w * camera_block
    c2ws = clip.c2w.detach().cpu().double().numpy()  # [B, Nf, 4, 4]
    use_memory = memory is not None and not w0.first_clip
    if use_memory and rng is None:
        raise ValueError("memory retrieval needs a numpy Generator (rng)")
    maps, mem_frames = [], []
    for b, w in enumerate(windows):
        K = _intrinsics(clip, b, intrinsics, height, width)
        clip_map = window_plucker(c2ws[b], w, K, height, width, lat_h, lat_w)  # [Cp, n, h, w]
        if use_memory:
            frames, refs = retrieve_memory(c2ws[b], w, memory, cfg.schedule, rng)
            mem_map = memory_plucker(c2ws[b], frames, refs, cfg.schedule, K, height, width, lat_h, lat_w)
            clip_map = np.concatenate([mem_map, clip_map], axis=1)  # memory first
            mem_frames.append(frames)
        maps.append(clip_map)
    plucker = torch.from_numpy(np.stack(maps)).to(clip.latents.device)  # [B, Cp, M+n, h, w]

    # 3. memory latents from the clip's own timeline (absolute latent indices drive RoPE)
    mem = mem_idx = mem_fr = None
    if use_memory:
        mem_fr = torch.tensor(mem_frames, dtype=torch.long)  # [B, M]
        mem_idx = (mem_fr - 1).div(cfg.temporal_stride, rounding_mode="floor") + 1  # latent_of (facts 4.8)
        mem = _gather_latents(clip.latents, mem_idx)  # [B, C, M, h, w]
    predict = torch.stack([starts, starts + w0.num_latents], dim=1)  # [B, 2]
    return LatentBatch(latents=latents, num_prefix=1 if w0.first_clip else cfg.past_latents,
                       first_clip=w0.first_clip, keyboard=keyboard, mouse=mouse, plucker=plucker,
                       text=clip.text, text_lengths=clip.text_lengths, predict_latent_idx=predict,
                       memory=mem, memory_latent_idx=mem_idx, memory_frames=mem_fr)
