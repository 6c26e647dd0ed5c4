"""Typed batches of the DiT training stages (base, memory): a clip's latent timeline and a prepared window.

* `ClipLatents` is what a latent data pipeline yields: the whole latent timeline of each clip plus the
  per-pixel-frame cameras and actions and the prompt embedding. The objectives pick the training windows.
* `LatentBatch` is one prepared training window per sample, i.e. exactly the DiT's conditioning
  (official call convention, facts 2 and 5.3): the window's clean latents (clean prefix first, then the
  latents to denoise), the memory latents, the window's action rows, the Plücker maps (memory first), the
  text, and the absolute latent indices that drive RoPE (`memory_latent_idx`, `predict_latent_idx`).

Frame <-> latent mapping (facts 4.8): latent 0 is frame 0 alone, latent L >= 1 covers frames
stride*L - stride + 1 .. stride*L, so a timeline of T latents has stride*(T - 1) + 1 pixel frames.

NOTE the DiT takes one `memory_latent_idx` / `predict_latent_idx` per call (shared by the batch), while a
LatentBatch keeps them per sample: `rope_groups()` lists the samples that can share one forward.
NOTE `.to(device)` leaves the cameras (`c2w`, `intrinsics`) on the CPU: only the numpy geometry reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

__all__ = ["ClipLatents", "LatentBatch", "frames_for_latents"]


def frames_for_latents(num_latents: int, stride: int) -> int:
    """Pixel frames of a timeline of `num_latents` latents: stride * (T - 1) + 1 (facts 4.8)."""
    return stride * (num_latents - 1) + 1


def _shape(t: torch.Tensor | None) -> list[int] | None:
    return None if t is None else list(t.shape)


def _check(name: str, t: torch.Tensor | None, layout: str, expected: tuple[int | None, ...]) -> None:
    if t is None:
        raise ValueError(f"{name}: required, expected a tensor [{layout}]")
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor [{layout}], got {type(t).__name__}")
    if t.ndim != len(expected) or any(e is not None and s != e for s, e in zip(t.shape, expected)):
        want = ", ".join("*" if e is None else str(e) for e in expected)
        raise ValueError(f"{name}: expected shape [{layout}] = [{want}], got {list(t.shape)}")


def _move(value, device, non_blocking: bool = False):
    return value.to(device, non_blocking=non_blocking) if isinstance(value, torch.Tensor) else value


@dataclass
class ClipLatents:
    """Latent timelines of B clips with their cameras, actions and prompt embeddings."""

    latents: torch.Tensor  # [B, C, T, h, w] VAE latents of the whole clip (latent 0 = frame 0 alone)
    c2w: torch.Tensor  # [B, Nf, 4, 4] MG3 camera-to-world per pixel frame, Nf = stride*(T-1)+1 (CPU)
    keyboard: torch.Tensor  # [B, Nf, 6] multi-hot [W, S, A, D, Space, Attack]
    mouse: torch.Tensor  # [B, Nf, 2] [pitch, yaw] deltas
    text: torch.Tensor  # [B, L, text_dim] prompt embeddings, rows >= length zero
    text_lengths: torch.Tensor  # [B] int64 valid text rows
    intrinsics: torch.Tensor | None = None  # [B, 4] fx, fy, cx, cy at the decoded size (CPU); None: 90 deg

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    @property
    def num_latents(self) -> int:
        return int(self.latents.shape[2])

    @property
    def num_frames(self) -> int:
        return int(self.c2w.shape[1])

    @classmethod
    def stack(cls, clips: list[ClipLatents]) -> ClipLatents:
        """Concatenate batches along B (a collate_fn); timelines must have equal T and text length."""
        if not clips:
            raise ValueError("ClipLatents.stack: no clips")
        shapes = {(c.num_latents, c.num_frames, c.text.shape[1]) for c in clips}
        if len(shapes) != 1:
            raise ValueError(f"ClipLatents.stack: clips differ in (latents, frames, text rows): "
                             f"{sorted(shapes)}; crop the timelines to a common length first")
        with_k = [c.intrinsics is not None for c in clips]
        if any(with_k) and not all(with_k):
            raise ValueError("ClipLatents.stack: some clips have intrinsics and some do not")
        out = {}
        for f in fields(cls):
            values = [getattr(c, f.name) for c in clips]
            out[f.name] = None if values[0] is None else torch.cat(values, dim=0)
        return cls(**out)

    def validate(self, stride: int) -> ClipLatents:
        """Raise ValueError naming the field on a shape mismatch (stride = VAE temporal compression)."""
        _check("latents", self.latents, "B, C, T, h, w", (None,) * 5)
        B, T = len(self), self.num_latents
        nf = frames_for_latents(T, stride)
        _check("c2w", self.c2w, f"B, Nf = {stride}*(T-1)+1, 4, 4", (B, nf, 4, 4))
        _check("keyboard", self.keyboard, "B, Nf, 6", (B, nf, None))
        _check("mouse", self.mouse, "B, Nf, 2", (B, nf, None))
        _check("text", self.text, "B, L, text_dim", (B, None, None))
        _check("text_lengths", self.text_lengths, "B", (B,))
        if self.intrinsics is not None:
            _check("intrinsics", self.intrinsics, "B, 4", (B, 4))
        return self

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ClipLatents:
        keep_cpu = {"c2w", "intrinsics"}
        return replace(self, **{f.name: _move(getattr(self, f.name), device, non_blocking)
                                for f in fields(self) if f.name not in keep_cpu})


@dataclass
class LatentBatch:
    """B prepared training windows of equal shape (all first-clip style or all later-clip style)."""

    latents: torch.Tensor  # [B, C, F, h, w] clean window latents: the clean prefix, then the noisy ones
    num_prefix: int  # clean latents at the window start (later clips: P past; first clip: 1, the image)
    first_clip: bool  # first-clip style (latent 0 = the image, action rows 1 + stride*(F-1))
    keyboard: torch.Tensor  # [B, N, 6] the window's action rows (N = stride*F, first clip stride*(F-1)+1)
    mouse: torch.Tensor  # [B, N, 2]
    plucker: torch.Tensor  # [B, 6*b*b, M+F, h, w] float32 Plücker maps, memory first (facts 4.7)
    text: torch.Tensor  # [B, L, text_dim]
    text_lengths: torch.Tensor  # [B] int64
    predict_latent_idx: torch.Tensor  # [B, 2] int64 absolute latent range [start, end) of the window
    memory: torch.Tensor | None = None  # [B, C, M, h, w] clean memory latents (None: no memory)
    memory_latent_idx: torch.Tensor | None = None  # [B, M] int64 absolute latent index of each memory latent
    memory_frames: torch.Tensor | None = None  # [B, M] int64 retrieved pixel frames (logs, minimaps)

    def __post_init__(self) -> None:
        _check("latents", self.latents, "B, C, F, h, w", (None,) * 5)
        B, _, F, h, w = self.latents.shape
        M = 0 if self.memory is None else int(self.memory.shape[2])
        if not 0 <= self.num_prefix < F:
            raise ValueError(f"num_prefix={self.num_prefix} must be in [0, F={F}) (>= one noisy latent)")
        _check("keyboard", self.keyboard, "B, N, 6", (B, None, None))
        _check("mouse", self.mouse, "B, N, 2", (B, self.keyboard.shape[1], None))
        _check("plucker", self.plucker, "B, 6*b*b, M+F, h, w", (B, None, M + F, h, w))
        _check("text", self.text, "B, L, text_dim", (B, None, None))
        _check("text_lengths", self.text_lengths, "B", (B,))
        _check("predict_latent_idx", self.predict_latent_idx, "B, 2", (B, 2))
        if self.memory is not None:
            _check("memory", self.memory, "B, C, M, h, w", (B, self.latents.shape[1], None, h, w))
            _check("memory_latent_idx", self.memory_latent_idx, "B, M", (B, M))
        elif self.memory_latent_idx is not None:
            raise ValueError(f"memory_latent_idx {_shape(self.memory_latent_idx)} given without memory")

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    @property
    def num_frames(self) -> int:
        """Window latents F (prefix + noisy)."""
        return int(self.latents.shape[2])

    @property
    def num_memory(self) -> int:
        return 0 if self.memory is None else int(self.memory.shape[2])

    @property
    def num_current(self) -> int:
        """Noisy latents (the only ones with a loss)."""
        return self.num_frames - self.num_prefix

    def loss_mask(self) -> torch.Tensor:
        """[M+F] bool over the DiT's frame order (memory, prefix, current): True where the loss applies."""
        mask = torch.zeros(self.num_memory + self.num_frames, dtype=torch.bool)
        mask[self.num_memory + self.num_prefix:] = True
        return mask

    def rope_groups(self) -> list[list[int]]:
        """Sample indices sharing (memory_latent_idx, predict_latent_idx): one DiT forward per group."""
        keys = self.predict_latent_idx.tolist()
        if self.memory_latent_idx is not None:
            keys = [k + m for k, m in zip(keys, self.memory_latent_idx.tolist())]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, k in enumerate(keys):
            groups.setdefault(tuple(k), []).append(i)
        return list(groups.values())

    def select(self, index: list[int] | torch.Tensor) -> LatentBatch:
        """The samples `index` (a new LatentBatch)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v[idx.to(v.device)] if isinstance(v, torch.Tensor) else v
        return LatentBatch(**out)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> LatentBatch:
        moved = {f.name: _move(getattr(self, f.name), device, non_blocking) for f in fields(self)}
        return replace(self, **moved)
