"""MG3 action module: mouse temporal self-attention + keyboard cross-attention (facts section 3).

Source: official `wan/modules/action_module.py` ("from GameFactory"), as documented in the facts; parameter
names are the official ones so checkpoints load strictly. Notable behaviour reproduced as-is:
* Grouping of per-pixel-frame action rows into per-latent windows of `vae_time_compression_ratio *
  windows_size` (4*3 = 12) rows. First clip (N-1 divisible by 4): 12 copies of row 0 are prepended, latent i
  reads original rows 4i-12..4i-1 (one frame before its own last frame). Later clips (N divisible by 4):
  8 copies, latent i reads rows 4i-8..4i+3. Memory latents use their single row repeated 12x and come first.
* RMSNorm on q/k per head *without* its learned weight (the snapshot's behaviour; the weights exist in the
  state dict). `ActionConfig.action_norm_weight=True` applies them (the later upstream fix).
* Action RoPE is HunyuanVideo's real form (interleaved pairs, x*cos + rotate_half(x)*sin) over
  `rope_dim_list` = [t, h, w] dims. The positional grid is (T, 1, 1), so only the first t dims rotate; the
  temporal positions restart: memory entries 0..M-1, then clip entries 0..F-1.
* Mouse branch residual is the module input x (not the MLP output); the keyboard query is the mouse-branch
  output h.
* NOTE the official keyboard k/v repeat is only correct for batch 1; we attend per batch element (all T*S
  queries of an element over its T keys: the same result without the repeat).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat

from worldstream.model.attention import attention


@dataclass(frozen=True)
class ActionConfig:
    """`ActionModule(**action_config)` constructor kwargs of the official model (facts 1.3) + our switch."""

    blocks: tuple[int, ...]  # DiT blocks that own an action module (mg3_5b: 0..14, the first half)
    heads_num: int  # attention heads of both branches (mg3_5b: 16)
    hidden_size: int  # keyboard row embedding width (mg3_5b: 128)
    img_hidden_size: int  # = DiT dim (mg3_5b: 3072)
    keyboard_hidden_dim: int  # keyboard attention width (mg3_5b: 1024 -> 16 heads x 64)
    mouse_hidden_dim: int  # mouse MLP / attention width (mg3_5b: 1024 -> 16 heads x 64)
    enable_mouse: bool = True
    enable_keyboard: bool = True
    keyboard_dim_in: int = 6  # [W, S, A, D, Space, Attack]
    mouse_dim_in: int = 2  # [pitch, yaw]
    mouse_qk_dim_list: tuple[int, ...] = (8, 28, 28)  # keyboard-branch RoPE dims (t, h, w) with memory
    rope_dim_list: tuple[int, ...] = (8, 28, 28)  # RoPE dims (t, h, w); sums to the head dim
    rope_theta: float = 256.0  # official rope_theta
    patch_size: tuple[int, int, int] = (1, 2, 2)  # must equal the DiT patch (grid (T, 1, 1) follows from it)
    qk_norm: bool = True
    qkv_bias: bool = False  # also governs the bias of proj_mouse / mouse_attn_q / proj_keyboard
    vae_time_compression_ratio: int = 4  # pixel frames per latent
    windows_size: int = 3  # latents per action window -> 12 rows
    action_norm_weight: bool = False  # False = official snapshot (q/k RMSNorm ignores its weight)
    norm_eps: float = 1e-6  # q/k RMSNorm eps
    mouse_mlp_eps: float = 1e-5  # nn.LayerNorm default at the end of mouse_mlp

    def __post_init__(self):
        for name, width in (
            ("mouse_hidden_dim", self.mouse_hidden_dim),
            ("keyboard_hidden_dim", self.keyboard_hidden_dim),
        ):
            if width % self.heads_num:
                raise ValueError(
                    f"ActionConfig.{name}={width} is not divisible by heads_num={self.heads_num}"
                )
        for name, dims, head in (
            ("rope_dim_list", self.rope_dim_list, self.mouse_head_dim),
            ("mouse_qk_dim_list", self.mouse_qk_dim_list, self.keyboard_head_dim),
        ):
            if sum(dims) != head or dims[0] % 2:
                raise ValueError(
                    f"ActionConfig.{name}={list(dims)} must sum to the head dim {head} "
                    f"with an even temporal part"
                )

    @property
    def mouse_head_dim(self) -> int:
        return self.mouse_hidden_dim // self.heads_num

    @property
    def keyboard_head_dim(self) -> int:
        return self.keyboard_hidden_dim // self.heads_num

    @property
    def window_rows(self) -> int:
        """Action rows per latent window (4 * 3 = 12)."""
        return self.vae_time_compression_ratio * self.windows_size

    @property
    def mouse_window_features(self) -> int:
        return self.mouse_dim_in * self.window_rows

    @property
    def keyboard_window_features(self) -> int:
        return self.hidden_size * self.window_rows


########################################################################################################
# Grouping of action rows into per-latent windows (facts 3.2)


def clip_row_padding(n: int, ratio: int, windows: int) -> tuple[int, int]:
    """(n_feats, pad) for N clip rows: latents covered and copies of row 0 to prepend (raises for a bad N)."""
    if (n - 1) % ratio == 0:  # first clip: 1 + 4k rows (image latent + k latents)
        return (n - 1) // ratio + 1, ratio * windows
    if n % ratio == 0:  # later clips: 4k rows
        return n // ratio, ratio * (windows - 1)
    raise ValueError(f"action rows: N={n} is neither 1 + {ratio}k (first clip) nor {ratio}k (later clip)")


def pad_clip_rows(rows: torch.Tensor, ratio: int, windows: int) -> tuple[torch.Tensor, int]:
    """Prepend copies of row 0 by the first-clip / later-clip rule.

    rows [B, N, C] -> (padded [B, N + pad, C], number of latents n_feats).
    """
    n_feats, pad = clip_row_padding(rows.shape[1], ratio, windows)
    padded = torch.cat([rows[:, :1].expand(-1, pad, -1), rows], dim=1)
    return padded, n_feats


def window_padded_rows(padded: torch.Tensor, n_feats: int, ratio: int, window_rows: int) -> torch.Tensor:
    """padded [B, N + pad, C] -> [B, n_feats, window_rows, C]; latent i reads rows [ratio*i, +window).

    A strided view (`unfold`), no copy; the padding rule makes exactly n_feats windows fit.
    """
    return padded.unfold(1, window_rows, ratio)[:, :n_feats].transpose(-1, -2)


def group_action_windows(
    rows: torch.Tensor, memory_rows: torch.Tensor | None, ratio: int, windows: int
) -> torch.Tensor:
    """rows [B, N, C], memory_rows [B, M, C] | None -> [B, M + n_feats, ratio*windows, C] (memory first)."""
    padded, n_feats = pad_clip_rows(rows, ratio, windows)
    win = window_padded_rows(padded, n_feats, ratio, ratio * windows)
    if memory_rows is not None:
        win = torch.cat([repeat(memory_rows, "b m c -> b m w c", w=ratio * windows), win], dim=1)
    return win


def clip_latents_for_rows(n_rows: int, ratio: int) -> int:
    """Latents covered by N clip action rows (raises for an N matching neither grouping rule)."""
    return clip_row_padding(n_rows, ratio, 1)[0]


########################################################################################################
# RoPE (HunyuanVideo real form, temporal-only grid)


def action_rope(positions: torch.Tensor, dim_list: tuple[int, ...], theta: float) -> tuple[torch.Tensor, ...]:
    """positions [T] -> (cos, sin) [T, sum(dim_list)] float32; dims past the temporal part are identity."""
    dt = dim_list[0]
    freqs = 1.0 / torch.pow(float(theta), torch.arange(0, dt, 2)[: dt // 2].float() / dt)  # [dt/2]
    ang = torch.outer(positions.float(), freqs)  # [T, dt/2]
    rest = sum(dim_list) - dt  # h/w dims sit at grid position 0 -> cos 1, sin 0
    cos = torch.cat([ang.cos().repeat_interleave(2, dim=1), ang.new_ones(len(positions), rest)], dim=1)
    sin = torch.cat([ang.sin().repeat_interleave(2, dim=1), ang.new_zeros(len(positions), rest)], dim=1)
    return cos, sin


def apply_action_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, T, H, D] rotated along T with cos/sin [T, R] as `action_rope` makes them (pairs share a value).

    x*cos + rotate_half(x)*sin with interleaved pairs (a, b) -> (-b, a) is the complex product
    (a + ib)(cos + i sin); see `rotate_pairs`.
    """
    return rotate_pairs(x, torch.complex(cos[:, 0::2].float(), sin[:, 0::2].float()))


def rotate_pairs(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """x [N, T, H, D] times the unit complex rot [T, R/2] on its first R channels (pairs (2j, 2j+1)).

    Channels past R are returned as they are, which is what cos 1 / sin 0 gives them (the action grid's h/w
    dims: 56 of 64). The complex multiply is the real form's products and sums, ~2.5x faster on CPU; math
    in float32.
    """
    r = 2 * rot.shape[-1]
    pairs = rearrange(x[..., :r].float(), "n t h (c two) -> n t h c two", two=2)
    xc = torch.view_as_complex(pairs.contiguous())
    out = rearrange(torch.view_as_real(xc * rot[None, :, None]), "n t h c two -> n t h (c two)").type_as(x)
    return out if r == x.shape[-1] else torch.cat([out, x[..., r:]], dim=-1)


@functools.lru_cache(maxsize=16)
def _temporal_rotations(
    num_memory: int, num_clip: int, dim_list: tuple[int, ...], theta: float
) -> torch.Tensor:
    """complex64 [M + F, dim_list[0] / 2]: the rotating (temporal) pairs for positions 0..M-1, 0..F-1."""
    # NOTE built outside inference mode: a cached inference tensor could not be saved for a later backward
    with torch.inference_mode(False), torch.no_grad():
        pos = torch.cat([torch.arange(num_memory), torch.arange(num_clip)])  # temporal positions restart
        cos, sin = action_rope(pos, dim_list, theta)
        dt = dim_list[0]
        return torch.complex(cos[:, 0:dt:2], sin[:, 0:dt:2])


class ActionRMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps), optionally times the weight (official snapshot: weight ignored)."""

    def __init__(self, dim: int, eps: float, use_weight: bool):
        super().__init__()
        self.eps = eps
        self.use_weight = use_weight
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # NOTE the fused kernel: float32 is the same math in one op instead of five; bf16 is computed in
        # float32 inside and rounded once, where the official no-cast code rounds after every step (the two
        # differ by bf16 rounding only)
        y = F.rms_norm(x, x.shape[-1:], eps=self.eps)
        return y * self.weight if self.use_weight else y


########################################################################################################
# The module


class ActionModule(nn.Module):
    """Adds mouse and keyboard conditioning to the video tokens of one DiT block.

    NOTE attribute registration order = official state_dict order (checked against the 5B manifest).
    """

    def __init__(self, cfg: ActionConfig):
        super().__init__()
        self.cfg = cfg
        c, bias = cfg.img_hidden_size, cfg.qkv_bias

        def qk_norm(dim: int) -> nn.Module:
            return ActionRMSNorm(dim, cfg.norm_eps, cfg.action_norm_weight) if cfg.qk_norm else nn.Identity()

        if cfg.enable_keyboard:
            self.keyboard_embed = nn.Sequential(
                nn.Linear(cfg.keyboard_dim_in, cfg.hidden_size),
                nn.SiLU(),
                nn.Linear(cfg.hidden_size, cfg.hidden_size),
            )
        if cfg.enable_mouse:
            self.mouse_mlp = nn.Sequential(
                nn.Linear(c + cfg.mouse_window_features, cfg.mouse_hidden_dim),
                nn.GELU(approximate="tanh"),
                nn.Linear(cfg.mouse_hidden_dim, cfg.mouse_hidden_dim),
                nn.LayerNorm(cfg.mouse_hidden_dim, eps=cfg.mouse_mlp_eps),
            )
            self.t_qkv = nn.Linear(cfg.mouse_hidden_dim, 3 * cfg.mouse_hidden_dim, bias=bias)
            self.img_attn_q_norm = qk_norm(cfg.mouse_head_dim)
            self.img_attn_k_norm = qk_norm(cfg.mouse_head_dim)
            self.proj_mouse = nn.Linear(cfg.mouse_hidden_dim, c, bias=bias)
        if cfg.enable_keyboard:
            self.key_attn_q_norm = qk_norm(cfg.keyboard_head_dim)
            self.key_attn_k_norm = qk_norm(cfg.keyboard_head_dim)
            self.mouse_attn_q = nn.Linear(c, cfg.keyboard_hidden_dim, bias=bias)
            self.keyboard_attn_kv = nn.Linear(
                cfg.keyboard_window_features, 2 * cfg.keyboard_hidden_dim, bias=bias
            )
            self.proj_keyboard = nn.Linear(cfg.keyboard_hidden_dim, c, bias=bias)

    def _rope(self, num_memory: int, num_clip: int, dim_list: tuple[int, ...], device) -> torch.Tensor:
        """complex64 [T, dim_list[0] / 2] rotations (memory 0..M-1, then clip 0..F-1); cached per size."""
        rot = _temporal_rotations(num_memory, num_clip, tuple(dim_list), float(self.cfg.rope_theta))
        return rot.to(device)

    def _mouse_mlp_in(self, x: torch.Tensor, windows: torch.Tensor, frames: int) -> torch.Tensor:
        """First `mouse_mlp` layer on cat([token, its frame's 24 window values]) without building the concat.

        x [B, T*S, C], windows [B, T, 24] -> [B, T*S, mh]. The layer splits into a token part and a window
        part shared by the S tokens of a frame (the same sum, another float32 summation order).
        """
        first = self.mouse_mlp[0]
        w_tok, w_win = first.weight.split([x.shape[-1], windows.shape[-1]], dim=1)
        per_frame = F.linear(windows, w_win, first.bias)  # [B, T, mh]
        tokens = rearrange(F.linear(x, w_tok), "b (t s) c -> b t s c", t=frames)  # [B, T, S, mh]
        return rearrange(tokens + per_frame[:, :, None], "b t s c -> b (t s) c")

    def forward(
        self,
        x: torch.Tensor,
        frames: int,
        mouse_cond: torch.Tensor,
        keyboard_cond: torch.Tensor,
        mouse_cond_memory: torch.Tensor | None = None,
        keyboard_cond_memory: torch.Tensor | None = None,
        capture: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x [B, T*S, C] valid tokens (memory frames first), frames = T, actions [B, N, *], memory [B, M, *].

        Returns [B, T*S, C]. `capture` (optional) receives the golden `action_grouping` internals.
        """
        cfg = self.cfg
        ratio, wins = cfg.vae_time_compression_ratio, cfg.windows_size
        T = frames
        S = x.shape[1] // T
        M = 0 if mouse_cond_memory is None else mouse_cond_memory.shape[1]
        F_clip = T - M
        cap = capture if capture is not None else {}
        if (mouse_cond_memory is None) != (keyboard_cond_memory is None):
            raise ValueError("action module: give both mouse_cond_memory and keyboard_cond_memory or neither")
        if x.shape[1] != T * S:
            raise ValueError(f"action module: {x.shape[1]} tokens are not {T} frames x {S} tokens")
        n_feats = clip_latents_for_rows(mouse_cond.shape[1], ratio)
        if n_feats != F_clip:
            raise ValueError(
                f"action module: {mouse_cond.shape[1]} clip action rows group into {n_feats} "
                f"latents, but there are {F_clip} clip latent frames ({T} total - {M} memory)"
            )

        # 1. Mouse branch: per spatial location, temporal self-attention over the T grouped frames
        nh = cfg.heads_num
        h = x
        if cfg.enable_mouse:
            mw = group_action_windows(mouse_cond.to(x.dtype), _opt(mouse_cond_memory, x.dtype), ratio, wins)
            mw = rearrange(mw, "b t w c -> b t (w c)")  # [B, T, 24] window-major
            m = self.mouse_mlp[1:](self._mouse_mlp_in(x, mw, T))  # [B, T*S, mh]
            qkv = rearrange(self.t_qkv(m), "b (t s) (k h d) -> k (b s) t h d", t=T, k=3, h=nh)
            q, k, v = self.img_attn_q_norm(qkv[0]), self.img_attn_k_norm(qkv[1]), qkv[2]  # [(B S), T, h, d]
            rot = self._rope(M, F_clip, cfg.rope_dim_list, x.device)
            q, k = rotate_pairs(q, rot), rotate_pairs(k, rot)
            attn = rearrange(attention(q, k, v), "(b s) t h d -> b (t s) (h d)", s=S)  # [B, T*S, mh]
            proj = self.proj_mouse(attn)  # [B, T*S, C]
            h = x + proj
            if capture is not None:  # golden internals in the official layouts
                x_bs = rearrange(x, "b (t s) c -> (b s) t c", t=T)
                windows = repeat(mw, "b t k -> (b s) t k", s=S)
                mouse_in = torch.cat([x_bs, windows], dim=-1)  # [(B S), T, C + 24]
                cap.update(mouse_windows=mw, mouse_mlp_in=mouse_in,
                           mouse_mlp_out=rearrange(m, "b (t s) c -> (b s) t c", t=T), mouse_attn_out=attn,
                           proj_mouse_out=proj, h_after_mouse=h)

        # 2. Keyboard branch: every frame's query attends to all T keyboard windows
        out = h
        if cfg.enable_keyboard:
            kb_pad, n_feats = pad_clip_rows(keyboard_cond.to(x.dtype), ratio, wins)  # [B, N+pad, 6]
            kb_emb = self.keyboard_embed(kb_pad)  # [B, N+pad, hid]
            win = window_padded_rows(kb_emb, n_feats, ratio, cfg.window_rows)  # [B, F, 12, hid]
            cap.update(keyboard_embed_in_clip_padded=kb_pad, keyboard_embed_out_clip_padded=kb_emb)
            if keyboard_cond_memory is not None:
                kb_mem_in = keyboard_cond_memory.to(x.dtype)
                kb_mem = self.keyboard_embed(kb_mem_in)  # [B, M, hid]
                win = torch.cat([repeat(kb_mem, "b m c -> b m w c", w=cfg.window_rows), win], dim=1)
                cap.update(keyboard_embed_in_memory=kb_mem_in, keyboard_embed_out_memory=kb_mem)
            kw = rearrange(win, "b t w c -> b t (w c)")  # [B, T, 12*hid]
            # NOTE the official repeats k, v over the S locations and attends per location; since every query
            # sees the same T keys, one attention of all T*S queries of a batch element over its T keys is
            # the same computation without the copies. q keeps the token order; its RoPE position is t.
            q = rearrange(self.mouse_attn_q(h), "b (t s) (h d) -> b t (s h) d", t=T, h=nh)  # [B, T, S*h, d]
            k, v = rearrange(self.keyboard_attn_kv(kw), "b t (k h d) -> k b t h d", k=2, h=nh)  # [B, T, h, d]
            q, k = self.key_attn_q_norm(q), self.key_attn_k_norm(k)
            dims = cfg.mouse_qk_dim_list if M > 0 else cfg.rope_dim_list
            rot = self._rope(M, F_clip, dims, x.device)
            q, k = rotate_pairs(q, rot), rotate_pairs(k, rot)
            q = rearrange(q, "b t (s h) d -> b (t s) h d", h=nh)  # [B, T*S, h, d]
            attn = rearrange(attention(q, k, v), "b n h d -> b n (h d)")  # [B, T*S, kh]
            out = h + self.proj_keyboard(attn)
            cap.update(keyboard_windows=kw, keyboard_attn_out=attn)
        cap.update(module_out=out)
        return out  # [B, T*S, C]


def _opt(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)
