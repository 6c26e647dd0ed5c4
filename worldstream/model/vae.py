"""The causal 3D VAE: Wan2.2's `WanVAE_` with Matrix-Game 3.0's first-chunk decode rule, and MG-LightVAE.

Source: official `wan/modules/vae2_2.py` and `pipeline/vae_config.py` as documented in facts sections 5.5
and 6, checked against the golden `vae_tiny_*` vectors (float32, max |diff| <= 1e-5). Parameter names are
the official ones: `mg3_wan22` / `mg3_lightvae_*` match the three VAE manifests key for key and shape for
shape, and `load_official_vae` reads `Wan2.2_VAE.pth` / `MG-LightVAE*.pth` (Wan or diffusers key names).

Notable features (official behaviour unless marked "ours"):
* Pixel patchify 2x2 before the encoder and after the decoder: `c f (h q) (w r) -> (c r q) f h w`, so
  channel = c*4 + r*2 + q with r the column and q the row offset.
* Everything is causal in time. Each 3x3x3 conv keeps the last `kernel_t - 1` frames of its input as
  history (zeros before the first frame), which is what makes chunked and one-pass runs agree.
* Encode: the first frame alone, then chunks of 4 frames; `mu` only (no sampling), normalised with the
  48 Wan2.2 mean/std constants. The temporal down-sampler lets the first frame pass without its time conv.
* Decode (MG3, differs from upstream Wan2.2): in a first chunk each temporal up-sampler runs its time conv
  with zero history and drops the first of the doubled frames, and the DupUp3D shortcut drops
  `factor_t - 1` leading frames. So n latents give 4n - 3 frames in a first chunk and 4n afterwards.
* Streaming decode carries an explicit `DecodeCache` (one slot per causal conv, sized from the module
  structure, not the official 34-slot list) across calls; `cache.reset()` starts a new video.
* LightVAE: `pruning_rate` p scales both base widths to round(w * (1 - p)). Encoding always uses the full
  (teacher) encoder (`LightVAE` pairs the two); only the pruned decoder decodes. `prune_decoder` (ours)
  builds a pruned decoder from a full one by channel importance, so distillation starts from it.
* Latent normalisation constants live in the config (`latent_mean`, `latent_std`): the Wan2.2 numbers for
  the mg3 presets, identity (None) or data estimates (`with_latent_stats`, ours) for other z_dims.
* Training (ours): `forward(video)` -> (reconstruction, mu, logvar) in one pass, `forward(z=latents)` ->
  the decode-only pass of LightVAE distillation (`decode_raw`); both go through `forward`, so DDP/FSDP2
  can wrap the module. `VAE.save(dir)` / `VAE.load(dir)`: self-describing checkpoint folders
  (worldstream/checkpoint.py).
* Speed (ours): convolutions run in the model's memory format; `VAE.to_channels_last()` switches to
  channels_last_3d, which is several times faster for bf16 on CPUs with AMX.

NOTE diffusers' `AutoencoderKLWan` is not used: MG3's first-chunk rule differs from upstream Wan2.2.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat

__all__ = [
    "WAN22_LATENT_MEAN",
    "WAN22_LATENT_STD",
    "VAEConfig",
    "DecodeCache",
    "EncodeCache",
    "VAE",
    "LightVAE",
    "prune_decoder",
    "load_official_vae",
    "map_official_keys",
    "PRESETS",
    "preset",
    "NANO",
    "MG3_WAN22",
    "MG3_LIGHTVAE_P050",
    "MG3_LIGHTVAE_V2_P075",
]

# Wan2.2 VAE latent statistics (z_dim 48), as hard-coded by the official wrapper. The wrapper stores
# scale = [mean, 1/std] in float32 and normalises z = (mu - mean) * (1/std); decode inverts with
# z / (1/std) + mean. Golden `vae_tiny_io` holds the exact float32 tensors (`scale_mean`, `scale_inv_std`).
# fmt: off
WAN22_LATENT_MEAN: tuple[float, ...] = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
WAN22_LATENT_STD: tuple[float, ...] = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)
# fmt: on


########################################################################################################
# Config


@dataclass(frozen=True)
class VAEConfig:
    """VAE hyper-parameters; official `WanVAE_` constructor names where one exists (see `from_official`)."""

    dim: int = 160  # encoder base width before pruning (facts 6.1)
    dec_dim: int = 256  # decoder base width before pruning, separate from the encoder's
    z_dim: int = 48  # latent channels
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)  # width multiplier per resolution level (encoder order)
    num_res_blocks: int = 2  # residual blocks per encoder level; each decoder level has one more
    temporal_downsample: tuple[bool, ...] = (False, True, True)  # per down-sampling level; decoder reverses
    patch_size: int = 2  # pixel patchify before the encoder / after the decoder
    in_channels: int = 3  # RGB
    pruning_rate: float = 0.0  # LightVAE p: widths round(w * (1 - p)) (facts 6.2)
    dropout: float = 0.0
    latent_mean: tuple[float, ...] | None = None  # per-channel latent mean (None = 0)
    latent_std: tuple[float, ...] | None = None  # per-channel latent std (None = 1)
    decode_segment_size: int = 4  # latents per decoder call in decode() (official WAN_VAE_SEGMENT_SIZE)
    norm_eps: float = 1e-6  # RMSNorm eps, inside the square root (facts 6.1)

    def __post_init__(self):
        def bad(msg: str):
            raise ValueError(f"VAEConfig: {msg}")

        # lists from JSON -> tuples (hashable, frozen)
        object.__setattr__(self, "dim_mult", tuple(int(m) for m in self.dim_mult))
        object.__setattr__(self, "temporal_downsample", tuple(bool(t) for t in self.temporal_downsample))
        for name in ("latent_mean", "latent_std"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, tuple(float(x) for x in v))
                if len(getattr(self, name)) != self.z_dim:
                    bad(f"{name} has {len(v)} entries, expected z_dim={self.z_dim}")
        if len(self.dim_mult) < 2:
            bad(f"dim_mult needs at least 2 levels, got {self.dim_mult}")
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            bad(
                f"temporal_downsample needs {len(self.dim_mult) - 1} entries (one per down-sampling level), "
                f"got {self.temporal_downsample}"
            )
        if not 0.0 <= self.pruning_rate < 1.0:
            bad(f"pruning_rate must be in [0, 1), got {self.pruning_rate}")
        if min(self.enc_width, self.dec_width) < 1:
            bad(f"pruning_rate={self.pruning_rate} leaves no channels (dim {self.dim}, dec {self.dec_dim})")
        enc, dec, n = self.enc_dims, self.dec_dims, len(self.dim_mult)
        for i in range(n):  # AvgDown3D shortcut: level input * factor must split into output groups
            factor = (2 if i < n - 1 and self.temporal_downsample[i] else 1) * (4 if i < n - 1 else 1)
            if (enc[i] * factor) % enc[i + 1]:
                bad(f"encoder widths {enc}: level {i} ({enc[i]} -> {enc[i + 1]}) breaks AvgDown3D")
        for i in range(n - 1):  # DupUp3D shortcut: level input = k * output (facts 6.1)
            if dec[i] % dec[i + 1]:
                bad(f"decoder widths {dec}: level {i} ({dec[i]} -> {dec[i + 1]}) breaks DupUp3D")
        if self.decode_segment_size < 1:
            bad(f"decode_segment_size must be >= 1, got {self.decode_segment_size}")

    # ---- derived sizes ------------------------------------------------------------------------------
    @property
    def enc_width(self) -> int:
        """Encoder base width after pruning; Python round() as the official code (facts 6.2)."""
        return round(self.dim * (1.0 - self.pruning_rate))

    @property
    def dec_width(self) -> int:
        return round(self.dec_dim * (1.0 - self.pruning_rate))

    @property
    def enc_dims(self) -> tuple[int, ...]:
        """Encoder widths [conv1, level 0, ..., level n-1]: 160 * [1, 1, 2, 4, 4] for Wan2.2."""
        return tuple(self.enc_width * m for m in (1, *self.dim_mult))

    @property
    def dec_dims(self) -> tuple[int, ...]:
        """Decoder widths [conv1/middle, level 0, ...]: 256 * [4, 4, 4, 2, 1] for Wan2.2."""
        return tuple(self.dec_width * m for m in (self.dim_mult[-1], *reversed(self.dim_mult)))

    @property
    def temporal_upsample(self) -> tuple[bool, ...]:
        return tuple(reversed(self.temporal_downsample))

    @property
    def temporal_stride(self) -> int:
        """Frames per latent after the first: 4 for Wan2.2 (T frames -> 1 + (T - 1) / 4 latents)."""
        return 2 ** sum(self.temporal_downsample)

    @property
    def spatial_stride(self) -> int:
        return self.patch_size * 2 ** (len(self.dim_mult) - 1)

    @property
    def stride(self) -> tuple[int, int, int]:
        return (self.temporal_stride, self.spatial_stride, self.spatial_stride)

    @property
    def patch_channels(self) -> int:
        """Encoder input / decoder output channels: 3 * 2 * 2 = 12."""
        return self.in_channels * self.patch_size**2

    # ---- (de)serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VAEConfig:
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"VAEConfig.from_dict: unknown fields {unknown}")
        return cls(**d)

    @classmethod
    def from_official(cls, kw: dict[str, Any], **overrides) -> VAEConfig:
        """Map `WanVAE_(**kw)` constructor kwargs (golden `constructor_kwargs`) to a config.

        z_dim 48 gets the Wan2.2 normalisation constants unless overridden (the official wrapper always
        applies them to 48-channel latents).
        """
        kw = dict(kw)
        if list(kw.pop("attn_scales", [])):
            raise ValueError(
                "VAEConfig.from_official: attn_scales must be empty (Wan2.2 has only the middle attention)"
            )
        if "temperal_downsample" in kw:  # official spelling
            kw["temporal_downsample"] = kw.pop("temperal_downsample")
        known = {"dim", "dec_dim", "z_dim", "dim_mult", "num_res_blocks", "temporal_downsample", "dropout"}
        unknown = sorted(set(kw) - known)
        if unknown:
            raise ValueError(f"VAEConfig.from_official: unknown constructor kwargs {unknown}")
        if kw.get("z_dim", 48) == len(WAN22_LATENT_MEAN):
            kw.update(latent_mean=WAN22_LATENT_MEAN, latent_std=WAN22_LATENT_STD)
        kw.update(overrides)
        return cls(**kw)

    def with_latent_stats(self, mu: torch.Tensor) -> VAEConfig:
        """This config with per-channel latent mean/std estimated from raw mean latents [N, z, ...] (ours)."""
        _expect("mu", mu, "[N, z_dim, ...]", (None, self.z_dim) + (None,) * (mu.dim() - 2))
        flat = mu.detach().double().transpose(0, 1).flatten(1)  # [z, samples]
        if flat.shape[1] < 2:
            raise ValueError("with_latent_stats needs at least 2 latent values per channel")
        mean, std = flat.mean(1), flat.std(1).clamp_min(1e-6)
        return dataclasses.replace(self, latent_mean=tuple(mean.tolist()), latent_std=tuple(std.tolist()))


########################################################################################################
# Streaming state


class _CausalCache:
    """Per-conv causal history: slot i holds the last frames of the input seen by causal conv i.

    Frames that were never seen count as zeros, so an empty slot is the start of a video. Shared logic of
    `DecodeCache` and `EncodeCache`; tensors are cloned so a slot never pins a whole activation.
    """

    def __init__(self, num_slots: int):
        if num_slots < 1:
            raise ValueError(f"{type(self).__name__}: num_slots must be >= 1, got {num_slots}")
        self.slots: list[torch.Tensor | None] = [None] * num_slots

    def __len__(self) -> int:
        return len(self.slots)

    def reset(self) -> None:
        """Forget all history (next call starts a new video)."""
        self.slots = [None] * len(self.slots)

    @property
    def empty(self) -> bool:
        return all(s is None for s in self.slots)

    def history(self, slot: int) -> torch.Tensor | None:
        return self.slots[slot]

    def push(self, slot: int, x: torch.Tensor, keep: int) -> None:
        """Remember the last `keep` frames of [history, x] ([B, C, T, H, W], time on dim 2)."""
        prev = self.slots[slot]
        if x.shape[2] < keep and prev is not None:
            x = torch.cat([prev, x], 2)
        self.slots[slot] = x[:, :, -keep:].clone()

    def shapes(self) -> list[tuple[int, ...] | None]:
        return [None if s is None else tuple(s.shape) for s in self.slots]

    def check_compatible(self, x: torch.Tensor, name: str) -> None:
        """Raise if the filled slots were made for another batch size / latent grid / device / dtype."""
        first = next((s for s in self.slots if s is not None), None)
        if first is None:
            return
        if first.shape[0] != x.shape[0] or first.device != x.device or first.dtype != x.dtype:
            raise ValueError(
                f"{name}: cache holds state for batch {first.shape[0]} {first.dtype} on "
                f"{first.device}, got batch {x.shape[0]} {x.dtype} on {x.device}; call cache.reset()"
            )

    def to(self, device=None, dtype=None) -> _CausalCache:
        self.slots = [None if s is None else s.to(device=device, dtype=dtype) for s in self.slots]
        return self


class DecodeCache(_CausalCache):
    """The decoder's streaming state; make one with `VAE.new_decode_cache()` and pass it to every call."""


class EncodeCache(_CausalCache):
    """The encoder's streaming state (`VAE.new_encode_cache()`, used by `stream_encode`)."""


########################################################################################################
# Helpers


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, F, H, W] -> [B, C*p*p, F, H/p, W/p], channel = c*p*p + r*p + q (r column, q row offset)."""
    return rearrange(x, "b c f (h q) (w r) -> b (c r q) f h w", q=p, r=p) if p > 1 else x


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    return rearrange(x, "b (c r q) f h w -> b c f (h q) (w r)", q=p, r=p) if p > 1 else x


def _expect(name: str, x: Any, layout: str, expected: tuple[int | None, ...]) -> None:
    """Raise ValueError naming the tensor if `x` is not a tensor of `expected` shape (None = any size)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor {layout}, got {type(x).__name__}")
    ok = x.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, x.shape))
    if not ok:
        want = "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"
        raise ValueError(f"{name} must be {layout} = {want}, got {list(x.shape)}")


########################################################################################################
# Layers


class RMSNorm(nn.Module):
    """Official `RMS_norm`: x / sqrt(mean_c(x^2) + eps) * gamma (no bias), channels on dim 1.

    NOTE eps sits inside the root (facts 6.1). A unit-norm `F.normalize(x) * sqrt(C)` variant misses the
    golden vectors by ~1e-4.
    """

    def __init__(self, dim: int, images: bool = False, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        # official gamma shapes: (C, 1, 1) for 2D use (attention), (C, 1, 1, 1) for 3D use
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels last: with channels_last_3d activations the reduction runs over the innermost axis
        # (several x faster than mean(x^2, 1) in bf16; the norm kernel accumulates in float32 internally)
        # 1 / sqrt(mean(x^2) + eps) = sqrt(C) / sqrt(sum(x^2) + C * eps): sqrt(C) goes into the gain
        v = x.movedim(1, -1)  # [B, (T,) H, W, C]
        c = v.shape[-1]
        inv_norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True).square().add_(c * self.eps).rsqrt_()
        # NOTE per-position scale x per-channel gain as one outer product (a K=1 matmul), then a plain
        # multiply: broadcasting over a short innermost C axis is several x slower on CPU
        scale = torch.mm(inv_norm.reshape(-1, 1), self.gamma.reshape(1, -1) * c**0.5).view(v.shape)
        return (v * scale).movedim(-1, 1)


class CausalConv3d(nn.Conv3d):
    """Conv3d, causal in time: `kernel_t - 1` frames of history (or zeros) go in front of the input.

    Spatial padding is symmetric and done by the conv. With a cache, the conv owns slot `cache_slot`
    (assigned by the encoder/decoder at construction) and remembers the last `time_pad` input frames.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel_size, stride=1, padding=0):
        k = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        p = (padding,) * 3 if isinstance(padding, int) else tuple(padding)
        super().__init__(in_dim, out_dim, k, stride=stride, padding=(0, p[1], p[2]))
        self.time_pad = 2 * p[0]  # official: pad 2 * padding_t frames in front, none behind
        self.cache_slot: int | None = None

    def forward(self, x: torch.Tensor, cache: _CausalCache | None = None) -> torch.Tensor:
        if self.time_pad == 0:
            return super().forward(x)
        hist = None
        if cache is not None:
            hist = cache.history(self.cache_slot)
            cache.push(self.cache_slot, x, self.time_pad)
        parts = [x] if hist is None else [hist, x]
        missing = self.time_pad - (0 if hist is None else hist.shape[2])
        if missing > 0:  # frames before the start of the video are zeros
            b, c, _, h, w = x.shape
            parts.insert(0, x.new_zeros(b, c, missing, h, w).contiguous(memory_format=_memory_format(x)))
        return super().forward(torch.cat(parts, 2))


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return (
        torch.channels_last_3d
        if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
        else torch.contiguous_format
    )


class AvgDown3D(nn.Module):
    """Parameter-free shortcut of a down-sampling level: space/time-to-channel, then group mean.

    Frames are zero-padded in front to a multiple of `factor_t` (the lone first frame pairs with a zero).
    """

    def __init__(self, in_dim: int, out_dim: int, factor_t: int, factor_s: int):
        super().__init__()
        self.out_dim, self.factor_t, self.factor_s = out_dim, factor_t, factor_s
        if (in_dim * factor_t * factor_s**2) % out_dim:
            raise ValueError(f"AvgDown3D: {in_dim} * {factor_t * factor_s**2} is not a multiple of {out_dim}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_t = (-x.shape[2]) % self.factor_t
        if pad_t:
            x = F.pad(x, (0, 0, 0, 0, pad_t, 0))
        # channel order (c, ft, fh, fw), then consecutive groups average into one output channel
        x = rearrange(
            x,
            "b c (t ft) (h fh) (w fw) -> b (c ft fh fw) t h w",
            ft=self.factor_t,
            fh=self.factor_s,
            fw=self.factor_s,
        )
        return rearrange(x, "b (o g) t h w -> b o g t h w", o=self.out_dim).mean(2)


class DupUp3D(nn.Module):
    """Parameter-free shortcut of an up-sampling level: channel repeat, then channel-to-space/time.

    In a first chunk the leading `factor_t - 1` frames are dropped (they precede the first frame).
    """

    def __init__(self, in_dim: int, out_dim: int, factor_t: int, factor_s: int):
        super().__init__()
        self.out_dim, self.factor_t, self.factor_s = out_dim, factor_t, factor_s
        if (out_dim * factor_t * factor_s**2) % in_dim:
            raise ValueError(f"DupUp3D: {out_dim} * {factor_t * factor_s**2} is not a multiple of {in_dim}")
        self.repeats = out_dim * factor_t * factor_s**2 // in_dim

    def forward(self, x: torch.Tensor, first_chunk: bool = False) -> torch.Tensor:
        # Official: repeat_interleave channels by `repeats`, then (c ft fh fw) -> c (t ft) (h fh) (w fw). So
        # output (c, i, j, k) reads input channel (c * F + s) // repeats with s = (i, j, k) in mixed radix
        # (ft, fs, fs). When `repeats` is the product of trailing digits, the leading digits select the input
        # channel and the trailing ones repeat: one broadcast copy (channels-last) instead of two.
        digits = [("i", self.factor_t), ("j", self.factor_s), ("k", self.factor_s)]
        lead = next((m for m in range(4) if math.prod(d for _, d in digits[m:]) == self.repeats), None)
        if lead is None:  # general case, the official two steps
            x = rearrange(
                x.repeat_interleave(self.repeats, dim=1),
                "b (c i j k) t h w -> b c (t i) (h j) (w k)",
                i=self.factor_t,
                j=self.factor_s,
                k=self.factor_s,
            )
        else:
            channel = " ".join(["c", *(name for name, _ in digits[:lead])])
            x = repeat(
                x.movedim(1, -1),
                f"b t h w ({channel}) -> b (t i) (h j) (w k) c",
                i=self.factor_t,
                j=self.factor_s,
                k=self.factor_s,
            ).movedim(-1, 1)
        return x[:, :, self.factor_t - 1 :] if first_chunk else x


ResampleMode = Literal["upsample2d", "upsample3d", "downsample2d", "downsample3d"]


class Resample(nn.Module):
    """2x spatial resampling per frame, plus 2x in time for the "3d" modes.

    * upsample3d: time conv C -> 2C (causal, zero history at the start) interleaved into 2T frames; in a
      first chunk the first of them is dropped (MG3), then nearest-exact x2 + 3x3 conv.
    * downsample3d: ZeroPad(0,1,0,1) + 3x3 stride-2 conv, then a valid 3x1x1 stride-2 time conv over
      [previous frame, chunk]; the first frame of a video passes without it.
    """

    def __init__(self, dim: int, mode: ResampleMode):
        super().__init__()
        self.mode = mode
        if mode.startswith("up"):
            self.resample = nn.Sequential(
                nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"), nn.Conv2d(dim, dim, 3, padding=1)
            )
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: _CausalCache | None, first_chunk: bool) -> torch.Tensor:
        # 1. up-sampling (decoder): time conv C -> 2C interleaved into 2T frames (3d), then nearest-exact 2x
        # pixel repeat, done as one channels-last copy (resample[0], the official Upsample, is not called)
        if self.mode == "upsample3d":
            x = self.time_conv(x, cache)  # [B, 2C, T, H, W]
            x = repeat(x.movedim(1, -1), "b t h w (k c) -> b (t k) (h j) (w l) c", k=2, j=2, l=2).movedim(
                -1, 1
            )
            if first_chunk:  # NOTE MG3 rule; upstream Wan2.2 skips the time conv on the first chunk instead
                x = x[:, :, 1:]  # [B, C, 2T (- 1), 2H, 2W]
        elif self.mode == "upsample2d":
            x = repeat(x.movedim(1, -1), "b t h w c -> b t (h j) (w l) c", j=2, l=2).movedim(-1, 1)
        # 2. the official per-frame Conv2d, run as a (1, 3, 3) Conv3d on the 5D tensor (same math, no
        # (b t) reshape copies); down-sampling zero-pads right/bottom first (resample[0])
        conv = self.resample[1]
        if self.mode.startswith("up"):
            x = F.conv3d(x, conv.weight.unsqueeze(2), conv.bias, padding=(0, 1, 1))
        else:
            x = F.conv3d(F.pad(x, (0, 1, 0, 1)), conv.weight.unsqueeze(2), conv.bias, stride=(1, 2, 2))
        # 3. temporal down-sampling (encoder)
        if self.mode == "downsample3d":
            x = self._time_down(x, cache, first_chunk)
        return x

    def _time_down(self, x: torch.Tensor, cache: _CausalCache | None, first_chunk: bool) -> torch.Tensor:
        slot = self.time_conv.cache_slot
        if first_chunk:
            lead, inp = x[:, :, :1], x  # the video's first frame is kept as is
        else:
            prev = None if cache is None else cache.history(slot)
            if prev is None:
                raise ValueError("encoder: a non-first chunk needs the EncodeCache of the previous chunks")
            lead, inp = None, torch.cat([prev, x], 2)
        if cache is not None:
            cache.push(slot, x, 1)
        out = self.time_conv(inp) if inp.shape[2] >= self.time_conv.kernel_size[0] else inp[:, :, :0]
        return out if lead is None else torch.cat([lead, out], 2)


class ResidualBlock(nn.Module):
    """(RMSNorm, SiLU, CausalConv) x 2 (official residual.0/2/3/6) + 1x1x1 conv shortcut if widths differ."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0, eps: float = 1e-6):
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim, eps=eps),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, eps=eps),
            nn.SiLU(),
            nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: _CausalCache | None = None) -> torch.Tensor:
        h = self.shortcut(x)
        for layer in self.residual:
            if isinstance(layer, CausalConv3d):
                x = layer(x, cache)
            elif isinstance(layer, nn.SiLU):  # after a norm, so in place is safe when no graph is kept
                x = F.silu(x, inplace=not torch.is_grad_enabled())
            else:
                x = layer(x)
        return x.add_(h)  # x is the fresh conv output


class AttentionBlock(nn.Module):
    """Single-head self-attention over the h*w positions of each frame (1x1 conv qkv / proj, RMSNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.norm = RMSNorm(dim, images=True, eps=eps)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        nn.init.zeros_(self.proj.weight)  # official: the block starts as identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        tokens = rearrange(self.norm(x), "b c t h w -> (b t) (h w) c")
        qkv = F.linear(tokens, self.to_qkv.weight.flatten(1), self.to_qkv.bias)  # [(b t), n, 3c]
        q, k, v = qkv.unsqueeze(1).chunk(3, dim=-1)  # [(b t), 1, n, c] each
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        out = F.linear(out, self.proj.weight.flatten(1), self.proj.bias)
        return x + rearrange(out, "(b t) (h w) c -> b c t h w", t=t, h=h)


########################################################################################################
# Blocks


class DownBlock(nn.Module):
    """Official `Down_ResidualBlock`: residual blocks + optional Resample, plus an AvgDown3D shortcut."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_res: int,
        temporal: bool,
        spatial: bool,
        dropout: float,
        eps: float,
    ):
        super().__init__()
        self.avg_shortcut = AvgDown3D(
            in_dim, out_dim, factor_t=2 if temporal else 1, factor_s=2 if spatial else 1
        )
        layers: list[nn.Module] = [
            ResidualBlock(in_dim if j == 0 else out_dim, out_dim, dropout, eps) for j in range(num_res)
        ]
        if spatial:
            layers.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, cache: _CausalCache | None, first_chunk: bool) -> torch.Tensor:
        h = x
        for layer in self.downsamples:
            h = layer(h, cache, first_chunk) if isinstance(layer, Resample) else layer(h, cache)
        return h.add_(self.avg_shortcut(x))


class UpBlock(nn.Module):
    """Official `Up_ResidualBlock`: residual blocks + optional Resample, plus DupUp3D if resampling."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_res: int,
        temporal: bool,
        spatial: bool,
        dropout: float,
        eps: float,
    ):
        super().__init__()
        self.avg_shortcut = (
            DupUp3D(in_dim, out_dim, factor_t=2 if temporal else 1, factor_s=2) if spatial else None
        )
        layers: list[nn.Module] = [
            ResidualBlock(in_dim if j == 0 else out_dim, out_dim, dropout, eps) for j in range(num_res)
        ]
        if spatial:
            layers.append(Resample(out_dim, "upsample3d" if temporal else "upsample2d"))
        self.upsamples = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, cache: _CausalCache | None, first_chunk: bool) -> torch.Tensor:
        h = x
        for layer in self.upsamples:
            h = layer(h, cache, first_chunk) if isinstance(layer, Resample) else layer(h, cache)
        return h if self.avg_shortcut is None else h.add_(self.avg_shortcut(x, first_chunk))


def _assign_cache_slots(module: nn.Module) -> int:
    """Number the causal convs that keep history (kernel_t > 1), in forward order; return the count.

    Registration order equals forward order in these modules, so slot i is the official `feat_idx` i.
    """
    n = 0
    for m in module.modules():
        if isinstance(m, CausalConv3d) and m.kernel_size[0] > 1:
            m.cache_slot = n
            n += 1
    return n


class Encoder3d(nn.Module):
    """Patchified video [B, 12, F, H, W] -> moments [B, 2z, 1 + (F-1)/4, H/8, W/8] (Wan2.2 sizes)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = cfg.enc_dims
        n = len(cfg.dim_mult)
        self.conv1 = CausalConv3d(cfg.patch_channels, dims[0], 3, padding=1)
        self.downsamples = nn.Sequential(
            *[
                DownBlock(
                    dims[i],
                    dims[i + 1],
                    cfg.num_res_blocks,
                    temporal=i < n - 1 and cfg.temporal_downsample[i],
                    spatial=i < n - 1,
                    dropout=cfg.dropout,
                    eps=cfg.norm_eps,
                )
                for i in range(n)
            ]
        )
        d = dims[-1]
        self.middle = nn.Sequential(
            ResidualBlock(d, d, cfg.dropout, cfg.norm_eps),
            AttentionBlock(d, cfg.norm_eps),
            ResidualBlock(d, d, cfg.dropout, cfg.norm_eps),
        )
        self.head = nn.Sequential(
            RMSNorm(d, eps=cfg.norm_eps), nn.SiLU(), CausalConv3d(d, 2 * cfg.z_dim, 3, padding=1)
        )
        self.num_cache_slots = _assign_cache_slots(self)

    def forward(
        self, x: torch.Tensor, cache: _CausalCache | None = None, first_chunk: bool = True
    ) -> torch.Tensor:
        x = self.conv1(x, cache)
        for block in self.downsamples:
            x = block(x, cache, first_chunk)
        x = self.middle[2](self.middle[1](self.middle[0](x, cache)), cache)
        return self.head[2](self.head[1](self.head[0](x)), cache)


class Decoder3d(nn.Module):
    """Latents [B, z, T, h, w] -> patchified video [B, 12, 4T (-3 in a first chunk), 8h, 8w] (Wan2.2)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = cfg.dec_dims
        n = len(cfg.dim_mult)
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        d = dims[0]
        self.middle = nn.Sequential(
            ResidualBlock(d, d, cfg.dropout, cfg.norm_eps),
            AttentionBlock(d, cfg.norm_eps),
            ResidualBlock(d, d, cfg.dropout, cfg.norm_eps),
        )
        self.upsamples = nn.Sequential(
            *[
                UpBlock(
                    dims[i],
                    dims[i + 1],
                    cfg.num_res_blocks + 1,
                    temporal=i < n - 1 and cfg.temporal_upsample[i],
                    spatial=i < n - 1,
                    dropout=cfg.dropout,
                    eps=cfg.norm_eps,
                )
                for i in range(n)
            ]
        )
        self.head = nn.Sequential(
            RMSNorm(dims[-1], eps=cfg.norm_eps),
            nn.SiLU(),
            CausalConv3d(dims[-1], cfg.patch_channels, 3, padding=1),
        )
        self.num_cache_slots = _assign_cache_slots(self)

    def forward(
        self, x: torch.Tensor, cache: _CausalCache | None = None, first_chunk: bool = True
    ) -> torch.Tensor:
        x = self.conv1(x, cache)
        x = self.middle[2](self.middle[1](self.middle[0](x, cache)), cache)
        for block in self.upsamples:
            x = block(x, cache, first_chunk)
        return self.head[2](self.head[1](self.head[0](x)), cache)


########################################################################################################
# Model


class VAE(nn.Module):
    """Official `WanVAE_` layout (encoder, conv1, conv2, decoder) with MG3's encode / decode / stream_decode.

    Shapes for Wan2.2 (stride (4, 16, 16)): video [B, 3, 1 + 4k, H, W] in [-1, 1] <-> normalised latents
    [B, 48, 1 + k, H/16, W/16]. encode/decode return float32; the network runs in the parameter dtype.
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder3d(cfg)
        self.conv1 = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1)  # moments -> (mu, logvar)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)  # latent -> decoder input
        self.decoder = Decoder3d(cfg)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv2.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv2.weight.device

    def init_weights(self) -> VAE:
        """Official initialisation: PyTorch conv defaults, RMS gains 1, attention `proj` weight 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                m.reset_parameters()
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.gamma)
            elif isinstance(m, AttentionBlock):
                nn.init.zeros_(m.proj.weight)
        return self

    def to_channels_last(self) -> VAE:
        """Store conv weights channels-last (ours): activations follow, several x faster in bf16 on AMX."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last_3d)
            elif isinstance(m, nn.Conv2d):
                m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
        return self

    def _model_layout(self, x: torch.Tensor) -> torch.Tensor:
        """Activations follow the weights' memory format (see `to_channels_last`)."""
        if self.conv2.weight.is_contiguous(memory_format=torch.channels_last_3d):
            return x.contiguous(memory_format=torch.channels_last_3d)
        return x

    def new_decode_cache(self) -> DecodeCache:
        return DecodeCache(self.decoder.num_cache_slots)

    def new_encode_cache(self) -> EncodeCache:
        return EncodeCache(self.encoder.num_cache_slots)

    # ---- latent normalisation --------------------------------------------------------------------------
    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mean, 1/std) as float32 [1, z, 1, 1, 1], or None for identity."""
        cfg = self.cfg
        if cfg.latent_mean is None and cfg.latent_std is None:
            return None
        mean = torch.tensor(cfg.latent_mean or (0.0,) * cfg.z_dim, dtype=torch.float32, device=device)
        inv_std = 1.0 / torch.tensor(cfg.latent_std or (1.0,) * cfg.z_dim, dtype=torch.float32, device=device)
        return mean.view(1, -1, 1, 1, 1), inv_std.view(1, -1, 1, 1, 1)

    def normalise(self, mu: torch.Tensor) -> torch.Tensor:
        """Raw mean latent -> model latent: (mu - mean) * (1/std), in float32."""
        stats = self._stats(mu.device)
        return mu.float() if stats is None else (mu.float() - stats[0]) * stats[1]

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of `normalise`, computed as the official z / (1/std) + mean, in float32."""
        stats = self._stats(z.device)
        return z.float() if stats is None else z.float() / stats[1] + stats[0]

    # ---- encode ------------------------------------------------------------------------------------------
    def _check_video(self, video: Any, name: str, first_chunk: bool = True) -> None:
        s, t = self.cfg.spatial_stride, self.cfg.temporal_stride
        _expect(name, video, "[B, C, F, H, W]", (None, self.cfg.in_channels, None, None, None))
        f, h, w = video.shape[2:]
        if first_chunk and (f - 1) % t:
            raise ValueError(
                f"{name} must have 1 + {t}k frames (first frame alone, then chunks of {t}), got {f}"
            )
        if not first_chunk and (f == 0 or f % t):
            raise ValueError(f"{name}: a later chunk must have a positive multiple of {t} frames, got {f}")
        if h % s or w % s:
            raise ValueError(
                f"{name}: height and width must be multiples of the spatial stride {s}, got {h}x{w}"
            )

    def moments(
        self, video: torch.Tensor, chunk_latents: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (mu, logvar), each [B, z, 1 + (F-1)/4, H/16, W/16] in the parameter dtype (differentiable).

        chunk_latents: latents per encoder call after the lone first frame (official: 1, i.e. chunks of 4
        frames); None runs all frames in one pass (same result, more memory; what training uses).
        """
        self._check_video(video, "video")
        x = self._model_layout(patchify(video.to(self.dtype), self.cfg.patch_size))  # [B, 12, F, H/2, W/2]
        if chunk_latents is None:
            h = self.encoder(x, None, first_chunk=True)
        else:
            cache, step = self.new_encode_cache(), self.cfg.temporal_stride * chunk_latents
            chunks = [self.encoder(x[:, :, :1], cache, first_chunk=True)]
            chunks += [
                self.encoder(x[:, :, s : s + step], cache, first_chunk=False)
                for s in range(1, x.shape[2], step)
            ]
            h = torch.cat(chunks, 2)  # [B, 2z, T, h, w]
        mu, logvar = self.conv1(h).chunk(2, dim=1)
        return mu, logvar

    def encode(
        self, video: torch.Tensor, normalise: bool = True, chunk_latents: int | None = 1
    ) -> torch.Tensor:
        """Mean latent (no sampling) of `video` [B, 3, 1 + 4k, H, W], float32, normalised by default."""
        if self.cfg.pruning_rate > 0:
            raise RuntimeError(
                "this VAE is a pruned LightVAE: its encoder is not used officially; encode with "
                "the full VAE (LightVAE(teacher, student) does this)"
            )
        mu = self.moments(video, chunk_latents)[0].float()
        return self.normalise(mu) if normalise else mu

    def stream_encode(self, video: torch.Tensor, cache: EncodeCache, first_chunk: bool) -> torch.Tensor:
        """Encode a video piece by piece with one cache (ours; for latent caching of long videos).

        The first call takes 1 + 4k frames (first_chunk=True, empty cache), later calls 4k frames each;
        the concatenated outputs equal `encode` of the whole video. Returns normalised float32 latents.
        """
        if self.cfg.pruning_rate > 0:
            raise RuntimeError("this VAE is a pruned LightVAE: encode with the full VAE")
        self._check_video(video, "video", first_chunk)
        if len(cache) != self.encoder.num_cache_slots or not isinstance(cache, EncodeCache):
            raise ValueError(
                f"cache must be this VAE's EncodeCache ({self.encoder.num_cache_slots} slots); "
                "use vae.new_encode_cache()"
            )
        if first_chunk and not cache.empty:
            raise ValueError("first_chunk=True needs an empty cache; call cache.reset()")
        x = self._model_layout(patchify(video.to(self.dtype), self.cfg.patch_size))
        cache.check_compatible(x, "video")
        mu = self.conv1(self.encoder(x, cache, first_chunk)).chunk(2, dim=1)[0]
        return self.normalise(mu)

    # ---- decode ------------------------------------------------------------------------------------------
    def stream_decode(
        self, z: torch.Tensor, cache: DecodeCache, first_chunk: bool, segment_size: int = 4
    ) -> torch.Tensor:
        """Decode normalised latents [B, z, T, h, w] with a cache carried across calls -> video in [-1, 1].

        Output [B, 3, F, s*h, s*w] float32 (s = spatial stride, 16 for Wan2.2) with F = 4T - 3 when
        `first_chunk` (the first call of a video, empty cache) and 4T afterwards. The decoder runs over
        segments of `segment_size` latents; only the first segment of a first call applies the first-chunk
        rule (facts 5.5).
        """
        # 1. checks
        _expect("z", z, "[B, z_dim, T, h, w]", (None, self.cfg.z_dim, None, None, None))
        if z.shape[2] == 0:
            raise ValueError("z has no latent frames")
        if not isinstance(cache, DecodeCache) or len(cache) != self.decoder.num_cache_slots:
            raise ValueError(
                f"cache must be this VAE's DecodeCache ({self.decoder.num_cache_slots} slots); "
                "use vae.new_decode_cache()"
            )
        if first_chunk and not cache.empty:
            raise ValueError("first_chunk=True needs an empty cache (start of a video); call cache.reset()")
        if segment_size < 1:
            raise ValueError(f"segment_size must be >= 1, got {segment_size}")
        # 2. de-normalise, conv2
        x = self._model_layout(self.conv2(self.denormalise(z).to(self.dtype)))  # [B, z, T, h, w]
        cache.check_compatible(x, "z")
        # 3. decoder over segments, one persistent cache
        out = [
            self.decoder(x[:, :, s : s + segment_size], cache, first_chunk=first_chunk and s == 0)
            for s in range(0, x.shape[2], segment_size)
        ]
        # 4. un-patchify, clamp
        return unpatchify(torch.cat(out, 2).float(), self.cfg.patch_size).clamp_(-1.0, 1.0)

    def decode(self, z: torch.Tensor, segment_size: int | None = None) -> torch.Tensor:
        """Decode a whole video: normalised [B, z, T, h, w] -> [B, 3, 4T - 3, s*h, s*w] float32 in [-1, 1].

        The official decode runs one latent at a time; any segment size gives the same frames (~1e-6).
        """
        return self.stream_decode(
            z,
            self.new_decode_cache(),
            first_chunk=True,
            segment_size=segment_size or self.cfg.decode_segment_size,
        )

    # ---- training ----------------------------------------------------------------------------------------
    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Differentiable one-pass decode of *raw* latents z [B, z, T, h, w] -> [B, 3, 4T - 3, H, W] (ours).

        The decoder half of a training pass: first-chunk rule, no de-normalisation, no clamp, parameter
        dtype. A wrapped module (DDP, FSDP2) only hooks `forward`: call it as `module(z=z)` there.
        """
        x = self.decoder(self.conv2(z.to(self.dtype)), None, first_chunk=True)  # [B, 12, F, H/2, W/2]
        return unpatchify(x, self.cfg.patch_size)

    def forward(
        self, video: torch.Tensor | None = None, sample: bool = True, *, z: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | torch.Tensor:
        """Training pass in one go (ours), raw and in the parameter dtype; one of two inputs:

        * `video` -> (reconstruction, mu, logvar): z = mu + exp(logvar / 2) * eps when `sample` (else mu),
          decoded by `decode_raw`; the reconstruction is not clamped (VAE training).
        * `z=` raw latents -> reconstruction only (`decode_raw`): the decode-only pass of LightVAE
          distillation, through `forward` so that a DDP/FSDP wrapper sees it.
        """
        if (video is None) == (z is None):
            raise ValueError("VAE.forward: pass either a video (encode + decode) or z= latents (decode only)")
        if z is not None:
            _expect("z", z, "[B, z_dim, T, h, w]", (None, self.cfg.z_dim, None, None, None))
            return self.decode_raw(z)
        mu, logvar = self.moments(video)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        return self.decode_raw(z), mu, logvar

    # ---- folders -----------------------------------------------------------------------------------------
    def save(self, directory: str | Path, *, preset: str | None = None,
             meta: dict[str, Any] | None = None) -> Path:
        """Write a self-describing checkpoint folder (worldstream/checkpoint.py `save_checkpoint`, atomic):
        config.json {"type", "preset", "config": VAEConfig}, model.safetensors (float32), meta.json.
        The layout of checkpoints/nano/{vae,lightvae}/ and of a latent cache's DIR/vae/."""
        from worldstream.checkpoint import save_checkpoint

        state = {k: v.detach().float() if v.is_floating_point() else v.detach()
                 for k, v in self.state_dict().items()}
        return save_checkpoint(directory, state, self.cfg, meta=meta, preset=preset)

    @classmethod
    def load(cls, directory: str | Path, *, device: torch.device | str = "cpu",
             dtype: torch.dtype | None = None) -> VAE:
        """A VAE folder -> VAE (eval mode; the file's dtypes unless `dtype`): a `save` folder, or the older
        flat layout (config.json = `VAEConfig.to_dict()`, which the first latent caches wrote to DIR/vae).
        Keys and shapes are checked with clear errors (`checkpoint.load_into`)."""
        from worldstream.checkpoint import (
            CONFIG_FILE,
            WEIGHTS_FILE,
            from_pretrained,
            load_config_json,
            load_into,
            load_state_dict_file,
            params_on_meta,
        )

        directory = Path(directory)
        data = load_config_json(directory)
        if not isinstance(data, dict):
            raise ValueError(f"{directory / CONFIG_FILE}: expected a JSON object, got {type(data).__name__}")
        if "type" in data and "config" in data:  # checkpoint.py layout
            vae = from_pretrained(directory, cls, expected_type=VAEConfig, device=device, dtype=dtype)
            return vae.eval()
        cfg = VAEConfig.from_dict(data)  # flat layout
        with params_on_meta():
            vae = cls(cfg)
        weights = directory / WEIGHTS_FILE
        vae = load_into(vae, load_state_dict_file(weights, device), str(weights)).to(device)
        return (vae.to(dtype) if dtype is not None else vae).eval()


class LightVAE(nn.Module):
    """MG-LightVAE: encodes with the full (teacher) VAE, decodes with the pruned one (facts 6.2)."""

    def __init__(self, teacher: VAE, student: VAE):
        super().__init__()
        t, s = teacher.cfg, student.cfg
        same = (
            "z_dim",
            "patch_size",
            "in_channels",
            "dim_mult",
            "temporal_downsample",
            "latent_mean",
            "latent_std",
        )
        diff = [f for f in same if getattr(t, f) != getattr(s, f)]
        if diff:
            raise ValueError(f"LightVAE: teacher and student configs differ in {diff}")
        if t.pruning_rate != 0.0:
            raise ValueError(f"LightVAE: the teacher must be the full VAE, got pruning_rate={t.pruning_rate}")
        self.teacher, self.student = teacher, student

    @property
    def cfg(self) -> VAEConfig:
        return self.student.cfg

    def encode(
        self, video: torch.Tensor, normalise: bool = True, chunk_latents: int | None = 1
    ) -> torch.Tensor:
        return self.teacher.encode(video, normalise, chunk_latents)

    def decode(self, z: torch.Tensor, segment_size: int | None = None) -> torch.Tensor:
        return self.student.decode(z, segment_size)

    def stream_decode(
        self, z: torch.Tensor, cache: DecodeCache, first_chunk: bool, segment_size: int = 4
    ) -> torch.Tensor:
        return self.student.stream_decode(z, cache, first_chunk, segment_size)

    def new_decode_cache(self) -> DecodeCache:
        return self.student.new_decode_cache()

    @classmethod
    def from_official(
        cls,
        wan_path: str | Path,
        light_path: str | Path,
        preset_or_cfg: str | VAEConfig = "mg3_lightvae_v2_p075",
        dtype: torch.dtype = torch.float32,
    ) -> LightVAE:
        """`Wan2.2_VAE.pth` (teacher) + `MG-LightVAE*.pth` (student, config with pruning_rate) -> LightVAE."""
        student = load_official_vae(light_path, preset_or_cfg, dtype)
        teacher = load_official_vae(wan_path, dataclasses.replace(student.cfg, pruning_rate=0.0), dtype)
        return cls(teacher, student)


########################################################################################################
# LightVAE pruning (ours): a pruned decoder that starts from the full one


class _ChannelSpaces:
    """Channel index spaces of a decoder being pruned, tied where shortcuts force the same channels.

    `tie(wide, narrow, k)` binds channel j of `wide` to channel j // k of `narrow` (k = 1: identity
    shortcut; a DupUp3D with in = k * out feeds output channel o from inputs k*o .. k*o + k - 1). Tied
    spaces form trees rooted at their narrowest member; a root channel is kept together with its blocks.
    """

    def __init__(self):
        self.width: dict[str, int] = {}
        self.new_width: dict[str, int] = {}
        self.parent: dict[str, tuple[str, int]] = {}
        self.score: dict[str, torch.Tensor] = {}

    def add(self, name: str, width: int, new_width: int) -> str:
        self.width[name], self.new_width[name] = width, new_width
        self.score[name] = torch.zeros(width, dtype=torch.float64)
        return name

    def find(self, name: str) -> tuple[str, int]:
        """(root, k): channel j of `name` belongs to root channel j // k."""
        k = 1
        while name in self.parent:
            name, step = self.parent[name]
            k *= step
        return name, k

    def tie(self, wide: str, narrow: str, k: int) -> None:
        (ra, ka), (rb, kb) = self.find(wide), self.find(narrow)
        kb *= k
        if ra == rb:
            if ka != kb:
                raise ValueError(f"prune: inconsistent channel ties between {wide} and {narrow}")
        elif kb % ka == 0:
            self.parent[ra] = (rb, kb // ka)
        elif ka % kb == 0:
            self.parent[rb] = (ra, ka // kb)
        else:
            raise ValueError(f"prune: cannot tie {wide} to {narrow} (block sizes {ka} and {kb})")

    def keep(self) -> dict[str, torch.Tensor]:
        """Sorted indices to keep per space: the top root channels by summed importance, with their blocks."""
        members: dict[str, list[tuple[str, int]]] = {}
        for name in self.width:
            root, k = self.find(name)
            members.setdefault(root, []).append((name, k))
        keep: dict[str, torch.Tensor] = {}
        for root, group in members.items():
            n_root, total = self.new_width[root], torch.zeros(self.width[root], dtype=torch.float64)
            for name, k in group:
                if self.new_width[name] != k * n_root:
                    raise ValueError(
                        f"prune: {name} keeps {self.new_width[name]} channels, expected {k} x {n_root}"
                    )
                total += self.score[name].view(-1, k).sum(1)
            top = total.topk(n_root).indices.sort().values
            for name, k in group:
                keep[name] = (top[:, None] * k + torch.arange(k)).flatten()
        return keep


# one use of a channel space: (parameter, dim, [(space, offset in the full tensor)], counts for importance)
_Use = tuple[str, int, list[tuple[str, int]], bool]


def _decoder_uses(vae: VAE, new_cfg: VAEConfig) -> tuple[_ChannelSpaces, list[_Use]]:
    """Walk the decoder in official naming; record which channel space each weight dimension indexes."""
    sp, uses = _ChannelSpaces(), []
    dims, new_dims = vae.cfg.dec_dims, new_cfg.dec_dims

    def conv(name: str, out: list | None, inp: list | None) -> None:
        if out is not None:
            uses.extend([(f"{name}.weight", 0, out, True), (f"{name}.bias", 0, out, False)])
        if inp is not None:
            uses.append((f"{name}.weight", 1, inp, True))

    def resblock(prefix: str, block: ResidualBlock, s_in: str, s_out: str) -> None:
        inner = sp.add(f"{prefix}.inner", sp.width[s_out], sp.new_width[s_out])
        uses.append((f"{prefix}.residual.0.gamma", 0, [(s_in, 0)], True))
        conv(f"{prefix}.residual.2", [(inner, 0)], [(s_in, 0)])
        uses.append((f"{prefix}.residual.3.gamma", 0, [(inner, 0)], True))
        conv(f"{prefix}.residual.6", [(s_out, 0)], [(inner, 0)])
        if isinstance(block.shortcut, CausalConv3d):
            conv(f"{prefix}.shortcut", [(s_out, 0)], [(s_in, 0)])
        else:
            sp.tie(s_in, s_out, 1)

    def attention(prefix: str, s: str) -> None:
        c = sp.width[s]
        qk, v = sp.add(f"{prefix}.qk", c, sp.new_width[s]), sp.add(f"{prefix}.v", c, sp.new_width[s])
        uses.append((f"{prefix}.norm.gamma", 0, [(s, 0)], True))
        conv(f"{prefix}.to_qkv", [(qk, 0), (qk, c), (v, 2 * c)], [(s, 0)])  # q | k | v share one conv
        conv(f"{prefix}.proj", [(s, 0)], [(v, 0)])

    dec = vae.decoder
    s = sp.add("s0", dims[0], new_dims[0])
    conv("decoder.conv1", [(s, 0)], None)
    resblock("decoder.middle.0", dec.middle[0], s, s)
    attention("decoder.middle.1", s)
    resblock("decoder.middle.2", dec.middle[2], s, s)
    for i, block in enumerate(dec.upsamples):
        prefix = f"decoder.upsamples.{i}.upsamples"
        m = sp.add(f"m{i}", dims[i + 1], new_dims[i + 1])  # the level's residual stream
        for j, layer in enumerate(block.upsamples):
            if isinstance(layer, ResidualBlock):
                resblock(f"{prefix}.{j}", layer, s if j == 0 else m, m)
            else:  # Resample, then the level output = resample(main) + DupUp3D(level input)
                out = sp.add(f"s{i + 1}", dims[i + 1], new_dims[i + 1])
                if layer.mode == "upsample3d":
                    t = sp.add(f"t{i}", dims[i + 1], new_dims[i + 1])
                    conv(f"{prefix}.{j}.time_conv", [(t, 0), (t, dims[i + 1])], [(m, 0)])  # 2C = (k c)
                    conv(f"{prefix}.{j}.resample.1", [(out, 0)], [(t, 0)])
                else:
                    conv(f"{prefix}.{j}.resample.1", [(out, 0)], [(m, 0)])
                sp.tie(s, out, dims[i] // dims[i + 1])
                m = out
        s = m
    uses.append(("decoder.head.0.gamma", 0, [(s, 0)], True))
    conv("decoder.head.2", None, [(s, 0)])
    return sp, uses


@torch.no_grad()
def prune_decoder(vae: VAE, pruning_rate: float) -> VAE:
    """A LightVAE student: `vae`'s config at `pruning_rate`, decoder channels copied from `vae` (ours).

    Channel importance = L1 norm of the filters writing a channel + of the weights reading it + |RMS
    gains|, each tensor normalised by its mean. Channels joined by identity or DupUp3D shortcuts are kept
    or dropped together, so the residual paths stay aligned; the time conv's doubled channels and the
    attention q/k pairs are pruned consistently. conv1/conv2 are copied; the student's encoder is freshly
    initialised and never used (a LightVAE encodes with the teacher).
    """
    new_cfg = dataclasses.replace(vae.cfg, pruning_rate=pruning_rate)
    if any(n > o for n, o in zip(new_cfg.dec_dims, vae.cfg.dec_dims)):
        raise ValueError(
            f"prune_decoder: pruning_rate={pruning_rate} gives decoder widths {new_cfg.dec_dims}, "
            f"wider than the source {vae.cfg.dec_dims}"
        )
    src = vae.state_dict()
    sp, uses = _decoder_uses(vae, new_cfg)
    # 1. importance per channel space
    for name, dim, segments, scores in uses:
        if scores:
            w = src[name].detach().double().abs()
            v = w.transpose(0, dim).flatten(1).sum(1)
            v = v / v.mean().clamp_min(1e-30)
            for space, offset in segments:
                sp.score[space] += v[offset : offset + sp.width[space]].cpu()
    keep = sp.keep()
    # 2. slice the source tensors
    index: dict[str, dict[int, torch.Tensor]] = {}
    for name, dim, segments, _ in uses:
        index.setdefault(name, {})[dim] = torch.cat([keep[space] + offset for space, offset in segments])
    student = VAE(new_cfg).to(device=vae.device, dtype=vae.dtype)
    new_sd = {}
    for name, target in student.state_dict().items():
        if name.startswith("encoder."):
            continue
        t = src[name]
        for dim, idx in index.get(name, {}).items():
            t = t.index_select(dim, idx.to(t.device))
        if t.shape != target.shape:
            raise RuntimeError(
                f"prune_decoder: {name} sliced to {list(t.shape)}, expected {list(target.shape)}"
            )
        new_sd[name] = t
    student.load_state_dict(new_sd, strict=False)
    if vae.conv2.weight.is_contiguous(memory_format=torch.channels_last_3d):
        student.to_channels_last()
    return student


########################################################################################################
# Official checkpoints


# diffusers-style names -> Wan names (facts 6.2)
_TOP_LEVEL = {"quant_conv": "conv1", "post_quant_conv": "conv2"}
_ENDS = {"conv_in": "conv1", "norm_out": "head.0", "conv_out": "head.2"}
_MID = {("resnets", "0"): "middle.0", ("attentions", "0"): "middle.1", ("resnets", "1"): "middle.2"}
_RESNET = {
    "norm1": "residual.0",
    "conv1": "residual.2",
    "norm2": "residual.3",
    "conv2": "residual.6",
    "conv_shortcut": "shortcut",
}
_WRAPPERS = ("state_dict", "gen_model", "generator")
_DROPPED_PREFIX = "dynamic_feature_projection_heads."  # LightVAE training heads


def _map_key(key: str, cfg: VAEConfig) -> str:
    parts = key.split(".")
    if parts[0] in _TOP_LEVEL:
        return ".".join([_TOP_LEVEL[parts[0]], *parts[1:]])
    if parts[0] not in ("encoder", "decoder") or len(parts) < 3:
        return key
    side, rest = parts[0], parts[1:]
    group = "downsamples" if side == "encoder" else "upsamples"
    resample_index = cfg.num_res_blocks + (0 if side == "encoder" else 1)  # the Resample follows the resnets
    if rest[0] in _ENDS:
        return ".".join([side, _ENDS[rest[0]], *rest[1:]])
    if rest[0] == "mid_block" and (rest[1], rest[2]) in _MID:
        mapped, inner, is_resnet = _MID[(rest[1], rest[2])], rest[3:], rest[1] == "resnets"
    elif rest[0] in ("down_blocks", "up_blocks") and len(rest) > 3 and rest[2] == "resnets":
        mapped, inner, is_resnet = f"{group}.{rest[1]}.{group}.{rest[3]}", rest[4:], True
    elif rest[0] in ("down_blocks", "up_blocks") and rest[2] in ("downsampler", "upsampler"):
        mapped, inner, is_resnet = f"{group}.{rest[1]}.{group}.{resample_index}", rest[3:], False
    else:
        return key
    if is_resnet and inner and inner[0] in _RESNET:
        inner = [_RESNET[inner[0]], *inner[1:]]
    return ".".join([side, mapped, *inner])


def map_official_keys(state: dict[str, torch.Tensor], cfg: VAEConfig) -> dict[str, torch.Tensor]:
    """Wan or diffusers-style VAE keys -> Wan (`WanVAE_`) keys; LightVAE training heads are dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(_DROPPED_PREFIX):
            continue
        new = _map_key(key, cfg)
        if new in out:
            raise ValueError(f"two checkpoint keys map to {new!r} (one is {key!r})")
        out[new] = value
    return out


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(obj, dict) and any(k in obj and isinstance(obj[k], dict) for k in _WRAPPERS):
        obj = next(obj[k] for k in _WRAPPERS if k in obj and isinstance(obj[k], dict))
    if not isinstance(obj, dict) or not obj:
        raise ValueError(
            f"{path}: expected a state dict (optionally under {list(_WRAPPERS)}), got {type(obj).__name__}"
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: entries that are not tensors: {bad[:5]}")
    return obj


def _first(items: Iterable[str], n: int = 5) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def load_official_vae(
    path: str | Path, preset_or_cfg: str | VAEConfig = "mg3_wan22", dtype: torch.dtype = torch.float32
) -> VAE:
    """Load `Wan2.2_VAE.pth` / `MG-LightVAE*.pth` (Wan or diffusers key names) into a VAE.

    torch.load(weights_only=True); `state_dict` / `gen_model` / `generator` wrappers are unwrapped and
    `dynamic_feature_projection_heads.*` dropped. A full VAE must match exactly. A LightVAE (pruning_rate
    > 0) needs every decoder.* / conv2.* key; its encoder may be missing (official strict=False) and is
    then initialised, as it is never used. Missing file, unreadable file, missing / unexpected keys or
    shape mismatches raise an error naming the file and the first offending keys.
    """
    path = Path(path)
    cfg = preset(preset_or_cfg) if isinstance(preset_or_cfg, str) else preset_or_cfg
    if not path.is_file():
        raise FileNotFoundError(f"VAE checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated / not a torch file / unsafe pickle
        raise ValueError(f"cannot read VAE checkpoint {path}: {type(e).__name__}: {e}") from e
    state = map_official_keys(_unwrap(obj, path), cfg)
    with torch.device("meta"):
        vae = VAE(cfg)
    expected = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    light = cfg.pruning_rate > 0
    required = [k for k in expected if not light or k.startswith(("decoder.", "conv2."))]
    missing = [k for k in required if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} file {list(state[k].shape)} vs model {list(shape)}"  # in model order
        for k, shape in expected.items()
        if k in state and tuple(state[k].shape) != shape
    ]
    if missing or unexpected or mismatched:
        what = [
            f"{len(missing)} missing keys: {_first(missing)}" if missing else "",
            f"{len(unexpected)} unexpected keys: {_first(unexpected)}" if unexpected else "",
            f"{len(mismatched)} shape mismatches: {_first(mismatched)}" if mismatched else "",
        ]
        raise ValueError(
            f"{path} does not fit VAE (pruning_rate={cfg.pruning_rate}, dims enc {cfg.enc_dims} "
            f"dec {cfg.dec_dims}): " + "; ".join(w for w in what if w)
        )
    vae.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    _materialise_missing(vae, dtype)
    return vae


def _materialise_missing(vae: VAE, dtype: torch.dtype) -> None:
    """Give parameters still on the meta device (not in the checkpoint) their default initialisation."""
    for m in vae.modules():
        if any(p.is_meta for p in m.parameters(recurse=False)):
            m.to_empty(device="cpu", recurse=False)
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                m.reset_parameters()
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.gamma)
            m.to(dtype)


########################################################################################################
# Presets

MG3_WAN22 = VAEConfig(latent_mean=WAN22_LATENT_MEAN, latent_std=WAN22_LATENT_STD)  # facts 6.1 (defaults)
MG3_LIGHTVAE_P050 = dataclasses.replace(MG3_WAN22, pruning_rate=0.5)  # MG-LightVAE.pth (facts 6.2)
MG3_LIGHTVAE_V2_P075 = dataclasses.replace(MG3_WAN22, pruning_rate=0.75)  # MG-LightVAE_v2.pth

# CPU preset (SPEC "nano"): stride (4, 8, 8) = 2x2 patchify + two 2x down-samples, both also in time (no
# patchify + three down-samples would run the costliest level at 96x160 instead of 48x80). On the 2-core
# AMX CPU, bf16, channels-last, one streaming step of 4 latents -> 16 frames at 96x160 decodes in ~85 ms
# (LightVAE p=0.5: ~34 ms, p=0.75: ~19 ms); docs/results/vae_speed.md. The time goes to the top level:
# constant widths keep it at 64 channels (AMX-friendly; 24/48-channel variants ran slower per FLOP).
# Element-wise passes (norm, SiLU, adds) cost about as much as the convolutions and only halve under
# p=0.5, so narrower decoders gain less from pruning (dec_dim 32, widths (1, 2, 2): ~50 ms but only 2.0x).
NANO = VAEConfig(
    dim=48,  # encoder width (runs once per prompt image and for latent caching)
    dec_dim=64,  # decoder width at every level
    z_dim=16,  # SPEC: 16 latent channels; normalisation identity until estimated (with_latent_stats)
    dim_mult=(1, 1, 1),  # three levels -> two spatial down-samples; constant width (see above)
    num_res_blocks=2,  # as Wan2.2 (decoder: 3 per level)
    temporal_downsample=(True, True),  # time stride 4 with only two down-sampling levels
)

PRESETS: dict[str, VAEConfig] = {
    "nano": NANO,
    "mg3_wan22": MG3_WAN22,
    "mg3_lightvae_p050": MG3_LIGHTVAE_P050,
    "mg3_lightvae_v2_p075": MG3_LIGHTVAE_V2_P075,
}


def preset(name: str) -> VAEConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown VAE preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]
