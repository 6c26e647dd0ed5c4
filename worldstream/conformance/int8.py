"""Conformance group `int8`: the golden `int8_*` vectors (golden README section 6).

Everything is exact (tolerance 0): integer codes, int32 accumulators, the float32 epilogue (two multiplies
in a fixed order) and the bf16 outputs. The module path (`Int8Linear.from_float`, forward) is checked, plus
the functional pieces for a precise diagnosis, plus fast path == reference path.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from worldstream.conformance import CaseResult, compare

GROUP = "int8"
TOL = 0.0  # README: integer tensors, out_fp32_* and bf16 tensors exact
FILE = "int8_vectors.safetensors"


def applies(root: Path) -> bool:
    return (Path(root) / FILE).exists()


def check(root: Path) -> Iterator[CaseResult]:
    import torch
    from safetensors.torch import load_file

    from worldstream.model.quant import Int8Linear, int8_gemm, quantize_activation

    g = load_file(str(Path(root) / FILE))
    w, b, x = g["weight_bf16_values"], g["bias_bf16"], g["x_bf16"]
    lin = torch.nn.Linear(w.shape[1], w.shape[0], dtype=torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)

    # 1. weight side (executed officially)
    q = Int8Linear.from_float(lin)
    yield compare(GROUP, "weight_int8", q.weight_int8, g["weight_int8"], TOL)
    yield compare(GROUP, "weight_scales_fp32", q.weight_scales, g["weight_scales_fp32"], TOL)
    q_rt = Int8Linear.from_float(lin).to(torch.bfloat16)  # the pipeline's later model.to(bf16)
    yield compare(GROUP, "weight_scales_bf16_runtime", q_rt.weight_scales, g["weight_scales_bf16_runtime"],
                  TOL, f"dtype {q_rt.weight_scales.dtype}")

    # 2. activation side and GEMM (reproduced from the kernel source)
    codes, a_scale = quantize_activation(x)
    yield compare(GROUP, "act_int8_trunc", codes, g["act_int8_trunc"], TOL)
    yield compare(GROUP, "act_scales_fp32", a_scale, g["act_scales_fp32"], TOL)
    acc = int8_gemm(codes, q.weight_int8.t())
    yield compare(GROUP, "acc_int32", acc, g["acc_int32"], TOL, "torch._int_mm")

    # 3. module outputs: float32 input without bias = the epilogue before the bf16 store
    with torch.no_grad():
        for tag, module in (("wscale_fp32", q), ("wscale_bf16", q_rt)):
            nobias = Int8Linear.from_float(lin)
            nobias.bias = None
            nobias.weight_scales = module.weight_scales
            yield compare(GROUP, f"out_fp32_before_bf16_{tag}", nobias(x.float()),
                          g[f"out_fp32_before_bf16_{tag}"], TOL)
            out = module(x)
            yield compare(GROUP, f"out_bf16_final_{tag}", out, g[f"out_bf16_final_{tag}"], TOL,
                          f"dtype {out.dtype}")
            if f"out_bf16_nobias_{tag}" in g:
                yield compare(GROUP, f"out_bf16_nobias_{tag}", nobias(x), g[f"out_bf16_nobias_{tag}"], TOL)
        yield compare(GROUP, "fast_equals_reference", q_rt(x), q_rt.forward_reference(x), TOL,
                      "torch._int_mm path vs int64 reference")
