"""The MG3 world-model DiT: Wan2.2-TI2V-5B + memory tokens, camera injection and action modules.

Source: official `wan/modules/model.py` (`WanModel`, `WanAttentionBlock`), documented in facts sections 1-3
and checked against the golden `dit_tiny_*` vectors. Parameter names are the official ones: an official
`diffusion_pytorch_model.safetensors` loads with `load_state_dict(strict=True)`, and `mg3_5b` matches
`mg3_dit_5b_state_dict.json` key for key, shape for shape and in order.

Notable features (all official behaviour unless marked "ours"):
* Per-token timesteps: every token has its own t (memory and clean prefix tokens use 0); the sinusoid is
  [cos, sin] in float64 and both `e` (head) and `e0` (six block modulations) are per token.
* Memory latents are prepended to the clip (tokens, timesteps, Plücker maps, actions) and attend
  bidirectionally with everything; they are dropped from the output (`return_memory` returns them too).
* RoPE temporal positions are absolute latent indices: memory frames `memory_latent_idx` (may repeat),
  clip frames `range(*predict_latent_idx)`; head-wise theta jitter `sigma_theta` (attention.py).
* The sequence is zero-padded to `seq_len`; pad keys are excluded from self-attention (pad queries computed).
* Block: self-attn (modulated) -> camera injection from the Plücker features -> x = norm3(x) then
  x = x + cross_attn(x) (MG3 replaces the residual by its LayerNorm, unlike vanilla Wan) -> action module
  on the valid tokens (configured blocks) -> FFN (modulated).
* Camera: the Plücker map [B, 6*b*b, F, H, W] (b = `camera_block`, 16 officially: 1536 channels) is folded
  2x2 per token (6144 officially, hard-coded there; a config field here, ours) and projected once.
* Dtypes: everything runs in the parameter dtype; norms and RoPE compute in float32, the sinusoid in
  float64. (The official bf16 runtime keeps a float32 residual; the golden vectors are float32 throughout.)
* RoPE positions past the official 2048-entry table raise unless `rope_overflow="extend"` (ours).
* Single-device code: distribution is applied from outside (worldstream/parallel/). Sequence parallelism
  replaces four per-instance seams, identity here: `SelfAttention.attn_fn`, `DiTBlock.action_fn` and
  `WorldDiT.shard_tokens` / `gather_tokens` around the blocks.

Speed (ours; same numbers, measured in docs/results/dit_speed.md):
* Tokens share a few timesteps (clean memory/prefix t = 0, the noisy frames one t), so the sinusoid and the
  time MLPs run once per distinct t (`TimeEmbedding`) and the modulation vectors are gathered per token; with
  one distinct t they broadcast. `x * (1 + scale) + shift` and the gated residuals are single `addcmul`s.
* Norms call the fused kernels on the input dtype (they compute in float32 internally, as the official
  explicit upcasts do); the Plücker fold + projection runs as a 2x2 stride-2 convolution over frames.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from worldstream.data.actions import NULL_KEYBOARD, NULL_MOUSE
from worldstream.model.action import ActionConfig, ActionModule, clip_latents_for_rows
from worldstream.model.attention import Rope3D, RopeOverflow, apply_rope, attention, rope_pair_split

# oneDNN fused Linear + pointwise op (present in CPU builds with mkldnn; see `feed_forward`)
_HAS_LINEAR_POINTWISE = (
    torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
)

__all__ = ["ActionConfig", "DiTConfig", "WorldDiT", "MG3_5B", "NANO", "SMALL", "PRESETS", "preset"]


@dataclass(frozen=True)
class DiTConfig:
    """DiT hyper-parameters; official constructor names where one exists (see `from_official`)."""

    in_dim: int  # latent channels in (Wan2.2 VAE z_dim 48)
    out_dim: int  # latent channels out (= in_dim)
    dim: int  # model width
    ffn_dim: int  # FFN hidden width
    num_heads: int  # self/cross-attention heads
    num_layers: int  # blocks
    text_dim: int  # text encoder width (umT5-XXL 4096, MiniLM 384)
    text_len: int  # text rows after zero-padding (all attended, padding included)
    action: ActionConfig | None  # action module settings (None = no action modules)
    patch_size: tuple[int, int, int] = (
        1,
        2,
        2,
    )  # (t, h, w) latent patch; t must be 1 (per-latent RoPE/memory)
    freq_dim: int = 256  # sinusoidal timestep width
    timestep_base: float = 10000.0  # sinusoid frequencies base^(-j/half)
    eps: float = 1e-6  # LayerNorm / RMSNorm eps
    qk_norm: bool = True  # RMSNorm on q, k (full width, learned weight)
    cross_attn_norm: bool = True  # norm3 is an affine LayerNorm (else identity)
    sigma_theta: float = 0.0  # head-wise RoPE jitter (official constructor default 0; MG3 5B uses 0.8)
    rope_theta: float = 10000.0  # RoPE base before jitter (Wan)
    rope_max_positions: int = 2048  # official RoPE table length per axis (use_memory)
    rope_overflow: RopeOverflow = "error"  # positions >= rope_max_positions: "error" or "extend" (ours)
    camera_block: int = 16  # Plücker pixel block per latent pixel (VAE spatial stride; official 16)
    camera_ray_channels: int = 6  # [o_x, o_y, o_z, d_x, d_y, d_z] per pixel (facts 4.6)

    def __post_init__(self):
        def bad(msg: str):
            raise ValueError(f"DiTConfig: {msg}")

        if self.dim % self.num_heads:
            bad(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        rope_pair_split(self.head_dim)  # even head_dim
        if tuple(self.patch_size)[0] != 1:
            bad(f"patch_size[0] must be 1 (one RoPE position per latent), not {self.patch_size}")
        if self.rope_overflow not in ("error", "extend"):
            bad(f"rope_overflow must be 'error' or 'extend', got {self.rope_overflow!r}")
        if self.action is not None:
            a = self.action
            if a.img_hidden_size != self.dim:
                bad(f"action.img_hidden_size={a.img_hidden_size} != dim={self.dim}")
            if tuple(a.patch_size) != tuple(self.patch_size):
                bad(f"action.patch_size={a.patch_size} != patch_size={self.patch_size}")
            if any(not 0 <= b < self.num_layers for b in a.blocks):
                bad(f"action.blocks={a.blocks} outside 0..{self.num_layers - 1}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rope_pairs(self) -> tuple[int, int, int]:
        """Complex RoPE pairs per head for (t, h, w)."""
        return rope_pair_split(self.head_dim)

    @property
    def patch_volume(self) -> int:
        return math.prod(self.patch_size)

    @property
    def plucker_channels(self) -> int:
        """Channels of the Plücker map per latent pixel: 6 * 16 * 16 = 1536 officially."""
        return self.camera_ray_channels * self.camera_block**2

    @property
    def camera_token_features(self) -> int:
        """Input width of `patch_embedding_wancamctrl` (6144 officially)."""
        return self.plucker_channels * self.patch_volume

    @property
    def head_out_features(self) -> int:
        return self.out_dim * self.patch_volume

    @property
    def action_blocks(self) -> frozenset[int]:
        return frozenset(self.action.blocks) if self.action is not None else frozenset()

    # ---- official constructor kwargs <-> DiTConfig -------------------------------------------------

    @classmethod
    def from_official(cls, kw: dict[str, Any], **overrides) -> DiTConfig:
        """Map `WanModel(**kw)` constructor kwargs (golden `constructor_kwargs` or a diffusers config)."""
        kw = {k: v for k, v in kw.items() if not k.startswith("_") and k not in OFFICIAL_IGNORED}
        if tuple(kw.pop("window_size", (-1, -1))) != (-1, -1):
            raise ValueError("DiTConfig.from_official: only global attention (window_size (-1, -1)) works")
        if not kw.pop("use_memory", True):
            raise ValueError("DiTConfig.from_official: use_memory=False is not supported (MG3 uses memory)")
        action = None
        if action_kw := kw.pop("action_config", None):
            action_kw = {k: tuple(v) if isinstance(v, list) else v for k, v in action_kw.items()}
            action_kw.pop("local_attn_size", None)  # official kwarg, unused by the module
            unknown = sorted(set(action_kw) - {f.name for f in fields(ActionConfig)})
            if unknown:
                raise ValueError(f"DiTConfig.from_official: unknown action_config kwargs {unknown}")
            action = ActionConfig(**action_kw)
        unknown = sorted(set(kw) - set(OFFICIAL_FIELDS))
        if unknown:
            raise ValueError(f"DiTConfig.from_official: unknown constructor kwargs {unknown}")
        args = {**OFFICIAL_DEFAULTS, **kw, **overrides}
        args["patch_size"] = tuple(args["patch_size"])
        return cls(action=action, **args)

    @classmethod
    def from_json(cls, path: str | Path, **overrides) -> DiTConfig:
        """Read a golden `dit_tiny_config.json` (uses `constructor_kwargs`) or an official config.json."""
        data = json.loads(Path(path).read_text())
        return cls.from_official(data.get("constructor_kwargs", data), **overrides)

    def to_official(self) -> dict[str, Any]:
        """Official constructor kwargs (for an official-layout config.json); our extra fields are dropped."""
        out: dict[str, Any] = {k: getattr(self, k) for k in OFFICIAL_FIELDS}
        out.update(model_type="ti2v", patch_size=list(self.patch_size), window_size=[-1, -1], use_memory=True)
        if self.action is not None:
            a = {k: v for k, v in asdict(self.action).items() if k not in ACTION_OURS}
            out["action_config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in a.items()}
        return out


# official WanModel constructor kwargs we map 1:1 (facts 1.2)
OFFICIAL_FIELDS = ("in_dim", "out_dim", "dim", "ffn_dim", "num_heads", "num_layers", "text_dim", "text_len",
                   "patch_size", "freq_dim", "eps", "qk_norm", "cross_attn_norm", "sigma_theta")
# accepted, no behavioural effect (facts 1.2); diffusers bookkeeping keys ("_class_name", ...) are skipped too
OFFICIAL_IGNORED = ("model_type", "use_text_crossattn", "is_action_model")
# Wan constructor defaults for kwargs a config.json may omit (patch_size and text_dim are not stored)
OFFICIAL_DEFAULTS = dict(patch_size=(1, 2, 2), text_dim=4096, text_len=512, freq_dim=256, eps=1e-6,
                         qk_norm=True, cross_attn_norm=True, sigma_theta=0.0)
ACTION_OURS = ("action_norm_weight", "norm_eps", "mouse_mlp_eps")  # ActionConfig fields, no official kwarg


########################################################################################################
# Layers


class RMSNorm(nn.Module):
    """Wan RMSNorm: normalise in float32, cast back, times the learned weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm normalises bf16 input in float32 and rounds once: bit-identical to the explicit upcast
        return F.rms_norm(x, x.shape[-1:], eps=self.eps) * self.weight


class FP32LayerNorm(nn.LayerNorm):
    """Wan LayerNorm: computed in float32 (affine parameters too), cast back.

    NOTE the kernels already compute a bf16 layer norm (affine included) in float32 and round once: the same
    math as the explicit upcast up to the summation order (1 bf16 ulp on ~0.003% of values), without two
    copies. Other input dtypes keep the explicit upcast.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        same_dtype = self.weight is None or self.weight.dtype == x.dtype
        if x.dtype in (torch.float32, torch.bfloat16) and same_dtype:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


def sinusoidal_embedding(t: torch.Tensor, dim: int, base: float) -> torch.Tensor:
    """t [...] -> [..., dim] float64 = [cos(t f_j), sin(t f_j)], f_j = base^(-j/half) (cos first)."""
    half = dim // 2
    freqs = torch.pow(base, -torch.arange(half, dtype=torch.float64, device=t.device).div(half))
    ang = t.to(torch.float64)[..., None] * freqs
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=-1)


@dataclass
class TimeEmbedding:
    """The per-token time conditioning, stored once per distinct timestep (ours; official: per token).

    A clip's tokens carry a handful of distinct t (0 for memory, clean prefix and padding; the noisy frames'
    t), so the float64 sinusoid and the MLPs run on those few values and `index` maps tokens to rows. The
    per-token values are the official ones (same inputs, same layers).
    """

    e: torch.Tensor  # [U, dim] time_embedding output per distinct t
    e0: torch.Tensor  # [U, 6, dim] time_projection output
    index: torch.Tensor  # [B, L] long: token -> row

    def modulation(self, table: torch.Tensor, scales: Sequence[int]) -> tuple[torch.Tensor, ...]:
        """table [U, k, C] -> k vectors [B|1, L|1, C]; rows listed in `scales` become (1 + row).

        Adding the 1 before the gather is exact: it is the same float add per distinct t.
        """
        U, k, C = table.shape
        one = torch.tensor([float(i in scales) for i in range(k)], dtype=table.dtype, device=table.device)
        rows = table + one[:, None]  # [U, k, C]
        if U == 1:
            return rows[None].unbind(2)  # k x [1, 1, C]
        # one contiguous row copy per token (index_select is ~5x faster than advanced indexing here)
        per_token = rows.reshape(U, k * C).index_select(0, self.index.reshape(-1))  # [B*L, k*C]
        return per_token.view(*self.index.shape, k, C).unbind(2)  # k x [B, L, C]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale_plus_one: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift as one op, with (1 + scale) precomputed (`TimeEmbedding.modulation`)."""
    return torch.addcmul(shift, x, scale_plus_one)


def _fused_linear_gelu_ok(x: torch.Tensor, layer: nn.Module) -> bool:
    """True where oneDNN's Linear+GELU(tanh) kernel applies: CPU, no autograd, one float dtype."""
    return (
        _HAS_LINEAR_POINTWISE and x.device.type == "cpu" and type(layer) is nn.Linear
        and x.dtype in (torch.float32, torch.bfloat16) and layer.weight.dtype == x.dtype
        and not (torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad))
    )


def feed_forward(ffn: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The official `ffn` = Sequential(Linear, GELU(tanh), Linear) on x [B, L, C].

    NOTE on CPU without autograd the first Linear and the GELU run as one oneDNN call (the kernel torch's
    inductor uses for this fusion): eager GELU(tanh) alone costs more than the GEMM here (~1.2 ms for
    600 x 1024 on one core vs ~0.3 ms for the bf16 GEMM). Same float32 math; autograd takes the plain path.
    """
    up, act, down = ffn
    if _fused_linear_gelu_ok(x, up) and isinstance(act, nn.GELU) and act.approximate == "tanh":
        h = torch.ops.mkldnn._linear_pointwise(x, up.weight, up.bias, "gelu", [], "tanh")
    else:
        h = act(up(x))
    return down(h)


class SelfAttention(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(cfg.dim, cfg.dim) for _ in range(4))
        self.norm_q = RMSNorm(cfg.dim, cfg.eps) if cfg.qk_norm else nn.Identity()
        self.norm_k = RMSNorm(cfg.dim, cfg.eps) if cfg.qk_norm else nn.Identity()
        # seam: (q, k, v [B, L, H, D], valid keys) -> [B, L, H, D]; parallel/sequence.py swaps in Ulysses
        self.attn_fn = attention

    def forward(self, x: torch.Tensor, freqs: torch.Tensor, valid: int | None) -> torch.Tensor:
        """x [B, L, C], freqs [L, H', D/2] (pads: identity), valid = unpadded length -> [B, L, C]."""
        n = self.num_heads
        q = apply_rope(rearrange(self.norm_q(self.q(x)), "b l (n d) -> b l n d", n=n), freqs)
        k = apply_rope(rearrange(self.norm_k(self.k(x)), "b l (n d) -> b l n d", n=n), freqs)
        v = rearrange(self.v(x), "b l (n d) -> b l n d", n=n)
        return self.o(rearrange(self.attn_fn(q, k, v, valid), "b l n d -> b l (n d)"))


class CrossAttention(nn.Module):
    """Text cross-attention: no RoPE, no mask (all text_len rows, padding rows included)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(cfg.dim, cfg.dim) for _ in range(4))
        self.norm_q = RMSNorm(cfg.dim, cfg.eps) if cfg.qk_norm else nn.Identity()
        self.norm_k = RMSNorm(cfg.dim, cfg.eps) if cfg.qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x [B, L, C], context [B, text_len, C] -> [B, L, C]."""
        n = self.num_heads
        q = rearrange(self.norm_q(self.q(x)), "b l (n d) -> b l n d", n=n)
        k = rearrange(self.norm_k(self.k(context)), "b l (n d) -> b l n d", n=n)
        v = rearrange(self.v(context), "b l (n d) -> b l n d", n=n)
        return self.o(rearrange(attention(q, k, v), "b l n d -> b l (n d)"))


@dataclass
class ActionInputs:
    """Per-forward action conditions handed to the blocks that own an action module."""

    frames: int  # latent frames incl. memory (T)
    valid: int  # valid tokens (T * tokens per frame)
    mouse_cond: torch.Tensor  # [B, N, 2]
    keyboard_cond: torch.Tensor  # [B, N, 6]
    mouse_cond_memory: torch.Tensor | None  # [B, M, 2]
    keyboard_cond_memory: torch.Tensor | None  # [B, M, 6]


def action_on_valid(
    module: nn.Module, x: torch.Tensor, valid: int, actions: ActionInputs
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The action module on the first `valid` tokens of x [B, L, C]; padding tokens pass through.

    Returns (x with the valid tokens replaced, action input [B, valid, C], action output [B, valid, C]).
    """
    a_in = x[:, :valid]
    a_out = module(a_in, actions.frames, actions.mouse_cond, actions.keyboard_cond,
                   actions.mouse_cond_memory, actions.keyboard_cond_memory)
    x = torch.cat([a_out, x[:, valid:]], dim=1) if valid < x.shape[1] else a_out
    return x, a_in, a_out


class DiTBlock(nn.Module):
    """NOTE registration order (modulation, self_attn, action_model, norm3, cross_attn, ffn, cam_*) is the
    official state_dict order."""

    def __init__(self, cfg: DiTConfig, index: int):
        super().__init__()
        self.index = index
        d = cfg.dim
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d**0.5)
        self.norm1 = FP32LayerNorm(d, cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(cfg)
        if index in cfg.action_blocks:
            self.action_model = ActionModule(cfg.action)
        self.norm3 = FP32LayerNorm(d, cfg.eps) if cfg.cross_attn_norm else nn.Identity()  # affine
        self.cross_attn = CrossAttention(cfg)
        self.norm2 = FP32LayerNorm(d, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU("tanh"), nn.Linear(cfg.ffn_dim, d))
        self.cam_injector_layer1 = nn.Linear(d, d)
        self.cam_injector_layer2 = nn.Linear(d, d)
        self.cam_scale_layer = nn.Linear(d, d)
        self.cam_shift_layer = nn.Linear(d, d)
        # seam: (action_model, x, valid, actions) -> (x, a_in, a_out); sequence parallel gathers the tokens
        self.action_fn = action_on_valid

    def forward(self, x: torch.Tensor, temb: TimeEmbedding, context: torch.Tensor, cam: torch.Tensor | None,
                freqs: torch.Tensor, valid: int, actions: ActionInputs | None,
                capture: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """x [B, L, C], temb (e0 [U, 6, C]), context [B, text_len, C], cam [B, L, C] | None -> [B, L, C]."""
        cap = capture if capture is not None else {}
        name = f"block{self.index}_"
        # modulation + e0 per distinct t, then per token: 6 x [B|1, L|1, C] (scales already 1 + scale)
        mod = temb.modulation(self.modulation[0] + temb.e0, scales=(1, 4))
        shift_msa, scale_msa, gate_msa, shift_ffn, scale_ffn, gate_ffn = mod

        # 1. self-attention on the modulated LayerNorm, gated residual (keys at index >= valid are padding)
        y = self.self_attn(modulate(self.norm1(x), shift_msa, scale_msa), freqs, valid)
        x = torch.addcmul(x, y, gate_msa)
        cap[name + "self_attn_out"] = y

        # 2. camera injection: x = (1 + scale(c)) * x + shift(c), c = MLP(P) + P
        if cam is not None:
            c = self.cam_injector_layer2(F.silu(self.cam_injector_layer1(cam))) + cam
            x = modulate(x, self.cam_shift_layer(c), 1 + self.cam_scale_layer(c))

        # 3. cross-attention with the re-normalised residual: x = norm3(x); x = x + cross(x)
        x = self.norm3(x)
        y = self.cross_attn(x, context)
        x = x + y
        cap[name + "cross_attn_out"] = y

        # 4. action module on the valid tokens (memory + clip); padding untouched
        if hasattr(self, "action_model") and actions is not None:
            x, a_in, a_out = self.action_fn(self.action_model, x, valid, actions)
            cap[name + "action_in"], cap[name + "action_out"] = a_in, a_out

        # 5. FFN on the modulated LayerNorm, gated residual
        x = torch.addcmul(x, feed_forward(self.ffn, modulate(self.norm2(x), shift_ffn, scale_ffn)), gate_ffn)
        cap[name + "out"] = x
        return x


class Head(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm = FP32LayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)
        self.head = nn.Linear(cfg.dim, cfg.head_out_features)

    def forward(self, x: torch.Tensor, temb: TimeEmbedding) -> torch.Tensor:
        """x [B, L, C], temb (its e [U, C]: the time embedding, not e0) -> [B, L, pt*ph*pw*out_dim]."""
        shift, scale = temb.modulation(self.modulation[0] + temb.e[:, None], scales=(1,))
        return self.head(modulate(self.norm(x), shift, scale))


########################################################################################################
# Model


@dataclass
class _Grid:
    """Validated call geometry."""

    B: int
    M: int  # memory latent frames
    F: int  # clip latent frames
    h: int  # token grid height
    w: int  # token grid width
    seq_len: int
    t_positions: list[int] = field(default_factory=list)  # RoPE temporal index per token frame (memory first)

    @property
    def S(self) -> int:
        return self.h * self.w

    @property
    def valid(self) -> int:
        return (self.M + self.F) * self.S


def _shape_error(name: str, layout: str, expected: Sequence[int | None], got: torch.Tensor | Sequence[int]):
    want = ", ".join("*" if e is None else str(e) for e in expected)
    given = list(got.shape) if isinstance(got, torch.Tensor) else list(got)
    return ValueError(f"{name}: expected shape [{layout}] = [{want}], got {given}")


def _expect(name: str, t: torch.Tensor | None, layout: str, expected: Sequence[int | None]) -> None:
    if t is None:
        raise ValueError(f"{name}: required, expected a tensor [{layout}]")
    if t.ndim != len(expected) or any(e is not None and s != e for s, e in zip(t.shape, expected)):
        raise _shape_error(name, layout, expected, t)


class WorldDiT(nn.Module):
    """MG3 DiT (`WanModel` with use_memory). See the module docstring; call convention = official."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.patch_embedding_wancamctrl = nn.Linear(cfg.camera_token_features, d)
        self.c2ws_hidden_states_layer1 = nn.Linear(d, d)
        self.c2ws_hidden_states_layer2 = nn.Linear(d, d)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d)
        )
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList([DiTBlock(cfg, i) for i in range(cfg.num_layers)])
        self.head = Head(cfg)
        # NOTE not a buffer (the official state dict has none); frequencies are computed per call
        self.rope = Rope3D(cfg.head_dim, cfg.num_heads, cfg.rope_theta, cfg.sigma_theta,
                           cfg.rope_max_positions, cfg.rope_overflow)
        # seams over the token axis (identity here; parallel/sequence.py shards it across ranks):
        # (tokens, temb, cam, freqs) -> this rank's tokens, and head output -> all tokens
        self.shard_tokens = _all_tokens
        self.gather_tokens = _identity

    def init_weights(self) -> None:
        """Official training init: xavier linears/patch conv, zero biases, normal(0.02) text/time MLPs,
        zero head and action output projections, zero camera scale/shift."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        nn.init.zeros_(self.patch_embedding.bias)
        for seq in (self.text_embedding, self.time_embedding):
            for m in seq:
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)
        for block in self.blocks:
            for layer in (block.cam_scale_layer, block.cam_shift_layer):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
            if hasattr(block, "action_model"):
                for name in ("proj_mouse", "proj_keyboard"):
                    if hasattr(block.action_model, name):
                        nn.init.zeros_(getattr(block.action_model, name).weight)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------------------------------------
    def _check_inputs(
        self, *, x, t, context, seq_len, mouse_cond, keyboard_cond, plucker_emb, x_memory, timestep_memory,
        mouse_cond_memory, keyboard_cond_memory, memory_latent_idx, predict_latent_idx,
) -> _Grid:
        cfg = self.cfg
        _, ph, pw = cfg.patch_size
        if not isinstance(x, torch.Tensor) or x.ndim != 5 or x.shape[1] != cfg.in_dim:
            given = x.shape if isinstance(x, torch.Tensor) else [type(x).__name__]
            raise _shape_error("x", "B, C, F, H, W", (None, cfg.in_dim, None, None, None), given)
        B, _, F_clip, H, W = x.shape
        if H % ph or W % pw:
            raise ValueError(f"x: latent H, W = {H}, {W} must be divisible by the patch {ph}x{pw}")
        h, w = H // ph, W // pw
        M = 0
        if x_memory is not None:
            _expect("x_memory", x_memory, "B, C, M, H, W", (B, cfg.in_dim, None, H, W))
            M = x_memory.shape[2]
            if timestep_memory is not None:
                _expect("timestep_memory", timestep_memory, "B, M*h*w", (B, M * h * w))
            if memory_latent_idx is None or len(memory_latent_idx) != M:
                raise ValueError(
                    f"memory_latent_idx: expected {M} latent indices (one per memory frame), "
                    f"got {memory_latent_idx}"
                )
            if predict_latent_idx is None:
                raise ValueError(
                    "predict_latent_idx: required with memory (absolute latent range of the clip)"
                )
        elif any(
            a is not None
            for a in (timestep_memory, mouse_cond_memory, keyboard_cond_memory, memory_latent_idx)
        ):
            raise ValueError("memory conditions given without x_memory")
        if t.ndim == 2:
            _expect("t", t, "B, F*h*w", (B, F_clip * h * w))
        else:
            _expect("t", t, "B", (B,))
        if isinstance(context, torch.Tensor):
            _expect("context", context, "B, L, text_dim", (B, None, cfg.text_dim))
        elif len(context) != B:
            raise ValueError(f"context: expected a list of {B} tensors [L, text_dim], got {len(context)}")
        for i, c in enumerate(context):
            _expect(f"context[{i}]", c, "L, text_dim", (None, cfg.text_dim))
            if c.shape[0] > cfg.text_len:
                raise ValueError(f"context[{i}]: {c.shape[0]} rows exceed text_len={cfg.text_len}")
        valid = (M + F_clip) * h * w
        seq_len = valid if seq_len is None else int(seq_len)
        if seq_len < valid:
            raise ValueError(
                f"seq_len={seq_len} is shorter than the {valid} valid tokens "
                f"({M} memory + {F_clip} clip frames x {h * w} tokens)"
            )
        if plucker_emb is not None:
            _expect(
                "plucker_emb", plucker_emb, "B, 6*b*b, M+F, H, W", (B, cfg.plucker_channels, M + F_clip, H, W)
            )
        if cfg.action is not None:
            _expect("mouse_cond", mouse_cond, "B, N, mouse_dim_in", (B, None, cfg.action.mouse_dim_in))
            N = mouse_cond.shape[1]
            _expect(
                "keyboard_cond", keyboard_cond, "B, N, keyboard_dim_in", (B, N, cfg.action.keyboard_dim_in)
            )
            try:
                n_feats = clip_latents_for_rows(N, cfg.action.vae_time_compression_ratio)
            except ValueError as e:
                raise ValueError(f"mouse_cond/keyboard_cond: {e}") from None
            if n_feats != F_clip:
                raise ValueError(
                    f"mouse_cond/keyboard_cond: {N} action rows group into {n_feats} latents, "
                    f"but x has {F_clip} clip frames"
                )
            if mouse_cond_memory is not None:
                _expect("mouse_cond_memory", mouse_cond_memory, "B, M, 2", (B, M, cfg.action.mouse_dim_in))
            if keyboard_cond_memory is not None:
                kb_shape = (B, M, cfg.action.keyboard_dim_in)
                _expect("keyboard_cond_memory", keyboard_cond_memory, "B, M, 6", kb_shape)
        start, end = (0, F_clip) if predict_latent_idx is None else (int(v) for v in predict_latent_idx)
        if end - start != F_clip:
            raise ValueError(
                f"predict_latent_idx=({start}, {end}) covers {end - start} latents, x has {F_clip}"
            )
        t_positions = [int(i) for i in (memory_latent_idx or [])] + list(range(start, end))
        return _Grid(B, M, F_clip, h, w, seq_len, t_positions)

    def _camera_tokens(self, plucker: torch.Tensor, pad: int) -> torch.Tensor:
        """`patch_embedding_wancamctrl` on the token fold: plucker [B, 6*b*b, F, H, W] -> [B, F*h*w + pad, D].

        The fold `c (f p1) (h p2) (w p3) -> (f h w) (c p1 p2 p3)` followed by the Linear is a (ph, pw)-stride
        convolution per frame (p1 = 1) with the Linear weight viewed [dim, c, ph, pw]: the same sums without
        the 8-axis copy. Padding tokens are zero rows in the official fold, so they project to the bias.
        """
        _, ph, pw = self.cfg.patch_size
        B, C = plucker.shape[:2]
        proj = self.patch_embedding_wancamctrl
        frames = rearrange(plucker, "b c f h w -> (b f) c h w")
        weight = proj.weight.reshape(-1, C, ph, pw)  # [dim, c, ph, pw]: the (c p2 p3) feature order
        out = F.conv2d(frames, weight, proj.bias, stride=(ph, pw))  # [(B F), dim, h, w]
        out = rearrange(out, "(b f) d h w -> b (f h w) d", b=B)  # [B, valid, dim]
        if pad:
            out = torch.cat([out, proj.bias.expand(B, pad, -1)], dim=1)
        return out

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: Sequence[torch.Tensor] | torch.Tensor,
        seq_len: int | None = None,
        mouse_cond: torch.Tensor | None = None,
        keyboard_cond: torch.Tensor | None = None,
        plucker_emb: torch.Tensor | None = None,
        x_memory: torch.Tensor | None = None,
        timestep_memory: torch.Tensor | None = None,
        mouse_cond_memory: torch.Tensor | None = None,
        keyboard_cond_memory: torch.Tensor | None = None,
        memory_latent_idx: Sequence[int] | None = None,
        predict_latent_idx: tuple[int, int] | None = None,
        return_memory: bool = False,
        capture: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Denoiser output for the clip frames.

        x [B, C, F, H, W] clip latents; t [B, F*h*w] per-token timesteps (or [B], broadcast over the clip);
        context: list of B [L, text_dim] (or [B, L, text_dim]), zero-padded to text_len;
        seq_len: pad the token axis to this length (default: no padding);
        mouse_cond [B, N, 2], keyboard_cond [B, N, 6] pixel-frame actions of the clip (N = 1+4F or 4F);
        plucker_emb [B, 6*b*b, M+F, H, W] (memory maps first) or None (no camera injection);
        x_memory [B, C, M, H, W], timestep_memory [B, M*h*w] (default 0 = clean), mouse/keyboard_cond_memory
        [B, M, *] (default: the official null actions +1 / -1), memory_latent_idx (M absolute latent indices),
        predict_latent_idx (start, end) absolute latent range of the clip (default (0, F) without memory).
        Returns [B, out_dim, F, H, W]; with return_memory, (memory frames [B, out_dim, M, H, W], that).
        `capture`, if given, receives the golden intermediate tensors (dit_tiny_intermediates names).
        """
        cfg = self.cfg
        g = self._check_inputs(
            x=x, t=t, context=context, seq_len=seq_len, mouse_cond=mouse_cond, keyboard_cond=keyboard_cond,
            plucker_emb=plucker_emb, x_memory=x_memory, timestep_memory=timestep_memory,
            mouse_cond_memory=mouse_cond_memory, keyboard_cond_memory=keyboard_cond_memory,
            memory_latent_idx=memory_latent_idx, predict_latent_idx=predict_latent_idx,
        )
        cap = capture if capture is not None else {}
        dtype, dev = self.patch_embedding.weight.dtype, self.patch_embedding.weight.device
        pad = g.seq_len - g.valid

        # 1. memory first: latents, per-token timesteps (memory is clean: t = 0) and null memory actions
        t = t[:, None].expand(-1, g.F * g.S) if t.ndim == 1 else t  # [B, F*S]
        if g.M:
            x = torch.cat([x_memory, x], dim=2)  # [B, C, M+F, H, W]
            t_mem = timestep_memory if timestep_memory is not None else t.new_zeros(g.B, g.M * g.S)
            t = torch.cat([t_mem, t], dim=1)  # [B, (M+F)*S]
            if cfg.action is not None and mouse_cond_memory is None:
                mouse_cond_memory = mouse_cond.new_full((g.B, g.M, cfg.action.mouse_dim_in), NULL_MOUSE)
            if cfg.action is not None and keyboard_cond_memory is None:
                kb_shape = (g.B, g.M, cfg.action.keyboard_dim_in)
                keyboard_cond_memory = keyboard_cond.new_full(kb_shape, NULL_KEYBOARD)

        # 2. patch embedding -> frame-major tokens, zero-padded to seq_len
        xe = self.patch_embedding(x.to(dev, dtype))  # [B, dim, M+F, h, w]
        tokens = F.pad(rearrange(xe, "b c f h w -> b (f h w) c"), (0, 0, 0, pad))  # [B, seq, dim]

        # 3. per-token timestep embedding (float64 sinusoid, cos first; pads get t = 0), run per distinct t
        t = F.pad(t.to(dev), (0, pad))  # [B, seq]
        t_rows, index = torch.unique(t, return_inverse=True)  # [U], [B, seq]
        sin = sinusoidal_embedding(t_rows, cfg.freq_dim, cfg.timestep_base)  # [U, freq_dim] float64
        e = self.time_embedding(sin.to(dtype))  # [U, dim]
        e0 = self.time_projection(e)  # [U, 6*dim]
        temb = TimeEmbedding(e, rearrange(e0, "u (six c) -> u six c", six=6), index)
        cap["patch_embedding_out"] = xe
        if capture is not None:
            cap.update(time_embedding_out_e=e[index], time_projection_out_e0=e0[index])  # [B, seq, *]

        # 4. text: zero-pad every context to text_len rows, then the MLP
        ctx = torch.stack([F.pad(c, (0, 0, 0, cfg.text_len - c.shape[0])) for c in context]).to(dev, dtype)
        ctx = self.text_embedding(ctx)  # [B, text_len, dim]
        cap["text_embedding_out"] = ctx

        # 5. camera: fold the Plücker map per token (c, pt, ph, pw order), pad, project, residual MLP
        pt, ph, pw = cfg.patch_size
        cam = None
        if plucker_emb is not None:
            cam = self._camera_tokens(plucker_emb.to(dev, dtype), pad)  # [B, seq, dim]
            cam = cam + self.c2ws_hidden_states_layer2(F.silu(self.c2ws_hidden_states_layer1(cam)))
            cap["plucker_hidden_P"] = cam

        # 6. RoPE: absolute latent indices (memory_latent_idx, then range(*predict_latent_idx)); pads identity
        freqs = self.rope.freqs(g.t_positions, g.h, g.w, pad=pad, device=dev)  # [seq, H', D/2] (cached)

        # 7. blocks (on this rank's slice of the token axis under sequence parallelism)
        actions = None
        if cfg.action is not None:
            actions = ActionInputs(g.M + g.F, g.valid, mouse_cond.to(dev), keyboard_cond.to(dev),
                                   _to(mouse_cond_memory, dev), _to(keyboard_cond_memory, dev))
        tokens, temb, cam, freqs = self.shard_tokens(tokens, temb, cam, freqs)
        for block in self.blocks:
            tokens = block(tokens, temb, ctx, cam, freqs, g.valid, actions, capture)

        # 8. head (modulated by e, not e0), back to all tokens
        out = self.gather_tokens(self.head(tokens, temb))  # [B, seq, pt*ph*pw*out_dim]
        cap["head_out"] = out

        # 9. unpatchify the valid tokens (per-token outputs ordered (dy, dx, c)); split memory / clip frames
        unfold = "b (f h w) (p1 p2 p3 c) -> b c (f p1) (h p2) (w p3)"
        out = rearrange(out[:, : g.valid], unfold, f=g.M + g.F, h=g.h, w=g.w, p1=pt, p2=ph, p3=pw)
        if return_memory:
            return out[:, :, : g.M], out[:, :, g.M :]  # [B, out_dim, M, H, W], [B, out_dim, F, H, W]
        return out[:, :, g.M :]  # [B, out_dim, F, H, W]


def _to(t: torch.Tensor | None, device) -> torch.Tensor | None:
    return None if t is None else t.to(device)


def _all_tokens(*per_token):
    return per_token


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


########################################################################################################
# Presets


def _mg3_action(blocks: Sequence[int], dim: int) -> ActionConfig:
    return ActionConfig(
        blocks=tuple(blocks),  # facts 1.3: first 15 of 30 blocks
        heads_num=16,  # 1024 / 16 = 64 per head
        hidden_size=128,  # keyboard embedding width
        img_hidden_size=dim,
        keyboard_hidden_dim=1024,
        mouse_hidden_dim=1024,
    )


MG3_5B = DiTConfig(
    in_dim=48,  # Wan2.2 VAE z_dim (facts 1.2)
    out_dim=48,
    dim=3072,  # Wan2.2-TI2V-5B width
    ffn_dim=14336,
    num_heads=24,  # head_dim 128 -> RoPE pairs 22/21/21
    num_layers=30,
    text_dim=4096,  # umT5-XXL
    text_len=512,  # official config text_len
    action=_mg3_action(range(15), 3072),
    sigma_theta=0.8,  # third-party configs (facts 1.2); thetas 2000..18000 over 24 heads
    camera_block=16,  # VAE stride 16 -> 1536-channel Plücker map, 6144 per token (hard-coded officially)
)

# CPU real-time preset (SPEC "nano"): VAE stride (4, 8, 8) with 16 latent channels, MiniLM text.
NANO = DiTConfig(
    in_dim=16,  # nano VAE latent channels
    out_dim=16,
    dim=256,  # SPEC range 256-384; the low end keeps 3 steps x ~600 tokens real time on 2 cores
    ffn_dim=1024,  # 4x dim
    num_heads=4,  # head_dim 64 -> RoPE pairs 12/10/10
    num_layers=8,
    text_dim=384,  # all-MiniLM-L6-v2 width
    text_len=32,  # short prompts; MiniLM rows zero-padded to 32
    action=ActionConfig(
        blocks=tuple(range(4)),  # first half, as mg3_5b
        heads_num=2,  # head_dim 64 keeps the official RoPE dims [8, 28, 28]
        hidden_size=32,  # keyboard embedding (window 12 x 32 = 384)
        img_hidden_size=256,
        keyboard_hidden_dim=128,
        mouse_hidden_dim=128,
    ),
    sigma_theta=0.8,  # same recipe as mg3_5b
    camera_block=8,  # VAE stride 8 -> 6*8*8 = 384 channels, x4 = 1536 per token
)

# First real training run on one GPU (SPEC "small"): Wan2.2 VAE latents (stride 16), MiniLM text.
SMALL = DiTConfig(
    in_dim=48,  # Wan2.2 VAE / LightVAE latents (reuse the released VAE)
    out_dim=48,
    dim=896,  # "1024-ish": 1024 with the per-block camera layers (4 x dim^2) would exceed 300M params
    ffn_dim=3072,  # ~3.4x dim (Wan 5B: 4.67x); total 277.7M params
    num_heads=14,  # head_dim 64 -> RoPE pairs 12/10/10
    num_layers=16,
    text_dim=384,  # all-MiniLM-L6-v2 width
    text_len=64,
    action=ActionConfig(
        blocks=tuple(range(8)),  # first half, as mg3_5b
        heads_num=6,  # 384 / 6 = 64 per head keeps the official RoPE dims [8, 28, 28]
        hidden_size=64,  # keyboard embedding (window 12 x 64 = 768)
        img_hidden_size=896,
        keyboard_hidden_dim=384,
        mouse_hidden_dim=384,
    ),
    sigma_theta=0.8,  # same recipe as mg3_5b
    camera_block=16,  # VAE stride 16 -> 1536-channel Plücker map
)

PRESETS: dict[str, DiTConfig] = {"nano": NANO, "small": SMALL, "mg3_5b": MG3_5B}


def preset(name: str) -> DiTConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown DiT preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]
