"""INT8 attention projections (MG3 `--use_int8`): real int8 x int8 -> int32 GEMMs, or dequantised weights.

Source: facts section 7 (official `wan/modules/model.py::convert_model_to_int8` and the Triton kernels of
`wan/triton_kernels.py`, adapted from LightX2V); conformance vectors `int8_*` (golden README section 6).

Notable:
* Weights: symmetric, per output channel. scale_n = max|W_n,:| / 127 computed in float32 (clamped >= 1e-12),
  codes = clamp(round_half_even(W / scale), -128, 127). Stored as the buffers `weight_int8` [out, in] int8
  and `weight_scales` [out] (float32 after conversion; a later `model.to(torch.bfloat16)` turns them bf16,
  exactly as in the official runtime manifest `mg3_dit_5b_state_dict_int8_runtime.json`). `bias` stays a
  parameter.
* Activations: dynamic, symmetric, per token (row): m = max|x_row|, s_inv = 127/m (float32 division),
  codes = trunc(x * s_inv) -- **round toward zero**, the effective semantics of the official kernel (its
  "+0.5*sign" is cast to int8 before the add, so it adds 0, and the float -> int8 store truncates). No clamp
  is needed: |x * s_inv| <= 127 up to float32 rounding. The activation scale is float32(1 / s_inv).
* GEMM: `torch._int_mm` (int32 accumulation) on CPU and CUDA; the weights are never dequantised on this path.
  Epilogue: (float32(acc) * a_scale) * w_scale, in that order, stored in the output dtype, then + bias.
* `int8_linear_reference` is an explicit, slow reference (int64 matmul, same epilogue) for tests.
* Two ways to compute (`Int8Linear.compute`, `set_int8_compute`): "int8" = the W8A8 path above (the official
  Triton kernels; the golden vectors) and "dequant" = the official no-Triton fallback: weights dequantised to
  the activation dtype (codes * scales, rounded to that dtype) and a normal linear, activations unquantised.
  The dequantised weight is cached per layer (not saved; rebuilt when the codes, scales, dtype or device
  change), so "dequant" runs at bf16 speed with the int8 weights' quantisation error.

Speed notes (one CPU core with AMX, nano's 600 x 256 x 256): the bf16 linear takes ~0.08 ms and the int8
GEMM alone ~0.07 ms, so every other op of W8A8 is overhead. The activation max is taken on the raw bits
(sign bit cleared, integer max: exact, ~25x faster than `vector_norm(inf)`), the float -> int8 store
truncates by itself (C++ conversion semantics: no `trunc` pass), and the epilogue stays in plain
same-dtype ops (mixed int32 x float32 ops take ATen's slower, unvectorised path). W8A8 still costs 3-4x
a bf16 linear at nano (elementwise passes ~0.15 ms), hence "dequant" as the CPU default of sessions.

NOTE deviations from the official kernels (both documented, neither changes a conformant bf16 case):
* An all-zero activation row gives inf/NaN officially (m = 0). Here its scale is 1 and its codes 0, so the
  output row is exactly the bias.
* The official GEMM always stores bf16 before the bias add. Here the output dtype is the input dtype:
  identical for bf16 inputs (the pipeline), float32 inputs keep float32.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

INT8_MIN, INT8_MAX = -128, 127  # int8 code range; symmetric scales map max|.| to INT8_MAX
WEIGHT_SCALE_MIN = 1e-12  # official clamp of the per-channel weight scale (an all-zero weight row)
INT_MM_MAX_K = 2**31 // (128 * 128)  # int32 accumulation is exact while K * 128 * 128 < 2^31
# torch._int_mm shape rules on CUDA (aten `_int_mm_out_cuda`): M > 16, K and N multiples of 8. CPU has none.
CUDA_INT_MM_MIN_M, CUDA_INT_MM_MULTIPLE = 17, 8
DEFAULT_INT8_NAMES = ("q", "k", "v", "o")  # official rule: attribute name exactly one of these
# raw-bit masks that clear the sign bit: |x| as an integer whose order is the float order (exact row max)
_ABS_BITS: dict[torch.dtype, tuple[torch.dtype, int]] = {
    torch.bfloat16: (torch.int16, 0x7FFF), torch.float16: (torch.int16, 0x7FFF),
    torch.float32: (torch.int32, 0x7FFFFFFF)}

Int8Compute = Literal["int8", "dequant"]  # W8A8 int8 GEMM (official Triton path) | dequantised weights
INT8_COMPUTE_MODES: tuple[str, ...] = ("int8", "dequant")


####################################################################################################
# Quantisation primitives


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W [out, in] (any float dtype) -> (codes [out, in] int8, scales [out] float32), per output channel."""
    if weight.ndim != 2:
        raise ValueError(f"quantize_weight expects a 2-D weight [out, in], got shape {tuple(weight.shape)}")
    w = weight.float()
    scales = (w.abs().amax(dim=1) / INT8_MAX).clamp(min=WEIGHT_SCALE_MIN)  # (out,)
    codes = torch.round(w / scales[:, None]).clamp(INT8_MIN, INT8_MAX).to(torch.int8)  # half-to-even
    return codes, scales


def row_absmax(x2d: torch.Tensor) -> torch.Tensor:
    """max|x_row| of x [M, K] -> [M] float32, exact.

    bf16/fp16/fp32: the sign bit is cleared on the raw bits and the integer max taken (non-negative floats
    order like their bit patterns; a NaN row stays NaN); one integer pass instead of a float |x| temporary.
    """
    if x2d.dtype in _ABS_BITS:
        int_dtype, mask = _ABS_BITS[x2d.dtype]
        return x2d.view(int_dtype).bitwise_and(mask).amax(dim=1).view(x2d.dtype).float()
    return x2d.abs().amax(dim=1).float()


def quantize_activation(x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (codes [M, K] int8, scales [M] float32): dynamic per-token, round toward zero.

    NOTE an all-zero row gets scale 1 and codes 0 (the official kernel divides by zero there).
    """
    absmax = row_absmax(x2d)  # (M,)
    absmax = torch.where(absmax > 0, absmax, INT8_MAX)  # zero row -> s_inv = 1
    # NOTE a true float32 division: `127 / tensor` in torch is reciprocal-then-multiply (1 ulp off)
    s_inv = torch.full_like(absmax, INT8_MAX).div_(absmax)
    # float32 product, then the float -> int8 store, which truncates toward zero (C++ conversion semantics,
    # the kernel's effective rounding); |x * s_inv| <= 127 up to float32 rounding, so no clamp
    xf = x2d.to(torch.float32, copy=True)  # (M, K) working copy, multiplied in place
    codes = xf.mul_(s_inv[:, None]).to(torch.int8)
    return codes, torch.ones_like(s_inv).div_(s_inv)


def _pad_to(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    if t.shape == (rows, cols):
        return t
    return F.pad(t, (0, cols - t.shape[1], 0, rows - t.shape[0]))


def int8_gemm(a: torch.Tensor, b: torch.Tensor, pad: bool | None = None) -> torch.Tensor:
    """a [M, K] int8 @ b [K, N] int8 -> [M, N] int32, via `torch._int_mm`.

    `pad` zero-pads M/K/N to the CUDA shape rules (None: only on CUDA); zero rows/columns leave the product
    unchanged and are cut off again.
    """
    if a.dtype != torch.int8 or b.dtype != torch.int8:
        raise TypeError(f"int8_gemm expects int8 operands, got {a.dtype} and {b.dtype}")
    (m, k), (k2, n) = a.shape, b.shape
    if k != k2:
        raise ValueError(f"int8_gemm: inner sizes differ: a {tuple(a.shape)} vs b {tuple(b.shape)}")
    if k >= INT_MM_MAX_K:
        raise ValueError(f"int8_gemm: K={k} could overflow the int32 accumulator (max {INT_MM_MAX_K - 1})")
    if pad is None:
        pad = a.device.type == "cuda"
    if not pad:
        return torch._int_mm(a, b)
    mult = CUDA_INT_MM_MULTIPLE
    mp, kp, np_ = max(m, CUDA_INT_MM_MIN_M), -(-k // mult) * mult, -(-n // mult) * mult
    return torch._int_mm(_pad_to(a, mp, kp), _pad_to(b, kp, np_))[:m, :n]


def _epilogue(acc: torch.Tensor, a_scale: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
              out_dtype: torch.dtype) -> torch.Tensor:
    # (float32(acc) * a_scale) * w_scale in this order (golden `out_fp32_before_bf16_*` is exact with it);
    # explicit casts + in-place ops (mixed-dtype ops take a slower, unvectorised CPU path)
    out = acc.float().mul_(a_scale[:, None]).mul_(w_scale.float()[None, :]).to(out_dtype)
    if bias is not None:
        out = out.add_(bias.to(out_dtype))  # a bf16 add for bf16 outputs, as the official runtime
    return out


def int8_linear(x: torch.Tensor, weight_int8: torch.Tensor, weight_scales: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """Fast path. x [..., K] -> [..., N] in x.dtype; int8 GEMM, never dequantised weights."""
    lead, k = x.shape[:-1], x.shape[-1]
    if k != weight_int8.shape[1]:
        raise ValueError(f"int8_linear: input features {k} != weight in_features {weight_int8.shape[1]}")
    x2d = x.reshape(-1, k)  # (M, K)
    a_codes, a_scale = quantize_activation(x2d)
    acc = int8_gemm(a_codes, weight_int8.t())  # (M, N) int32
    out = _epilogue(acc, a_scale, weight_scales, bias, x.dtype)
    return out.reshape(*lead, weight_int8.shape[0])


def int8_linear_reference(x: torch.Tensor, weight_int8: torch.Tensor, weight_scales: torch.Tensor,
                          bias: torch.Tensor | None = None) -> torch.Tensor:
    """Slow reference of `int8_linear`: same quantisation, int64 matmul (exact), same epilogue."""
    lead, k = x.shape[:-1], x.shape[-1]
    a_codes, a_scale = quantize_activation(x.reshape(-1, k))
    acc = (a_codes.long() @ weight_int8.long().t()).to(torch.int32)
    return _epilogue(acc, a_scale, weight_scales, bias, x.dtype).reshape(*lead, weight_int8.shape[0])


####################################################################################################
# Module and conversion


class Int8Linear(nn.Module):
    """Drop-in for nn.Linear with int8 weights; state-dict names of the official INT8 runtime.

    `compute` ("int8" | "dequant", see the module docstring) is a runtime choice, not saved with the weights.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 compute: Int8Compute = "int8"):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        codes = torch.zeros(out_features, in_features, dtype=torch.int8, device=device)
        self.register_buffer("weight_int8", codes)
        self.register_buffer("weight_scales", torch.ones(out_features, dtype=torch.float32, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype or torch.float32, device=device))
        else:
            self.register_parameter("bias", None)
        self.compute = compute
        self._dequant_cache: tuple[tuple, torch.Tensor] | None = None  # (key, weight), "dequant" only

    @property
    def compute(self) -> Int8Compute:
        return self._compute

    @compute.setter
    def compute(self, mode: Int8Compute) -> None:
        if mode not in INT8_COMPUTE_MODES:
            raise ValueError(f"Int8Linear.compute must be one of {INT8_COMPUTE_MODES}, got {mode!r}")
        self._compute = mode
        self._dequant_cache = None

    @classmethod
    @torch.no_grad()
    def from_float(cls, linear: nn.Linear, compute: Int8Compute = "int8") -> Int8Linear:
        """Quantise an nn.Linear once (per output channel, float32 math); bias is copied as is."""
        w = linear.weight
        m = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device=w.device,
                dtype=w.dtype, compute=compute)
        codes, scales = quantize_weight(w)
        m.weight_int8 = codes
        m.weight_scales = scales
        if linear.bias is not None:
            m.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=linear.bias.requires_grad)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if self._compute == "dequant":
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return F.linear(x, self._cached_dequantized(x.dtype), bias)
        return int8_linear(x, self.weight_int8, self.weight_scales, self.bias)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear_reference(x, self.weight_int8, self.weight_scales, self.bias)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """codes * scales in `dtype` (rounded to it): the official no-Triton fallback's weight."""
        return (self.weight_int8.to(dtype) * self.weight_scales.to(dtype)[:, None])

    def _cached_dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """`dequantized_weight(dtype)`, rebuilt only when the codes or scales (tensor or contents) changed."""
        w, s = self.weight_int8, self.weight_scales
        # NOTE inference tensors carry no version counter: an in-place change to such codes (possible only
        # inside inference mode) goes unseen; `set_int8_compute` (or setting `compute`) drops the cache
        key = (dtype,) + tuple((t.data_ptr(), t.device, -1 if t.is_inference() else t._version)
                               for t in (w, s))
        if self._dequant_cache is None or self._dequant_cache[0] != key:
            # a normal tensor (usable with autograd later) unless the codes are inference tensors themselves
            with torch.inference_mode(w.is_inference()), torch.no_grad():
                self._dequant_cache = (key, self.dequantized_weight(dtype))
        return self._dequant_cache[1]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, scales={self.weight_scales.dtype}, compute={self._compute}")


def convert_to_int8(model: nn.Module, names: Iterable[str] = DEFAULT_INT8_NAMES,
                    compute: Int8Compute = "int8") -> nn.Module:
    """Replace, in place, every nn.Linear whose attribute name is exactly one of `names` by an Int8Linear.

    With the default names this is the official rule: self- and cross-attention q/k/v/o of every block
    (240 layers for mg3_5b). Works on meta-device models too (shapes/dtypes only). Returns `model`.
    """
    names = frozenset(names)
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if name in names and isinstance(child, nn.Linear)]
    for parent, name, child in targets:
        setattr(parent, name, Int8Linear.from_float(child, compute))
    return model


def set_int8_compute(model: nn.Module, compute: Int8Compute) -> int:
    """Set `compute` of every Int8Linear in `model` -> how many there are."""
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    for m in layers:
        m.compute = compute
    return len(layers)


def default_int8_compute(device: torch.device | str) -> Int8Compute:
    """The faster way on `device`: CUDA runs the W8A8 int8 GEMM; on CPUs (AMX/AVX-512 bf16) the
    elementwise passes of W8A8 cost more than the int8 GEMM saves, so the weights are dequantised."""
    return "int8" if torch.device(device).type == "cuda" else "dequant"


def count_int8_layers(model: nn.Module) -> int:
    return sum(isinstance(m, Int8Linear) for m in model.modules())


####################################################################################################
# Benchmark


@dataclass(frozen=True)
class Int8Bench:
    m: int
    k: int
    n: int
    bf16_seconds: float  # F.linear in bf16 (the unquantised runtime)
    int8_seconds: float  # full Int8Linear forward: activation quantisation + int8 GEMM + epilogue
    int8_gemm_seconds: float  # torch._int_mm alone

    @property
    def speedup(self) -> float:
        return self.bf16_seconds / self.int8_seconds


def _best_time(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@torch.inference_mode()
def bench_int8_linear(m: int, k: int, n: int, repeats: int = 5, warmup: int = 1,
                      device: str | torch.device = "cpu", seed: int = 0) -> Int8Bench:
    """Best-of-`repeats` wall time of one [m, k] x [k, n] linear: bf16 vs int8 (random bf16 data)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(device=device, dtype=torch.bfloat16)
    lin = nn.Linear(k, n).to(device=device, dtype=torch.bfloat16)
    q = Int8Linear.from_float(lin)
    q.weight_scales = q.weight_scales.to(torch.bfloat16)  # as after the pipeline's model.to(bf16)
    a_codes, _ = quantize_activation(x)
    w_t = q.weight_int8.t()
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    timed = lambda f: _best_time(lambda: (f(), sync()), repeats, warmup)
    return Int8Bench(m, k, n, bf16_seconds=timed(lambda: lin(x)), int8_seconds=timed(lambda: q(x)),
                     int8_gemm_seconds=timed(lambda: int8_gemm(a_codes, w_t)))
