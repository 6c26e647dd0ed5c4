"""INT8 attention projections: golden int8 vectors, quantisation rules, int8 GEMM path, conversion, manifest."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from worldstream.conformance import int8 as int8_group
from worldstream.model import quant
from worldstream.model.quant import (
    Int8Linear,
    bench_int8_linear,
    convert_to_int8,
    count_int8_layers,
    default_int8_compute,
    int8_gemm,
    quantize_activation,
    quantize_weight,
    row_absmax,
    set_int8_compute,
)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
GOLDEN = ASSETS / "golden"
HAS_DIT = importlib.util.find_spec("worldstream.model.dit") is not None


def golden_linear() -> tuple[nn.Linear, dict[str, torch.Tensor]]:
    g = load_file(str(GOLDEN / "int8_vectors.safetensors"))
    lin = nn.Linear(g["weight_bf16_values"].shape[1], g["weight_bf16_values"].shape[0], dtype=torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(g["weight_bf16_values"])
        lin.bias.copy_(g["bias_bf16"])
    return lin, g


def test_golden_group_all_exact():
    results = list(int8_group.check(GOLDEN))
    assert len(results) >= 10
    failed = [(r.case, r.max_diff, r.note) for r in results if not r.passed]
    assert not failed, failed


def test_golden_bf16_module_path_bit_exact():
    lin, g = golden_linear()
    q = Int8Linear.from_float(lin).to(torch.bfloat16)  # the runtime: bf16 scales
    out = q(g["x_bf16"])
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, g["out_bf16_final_wscale_bf16"])
    assert torch.equal(q.weight_int8, g["weight_int8"])


def test_weight_rounding_half_to_even_and_clamp():
    # row max 127 -> scale 1: codes are round-half-even of the values themselves
    w = torch.tensor([[127.0, 2.5, 3.5, -2.5, 0.5, -0.4], [0.0] * 6])
    codes, scales = quantize_weight(w)
    assert codes.dtype == torch.int8 and scales.dtype == torch.float32
    assert codes[0].tolist() == [127, 2, 4, -2, 0, 0]
    assert scales[0] == 1.0
    assert scales[1] == pytest.approx(quant.WEIGHT_SCALE_MIN) and codes[1].abs().sum() == 0  # zero row


def test_activation_round_toward_zero():
    x = torch.tensor([[127.0, 2.7, -2.7, 0.9, -126.6]])  # max 127 -> s_inv 1: codes = trunc(x)
    codes, scale = quantize_activation(x)
    assert codes.tolist() == [[127, 2, -2, 0, -126]]
    assert scale.tolist() == [1.0]


def _activation_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's semantics spelled out: float32 max|x|, s_inv = 127 / m, codes = trunc(x * s_inv)."""
    xf = x.float()
    m = torch.linalg.vector_norm(xf, ord=float("inf"), dim=1)
    m = torch.where(m > 0, m, torch.full_like(m, 127.0))
    s_inv = torch.full_like(m, 127.0).div(m)
    return torch.trunc(xf * s_inv[:, None]).to(torch.int8), torch.ones_like(s_inv).div(s_inv)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fast_activation_quantisation_equals_the_spelled_out_kernel(dtype):
    # odd sizes (vector tails), rows of every magnitude, an all-zero row and rows whose max is negative
    g = torch.Generator().manual_seed(1)
    x = torch.randn(67, 301, generator=g) * torch.logspace(-6, 4, 67)[:, None]
    x[5] = 0
    x[7] = -x[7].abs()
    x = x.to(dtype)
    codes, scale = quantize_activation(x)
    ref_codes, ref_scale = _activation_reference(x)
    assert torch.equal(codes, ref_codes) and torch.equal(scale, ref_scale)
    assert codes.abs().max() == 127 and codes[5].abs().sum() == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_row_absmax_on_raw_bits(dtype):
    x = torch.tensor([[1.0, -3.5, 2.0], [-0.0, 0.0, -0.0], [float("-inf"), 1.0, 2.0], [0.25, -0.5, 0.125]],
                     dtype=dtype)
    assert row_absmax(x).tolist() == [3.5, 0.0, float("inf"), 0.5]
    assert row_absmax(x).dtype == torch.float32
    assert torch.isnan(row_absmax(torch.tensor([[1.0, float("nan")]], dtype=dtype))).all()
    y = torch.randn(9, 40, dtype=dtype)[:, ::3]  # a strided view
    assert torch.equal(row_absmax(y), y.abs().amax(dim=1).float())


def test_dequant_compute_is_the_official_fallback_and_caches_the_weight():
    lin = nn.Linear(40, 24).to(torch.bfloat16)
    q = Int8Linear.from_float(lin, compute="dequant").to(torch.bfloat16)
    x = torch.randn(3, 5, 40, dtype=torch.bfloat16)
    w = q.weight_int8.to(torch.bfloat16) * q.weight_scales[:, None]  # bf16 codes * bf16 scales
    with torch.inference_mode():
        out = q(x)
    assert torch.equal(out, torch.nn.functional.linear(x, w, q.bias))
    cached = q._dequant_cache[1]
    assert q(x).shape == (3, 5, 24) and q._dequant_cache[1] is cached  # reused
    assert not cached.is_inference()  # built under inference_mode, still usable with autograd
    xg = x.float().requires_grad_()
    q.float()(xg).sum().backward()  # float32 input: a float32 dequantised weight, gradients flow
    assert xg.grad is not None and q._dequant_cache[1].dtype == torch.float32
    # new codes (load_state_dict copies in place) -> a new weight
    q.to(torch.bfloat16)
    other = Int8Linear.from_float(nn.Linear(40, 24)).to(torch.bfloat16)
    q.load_state_dict(other.state_dict())
    assert torch.equal(q(x), torch.nn.functional.linear(x, other.dequantized_weight(torch.bfloat16), q.bias))
    # int8 compute on the same module: W8A8, close to dequant but not the same numbers
    q.compute = "int8"
    assert torch.equal(q(x), q.forward_reference(x))
    with pytest.raises(ValueError, match="compute must be one of"):
        q.compute = "fp8"


def test_set_int8_compute_and_device_default():
    model = nn.Sequential(_Block(8), _Block(8))
    convert_to_int8(model, compute="dequant")
    assert {m.compute for m in model.modules() if isinstance(m, Int8Linear)} == {"dequant"}
    assert set_int8_compute(model, "int8") == 16
    assert {m.compute for m in model.modules() if isinstance(m, Int8Linear)} == {"int8"}
    assert "compute=int8" in repr(model[0].self_attn.q)
    assert default_int8_compute("cpu") == "dequant" and default_int8_compute("cuda:0") == "int8"


def test_zero_row_gives_bias_not_nan():
    lin = nn.Linear(16, 8)
    q = Int8Linear.from_float(lin)
    x = torch.randn(3, 16)
    x[1] = 0
    out = q(x)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], lin.bias.detach())


def test_fast_path_uses_int_mm_and_matches_reference(monkeypatch):
    lin = nn.Linear(40, 24).to(torch.bfloat16)
    q = Int8Linear.from_float(lin).to(torch.bfloat16)
    x = torch.randn(2, 5, 40, dtype=torch.bfloat16)
    calls = []
    real = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: calls.append((a.dtype, b.dtype)) or real(a, b))
    out = q(x)
    assert calls == [(torch.int8, torch.int8)]  # one real int8 GEMM, no dequantised weights
    assert out.shape == (2, 5, 24) and out.dtype == torch.bfloat16
    assert torch.equal(out, q.forward_reference(x))
    ref = lin(x).float()  # quantisation error is small relative to the output range
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.parametrize("m,k,n", [(1, 7, 3), (5, 24, 9), (33, 40, 17)])
def test_int8_gemm_padding_matches(m, k, n):
    g = torch.Generator().manual_seed(m)
    a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8).t()  # a transposed view, as in forward
    exact = (a.long() @ b.long()).to(torch.int32)
    assert torch.equal(int8_gemm(a, b, pad=False), exact)
    assert torch.equal(int8_gemm(a, b, pad=True), exact)  # the CUDA shape rules, exercised on CPU


def test_int8_gemm_errors():
    a = torch.zeros(2, 4, dtype=torch.int8)
    with pytest.raises(TypeError, match="int8"):
        int8_gemm(a.float(), a.t())
    with pytest.raises(ValueError, match="inner sizes"):
        int8_gemm(a, torch.zeros(3, 2, dtype=torch.int8))
    q = Int8Linear.from_float(nn.Linear(4, 2))
    with pytest.raises(ValueError, match="input features 5"):
        q(torch.zeros(1, 5))


class _Attn(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.norm_q = nn.LayerNorm(d)


class _Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.self_attn, self.cross_attn = _Attn(d), _Attn(d)
        self.ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.q_proj = nn.Linear(d, d)  # name is not exactly q/k/v/o: stays float


def test_convert_to_int8_rule_and_state_dict_names():
    model = nn.Sequential(_Block(8), _Block(8))
    x = torch.randn(3, 8)
    ref = model[0].self_attn.q(x)
    out_model = convert_to_int8(model)
    assert out_model is model and count_int8_layers(model) == 2 * 2 * 4
    assert isinstance(model[1].cross_attn.o, Int8Linear)
    assert type(model[0].q_proj) is nn.Linear and type(model[0].ffn[0]) is nn.Linear
    keys = [k for k in model.state_dict() if k.startswith("0.self_attn.q.")]
    assert keys == ["0.self_attn.q.bias", "0.self_attn.q.weight_int8", "0.self_attn.q.weight_scales"]
    assert (model[0].self_attn.q(x) - ref).abs().max() < 0.05 * ref.abs().max()
    model.to(torch.bfloat16)  # as the pipeline: scales follow, codes stay int8
    q = model[0].self_attn.q
    assert q.weight_int8.dtype == torch.int8 and q.weight_scales.dtype == torch.bfloat16
    assert q.bias.dtype == torch.bfloat16


@pytest.mark.skipif(not HAS_DIT, reason="worldstream.model.dit not built")
def test_mg3_5b_int8_runtime_manifest():
    from worldstream.model.dit import MG3_5B, WorldDiT

    with torch.device("meta"):
        model = WorldDiT(MG3_5B)
    convert_to_int8(model).to(torch.bfloat16)
    assert count_int8_layers(model) == 240  # facts 7: q/k/v/o of self- and cross-attention in 30 blocks
    manifest = json.loads((ASSETS / "manifests" / "mg3_dit_5b_state_dict_int8_runtime.json").read_text())
    state = model.state_dict()
    assert list(state) == list(manifest)
    for k, spec in manifest.items():
        assert list(state[k].shape) == spec["shape"], k
        assert str(state[k].dtype).removeprefix("torch.") == spec["dtype"], k


def test_bench_helper_runs():
    r = bench_int8_linear(16, 64, 32, repeats=1, warmup=0)
    assert (r.m, r.k, r.n) == (16, 64, 32)
    assert r.bf16_seconds > 0 and r.int8_seconds > 0 and r.int8_gemm_seconds > 0 and r.speedup > 0
