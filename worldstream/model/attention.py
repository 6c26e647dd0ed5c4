"""Attention backend and the DiT's 3D RoPE with head-wise jitter.

Notable (facts 2.1, 2.2, 2.3; golden README section 1):
* `attention` is torch SDPA with a boolean *key* mask only when padding exists. It has the semantics of the
  official flash-attn varlen call: pad keys are excluded, pad queries are still computed, scale 1/sqrt(d),
  no causal mask. (MG3's own SDPA fallback on the SP path ignores the pad mask; we never do.)
* RoPE is Wan's: each head's d channels form d/2 complex pairs (2j, 2j+1), split t/h/w as
  [c - 2*(c//3), c//3, c//3]; part with n pairs rotates pair j by pos * theta^(-j/n).
* MG3's head-wise jitter: theta_h = theta * (1 + sigma_theta * eps_h), eps_h = linspace(-1, 1, heads)
  (float64, the same in every layer and for t/h/w). sigma_theta = 0 gives plain shared-theta RoPE.
* Temporal positions are absolute latent indices supplied by the caller (memory tokens their own
  `memory_latent_idx`, the clip `range(*predict_latent_idx)`); padding tokens are left unrotated.
* The official table has 2048 positions per axis and indexes past it (or at negative positions) silently.
  We compute angles on the fly in float64 (bit-identical to the table for positions < 2048) and, by default,
  raise for positions outside the table; `overflow="extend"` accepts any non-negative position (sessions
  longer than 2048 latents).
* Speed (ours): `Rope3D.freqs` keeps the last few grids (the 2-3 denoising steps of a clip share one), and the
  rotation stays a complex multiply: the real cos/sin form's products and sums (float32 rounding aside), 4-6x
  faster on CPU (measured in docs/results/dit_speed.md).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange

RopeOverflow = Literal["error", "extend"]


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid_keys: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Non-causal multi-head attention; keys at index >= valid_keys are excluded.

    q [B, Lq, H, D], k/v [B, Lk, H, D], valid_keys: int or [B] long (None = all keys) -> [B, Lq, H, D].
    """
    Lk = k.shape[1]
    mask = None
    if isinstance(valid_keys, int):
        valid_keys = None if valid_keys >= Lk else torch.tensor([valid_keys], device=k.device)
    if valid_keys is not None and bool((valid_keys < Lk).any()):
        keep = torch.arange(Lk, device=k.device)[None, :] < valid_keys.reshape(-1, 1)  # [B or 1, Lk]
        mask = keep[:, None, None, :]  # [B, 1, 1, Lk], True = attend
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )
    return out.transpose(1, 2)  # [B, Lq, H, D]


def rope_pair_split(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs per head for (t, h, w): Wan's [c - 2*(c//3), c//3, c//3], c = head_dim // 2."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    c = head_dim // 2
    return (c - 2 * (c // 3), c // 3, c // 3)


def headwise_thetas(num_heads: int, theta: float, sigma_theta: float) -> torch.Tensor | None:
    """[H] float64 per-head bases theta*(1 + sigma*linspace(-1, 1, H)), or None for plain RoPE."""
    if sigma_theta == 0:
        return None
    eps = torch.linspace(-1.0, 1.0, num_heads, dtype=torch.float64, device="cpu")
    return theta * (1 + sigma_theta * eps)


class Rope3D:
    """Frequencies for (t, h, w) token grids. Holds only float64 angle rates; no module state, no buffers."""

    def __init__(
        self,
        head_dim: int,
        num_heads: int,
        theta: float,
        sigma_theta: float,
        max_positions: int,
        overflow: RopeOverflow = "error",
        cache_size: int = 2,
    ):
        if overflow not in ("error", "extend"):
            raise ValueError(f"rope overflow mode must be 'error' or 'extend', got {overflow!r}")
        self.pairs = rope_pair_split(head_dim)
        self.max_positions = max_positions
        self.overflow = overflow
        thetas = headwise_thetas(num_heads, theta, sigma_theta)
        base = (
            torch.tensor([float(theta)], dtype=torch.float64, device="cpu") if thetas is None else thetas
        )  # [H'] (H' = H or 1)
        # omega[h, j] = 1 / theta_h ** (2j / 2n), exactly Wan's rope_params exponent in float64
        # NOTE explicit CPU: the model may be built under `with torch.device("meta")` (from_pretrained),
        # but these are host-side constants, never parameters.
        self.omegas = [
            1.0 / torch.pow(base[:, None],
                            torch.arange(0, 2 * n, 2, dtype=torch.float64, device="cpu").div(2 * n)[None, :])
            for n in self.pairs
        ]  # 3 x [H', n]
        # NOTE a bounded cache of finished grids: (positions, h, w, pad, device) -> complex64 [L, H', C].
        # Callers must not modify a returned tensor in place. 2 entries: a clip's steps reuse one grid, and
        # one 5B grid is ~200 MB.
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def _check(self, axis: str, positions: torch.Tensor) -> None:
        if positions.numel() == 0:
            return
        lo, hi = int(positions.min()), int(positions.max())
        if lo < 0:
            raise ValueError(f"RoPE {axis} position {lo} is negative")
        if self.overflow == "error" and hi >= self.max_positions:
            raise ValueError(
                f"RoPE {axis} position {hi} is outside the table (positions 0..{self.max_positions - 1}, "
                f"as in the official model); set DiTConfig.rope_overflow='extend' to compute frequencies "
                f"for any position"
            )

    def _angles(self, part: int, positions: torch.Tensor) -> torch.Tensor:
        """[P] positions -> unit complex128 rotations [P, H', n]."""
        ang = positions.to(torch.float64)[:, None, None] * self.omegas[part][None]  # [P, H', n]
        return torch.polar(torch.ones_like(ang), ang)

    def freqs(
        self, t_positions: Sequence[int] | torch.Tensor, h: int, w: int, pad: int = 0,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Rotations for a frame-major (f, h, w) token grid, then `pad` identity rotations (padding tokens)
        -> complex64 [F*h*w + pad, H', head_dim // 2] on `device` (cached; do not modify in place)."""
        positions = tuple(int(p) for p in torch.as_tensor(t_positions).reshape(-1).tolist())
        key = (positions, h, w, pad, str(torch.device(device or "cpu")))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        # NOTE built outside inference mode: a cached inference tensor could not be saved for a later backward
        with torch.inference_mode(False), torch.no_grad():
            grid = self._grid(positions, h, w)
            grid = torch.cat([grid, grid.new_ones(pad, *grid.shape[1:])]).to(device)  # [L + pad, H', C]
        self._cache[key] = grid
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return grid

    def _grid(self, t_positions: Sequence[int], h: int, w: int) -> torch.Tensor:
        ft = torch.tensor(t_positions, dtype=torch.long)
        fh, fw = torch.arange(h), torch.arange(w)
        for axis, pos in (("temporal", ft), ("height", fh), ("width", fw)):
            self._check(axis, pos)
        nf = ft.numel()
        rt = self._angles(0, ft)[:, None, None].expand(nf, h, w, -1, -1)  # [F, h, w, H', n_t]
        rh = self._angles(1, fh)[None, :, None].expand(nf, h, w, -1, -1)  # [F, h, w, H', n_h]
        rw = self._angles(2, fw)[None, None, :].expand(nf, h, w, -1, -1)  # [F, h, w, H', n_w]
        grid = torch.cat([rt, rh, rw], dim=-1)  # [F, h, w, H', C]
        return rearrange(grid, "f h w n c -> (f h w) n c").to(torch.complex64)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, L, H, D] by freqs [L, H', D/2] (complex64, H' in {1, H}); math in float32."""
    xc = torch.view_as_complex(rearrange(x.float(), "b l n (c two) -> b l n c two", two=2).contiguous())
    out = torch.view_as_real(xc * freqs[None])  # [B, L, H, C, 2]
    return rearrange(out, "b l n c two -> b l n (c two)").type_as(x)
