"""`worldstream bench dit`: DiT forward time and achieved GFLOP/s on this machine.

For the `nano` and `small` presets at their streaming clip sizes (`ClipGeometry`), in float32, bf16 and INT8
(`convert_to_int8`: the official q/k/v/o rule, then bf16), measures the time of one denoiser forward
(inference mode, best and median of a few, the dtypes timed round-robin) and divides an analytic FLOP count
by it (`dit_flops`: linear layers 2*M*K*N, attention 4*Lq*Lk*D per layer, the action modules and the camera
layers, as this implementation executes them). The count's GEMM part is cross-checked against torch's
FlopCounterMode on every run (which does not see CPU SDPA, so attention is left out of that check).

Two passes: one intra-op thread timed with the thread's CPU clock (the work itself: waiting for a core that
another process holds is not counted, so it is stable on a shared machine), and all cores timed with the
wall clock (what a user sees; on a busy machine OpenMP threads wait for each other and it degrades badly).

References measured in the same run: the bf16 matmul rate at each preset's FFN shape (the target is
>= 50% of it at the small size) and the kernel choices the model makes (complex vs real RoPE rotation,
eager GELU(tanh) vs the fused oneDNN Linear+GELU). The machine is shared: compare ratios within one run.
Writes a markdown table (docs/results/dit_speed.md by default) and optionally JSON.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from worldstream.eval.benchmarks.common import machine, write_report

DTYPES = ("fp32", "bf16", "int8")


@dataclass(frozen=True)
class ClipGeometry:
    """One streaming clip in latents: memory frames, then the clip (a clean prefix, then noisy frames)."""

    height: int  # latent rows
    width: int  # latent columns
    memory: int  # retrieved memory latents (first in the token sequence)
    past: int  # clean conditioning latents at the start of the clip (t = 0)
    new: int  # noisy latents being generated (t = `timestep`)
    text_rows: int = 16  # prompt rows before zero-padding to text_len
    timestep: float = 700.0  # the noisy frames' t (any value: speed does not depend on it)

    @property
    def frames(self) -> int:
        """Clip latents (past + new): the DiT's x."""
        return self.past + self.new


# nano: 96x160 video, VAE stride (4, 8, 8) -> 12x20 latents -> patch 2 -> 60 tokens/frame; memory 4 + past 2
# + new 4 = 10 latents = 600 tokens (SPEC). small: 192x320, stride 16 -> 12x20 latents, 60 tokens/frame;
# the MG3 later clip: 5 memory + 4 past + 10 new = 19 latents = 1140 tokens.
GEOMETRY = {
    "nano": ClipGeometry(height=12, width=20, memory=4, past=2, new=4),
    "small": ClipGeometry(height=12, width=20, memory=5, past=4, new=10),
}


@dataclass(frozen=True)
class DiTBenchConfig:
    presets: tuple[str, ...] = ("nano", "small")
    dtypes: tuple[str, ...] = DTYPES
    repeats: int = 5  # timed forwards per (preset, dtype), after one warm-up
    budget_seconds: float = 25.0  # per (preset, threads): stop the timing rounds once this much is spent
    deadline_seconds: float = 170.0  # whole run: later passes are cut short or skipped (a busy machine)
    matmul_repeats: int = 20
    threads: tuple[int, ...] = (1, 0)  # intra-op thread counts to time; 0 = all logical CPUs
    seed: int = 0


########################################################################################################
# FLOPs


def dit_flops(cfg, geo: ClipGeometry, distinct_timesteps: int = 2) -> dict[str, int]:
    """Analytic FLOPs of one forward (batch 1, no padding) as this implementation runs it.

    Returns parts: `linear` (every Linear/conv outside attention cores and the action modules),
    `attention` (self + cross: 4*Lq*Lk*D each), `action` (the action modules' GEMMs and attention),
    `camera` (Plücker projection + c2ws MLP + the 4 per-block injector layers), and `total`. The time MLPs
    run once per distinct timestep (`distinct_timesteps` rows), as the model does.
    """
    S = (geo.height // cfg.patch_size[1]) * (geo.width // cfg.patch_size[2])  # tokens per latent frame
    T = geo.memory + geo.frames  # latent frames in the sequence
    L, D, Lt, U = T * S, cfg.dim, cfg.text_len, distinct_timesteps

    def mm(m: int, k: int, n: int) -> int:
        return 2 * m * k * n

    linear = (
        mm(L, cfg.in_dim * cfg.patch_volume, D)  # patch embedding (a conv = a linear per token)
        + mm(U, cfg.freq_dim, D) + mm(U, D, D) + mm(U, D, 6 * D)  # time embedding + projection
        + mm(Lt, cfg.text_dim, D) + mm(Lt, D, D)  # text MLP
        + mm(L, D, cfg.head_out_features)  # head
        + cfg.num_layers * (
            4 * mm(L, D, D)  # self-attention q, k, v, o
            + 2 * mm(L, D, D) + 2 * mm(Lt, D, D)  # cross-attention q, o on tokens; k, v on text
            + mm(L, D, cfg.ffn_dim) + mm(L, cfg.ffn_dim, D)  # FFN
        )
    )
    attention = cfg.num_layers * (4 * L * L * D + 4 * L * Lt * D)
    camera = mm(L, cfg.camera_token_features, D) + 2 * mm(L, D, D) + cfg.num_layers * 4 * mm(L, D, D)
    action = len(cfg.action_blocks) * _action_flops(cfg.action, geo, S, T, D) if cfg.action else 0
    return {"linear": linear, "attention": attention, "action": action, "camera": camera,
            "total": linear + attention + action + camera}


def _action_flops(a, geo: ClipGeometry, S: int, T: int, D: int) -> int:
    """One action module: mouse MLP + temporal attention per location, keyboard cross-attention."""
    L, mh, kh, hid = T * S, a.mouse_hidden_dim, a.keyboard_hidden_dim, a.hidden_size
    n_rows = 4 * geo.frames  # later clip: 4 pixel frames per latent
    pad = a.vae_time_compression_ratio * (a.windows_size - 1)  # later-clip padding rows

    def mm(m: int, k: int, n: int) -> int:
        return 2 * m * k * n

    mouse = (
        mm(L, D, mh) + mm(T, a.mouse_window_features, mh)  # first MLP layer (token part + per-frame part)
        + mm(L, mh, mh) + mm(L, mh, 3 * mh)  # second MLP layer, t_qkv
        + 4 * S * T * T * mh  # attention over the T frames at each of the S locations
        + mm(L, mh, D)  # proj_mouse
    )
    keyboard = (
        mm(n_rows + pad + geo.memory, a.keyboard_dim_in, hid) + mm(n_rows + pad + geo.memory, hid, hid)
        + mm(L, D, kh) + mm(T, a.keyboard_window_features, 2 * kh)  # q; k, v from the windows
        + 4 * L * T * kh  # every token attends to the T keyboard windows
        + mm(L, kh, D)  # proj_keyboard
    )
    return (mouse if a.enable_mouse else 0) + (keyboard if a.enable_keyboard else 0)


########################################################################################################
# Inputs and timing


def make_inputs(cfg, geo: ClipGeometry, seed: int) -> dict[str, Any]:
    """Forward kwargs of one later clip (memory, clean prefix, noisy frames, actions, camera)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    H, W, M, F = geo.height, geo.width, geo.memory, geo.frames
    S = (H // cfg.patch_size[1]) * (W // cfg.patch_size[2])
    t = torch.cat([torch.zeros(1, geo.past * S), torch.full((1, geo.new * S), geo.timestep)], dim=1)
    n_rows = 4 * F  # later clip: 4 pixel frames per latent
    start = 4 * M + 1  # any absolute latent range after the memory frames
    return dict(
        x=torch.randn(1, cfg.in_dim, F, H, W, generator=g),
        t=t,
        context=[torch.randn(geo.text_rows, cfg.text_dim, generator=g)],
        mouse_cond=torch.randn(1, n_rows, cfg.action.mouse_dim_in, generator=g) * 0.1,
        keyboard_cond=(torch.rand(1, n_rows, cfg.action.keyboard_dim_in, generator=g) > 0.7).float(),
        plucker_emb=torch.randn(1, cfg.plucker_channels, M + F, H, W, generator=g),
        x_memory=torch.randn(1, cfg.in_dim, M, H, W, generator=g),
        memory_latent_idx=[1 + 4 * i for i in range(M)],
        predict_latent_idx=(start, start + F),
    )


def clock_for(threads: int):
    """The thread's CPU clock for one intra-op thread (compute only), the wall clock otherwise."""
    return time.thread_time if threads == 1 else time.perf_counter


def _times(fn, repeats: int, budget: float, clock=time.perf_counter) -> list[float]:
    """Seconds of `repeats` calls after one warm-up; stops early once `budget` wall seconds are spent."""
    fn()
    out: list[float] = []
    t_end = time.perf_counter() + budget
    for _ in range(repeats):
        t0 = clock()
        fn()
        out.append(clock() - t0)
        if time.perf_counter() > t_end:
            break
    return out


def build_models(preset: str, dtypes: tuple[str, ...], seed: int) -> dict[str, Any]:
    """dtype -> WorldDiT in eval mode with the same random weights (default init: no zero layers)."""
    import torch

    from worldstream.model.dit import WorldDiT
    from worldstream.model.dit import preset as dit_preset
    from worldstream.model.quant import convert_to_int8

    torch.manual_seed(seed)
    base = WorldDiT(dit_preset(preset)).eval()
    models = {}
    for name in dtypes:
        if name == "fp32":
            models[name] = base
        elif name == "bf16":
            models[name] = WorldDiT(base.cfg).eval().to(torch.bfloat16)
            models[name].load_state_dict(base.state_dict())
        elif name == "int8":  # official runtime: quantise the float weights, then model.to(bf16)
            q = WorldDiT(base.cfg).eval()
            q.load_state_dict(base.state_dict())
            models[name] = convert_to_int8(q).to(torch.bfloat16)
        else:
            raise ValueError(f"bench dit: unknown dtype {name!r}; choose from {DTYPES}")
    return models


def bench_forward(preset: str, models: dict[str, Any], threads: int, cfg: DiTBenchConfig,
                  deadline: float) -> tuple[list[dict], dict]:
    """Time every dtype of `preset`, round-robin (one forward of each in turn, then the reference GEMM),
    so that load from other processes hits them alike; stops after `repeats` rounds, once the budget is
    spent, or at `deadline` (perf_counter); a dtype without a timed run is left out.

    Returns (one row per dtype, the bf16 GEMM reference at this preset's FFN shape).
    """
    import torch

    model_cfg = next(iter(models.values())).cfg
    geo = GEOMETRY[preset]
    kw = make_inputs(model_cfg, geo, cfg.seed)
    flops = dit_flops(model_cfg, geo)
    tokens = (geo.memory + geo.frames) * (geo.height // 2) * (geo.width // 2)
    clock = clock_for(threads)
    times: dict[str, list[float]] = {name: [] for name in models}
    gemm = _FFNGemm(model_cfg, tokens)
    t_end = min(time.perf_counter() + cfg.budget_seconds, deadline)
    with torch.inference_mode():
        for model in models.values():  # warm-up
            if time.perf_counter() < deadline:
                model(**kw)
        gemm.time(clock, cfg.matmul_repeats)
        for _ in range(cfg.repeats):
            for name, model in models.items():
                if time.perf_counter() > deadline:
                    break
                t0 = clock()
                model(**kw)
                times[name].append(clock() - t0)
            gemm.time(clock, cfg.matmul_repeats)
            if time.perf_counter() > t_end:
                break
    return [{"preset": preset, "dtype": name, "threads": threads, "tokens": tokens,
             "gflop": flops["total"] / 1e9, "flops": flops, "runs": len(ts), "best_s": min(ts),
             "median_s": statistics.median(ts), "gflops_per_s": flops["total"] / 1e9 / min(ts)}
            for name, ts in times.items() if ts], gemm.result(preset, threads)


def check_flop_count(preset: str, seed: int) -> dict[str, float]:
    """Analytic GEMM/conv FLOPs vs torch's FlopCounterMode on one float32 forward (autograd on, so every
    Linear runs as its own aten GEMM). Attention is left out: the counter does not see CPU SDPA."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from worldstream.model.dit import WorldDiT
    from worldstream.model.dit import preset as dit_preset

    torch.manual_seed(seed)
    model = WorldDiT(dit_preset(preset))
    geo = GEOMETRY[preset]
    flops = dit_flops(model.cfg, geo)
    a = model.cfg.action
    S = (geo.height // 2) * (geo.width // 2)
    T = geo.memory + geo.frames
    action_attention = len(model.cfg.action_blocks) * (4 * S * T * T * a.mouse_hidden_dim
                                                       + 4 * T * S * T * a.keyboard_hidden_dim)
    expected = flops["total"] - flops["attention"] - action_attention
    with FlopCounterMode(display=False) as counter:
        model(**make_inputs(model.cfg, geo, seed))
    counted = counter.get_total_flops()
    return {"analytic_gemm_gflop": expected / 1e9, "counted_gemm_gflop": counted / 1e9,
            "ratio": counted / expected}


class _FFNGemm:
    """bf16 GEMM at the FFN up-projection shape [tokens, dim] x [dim, ffn_dim]: the machine's matmul rate."""

    def __init__(self, cfg, tokens: int):
        import torch

        self.m, self.k, self.n = tokens, cfg.dim, cfg.ffn_dim
        self.x = torch.randn(self.m, self.k).to(torch.bfloat16)
        self.w = torch.randn(self.n, self.k).to(torch.bfloat16)
        self.best = float("inf")

    def time(self, clock, repeats: int) -> None:
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            F.linear(self.x, self.w)
            for _ in range(repeats):
                t0 = clock()
                F.linear(self.x, self.w)
                self.best = min(self.best, clock() - t0)

    def result(self, preset: str, threads: int) -> dict[str, Any]:
        return {"preset": preset, "threads": threads, "m": self.m, "k": self.k, "n": self.n,
                "best_s": self.best, "gflops_per_s": 2 * self.m * self.k * self.n / 1e9 / self.best}


def bench_kernels(repeats: int) -> list[dict[str, Any]]:
    """The model's kernel choices at nano size, each against its plain alternative (one thread, CPU clock)."""
    import torch
    import torch.nn as nn
    from einops import rearrange

    from worldstream.model.attention import Rope3D, apply_rope
    from worldstream.model.dit import NANO, feed_forward

    geo = GEOMETRY["nano"]
    h, w = geo.height // 2, geo.width // 2
    L = (geo.memory + geo.frames) * h * w
    rope = Rope3D(NANO.head_dim, NANO.num_heads, NANO.rope_theta, NANO.sigma_theta, NANO.rope_max_positions)
    freqs = rope.freqs(list(range(geo.memory + geo.frames)), h, w)  # complex64 [L, H, D/2]
    cos = torch.view_as_real(freqs)[..., 0].repeat_interleave(2, dim=-1)  # [L, H, D] real form
    sin = torch.view_as_real(freqs)[..., 1].repeat_interleave(2, dim=-1)

    def rope_real(x):  # x*cos + rotate_half(x)*sin with interleaved pairs (a, b) -> (-b, a)
        xf = x.float()
        pairs = rearrange(xf, "b l n (c two) -> b l n c two", two=2)
        rotated = rearrange(torch.stack([-pairs[..., 1], pairs[..., 0]], -1), "b l n c two -> b l n (c two)")
        return (xf * cos + rotated * sin).type_as(x)

    ffn = nn.Sequential(nn.Linear(NANO.dim, NANO.ffn_dim), nn.GELU("tanh"), nn.Linear(NANO.ffn_dim, NANO.dim))
    rows = []
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            q = torch.randn(1, L, NANO.num_heads, NANO.head_dim).to(dtype)
            x = torch.randn(1, L, NANO.dim).to(dtype)
            ffn = ffn.to(dtype)
            pairs = {
                "RoPE on q [1, 600, 4, 64]": (lambda q=q: apply_rope(q, freqs), lambda q=q: rope_real(q),
                                              "complex multiply", "real cos/sin form"),
                "FFN 256 -> 1024 -> 256 on 600 tokens": (lambda x=x, f=ffn: feed_forward(f, x),
                                                         lambda x=x, f=ffn: f(x),
                                                         "fused Linear+GELU", "eager Linear, GELU"),
            }
            for what, (ours, plain, ours_name, plain_name) in pairs.items():
                t_ours = min(_times(ours, repeats, budget=3.0, clock=time.thread_time))
                t_plain = min(_times(plain, repeats, budget=3.0, clock=time.thread_time))
                rows.append({"what": what, "dtype": str(dtype).removeprefix("torch."), "ours": ours_name,
                             "plain": plain_name, "ours_ms": t_ours * 1e3, "plain_ms": t_plain * 1e3,
                             "speedup": t_plain / t_ours})
    return rows


########################################################################################################
# Report


def run(cfg: DiTBenchConfig = DiTBenchConfig()) -> dict[str, Any]:
    import torch

    unknown = sorted(set(cfg.presets) - set(GEOMETRY))
    if unknown:
        raise ValueError(f"bench dit: no clip geometry for presets {unknown}; choose from {sorted(GEOMETRY)}")
    bad = sorted(set(cfg.dtypes) - set(DTYPES))
    if bad:
        raise ValueError(f"bench dit: unknown dtypes {bad}; choose from {list(DTYPES)}")
    if any(n < 0 for n in cfg.threads):
        raise ValueError(f"bench dit: thread counts must be >= 0 (0 = all CPUs), got {list(cfg.threads)}")
    thread_counts = list(dict.fromkeys(n or os.cpu_count() or 1 for n in cfg.threads))
    t0 = time.perf_counter()
    threads_before = torch.get_num_threads()
    result: dict[str, Any] = {"config": asdict(cfg), "machine": machine(), "thread_counts": thread_counts,
                              "geometry": {p: asdict(GEOMETRY[p]) for p in cfg.presets},
                              "matmul": [], "forward": []}
    deadline = t0 + cfg.deadline_seconds
    try:  # NOTE the thread count is a process-wide setting: restored below
        torch.set_num_threads(1)
        result["kernels"] = bench_kernels(cfg.matmul_repeats)
        result["flop_check"] = {p: check_flop_count(p, cfg.seed) for p in cfg.presets[:1]}
        models = {p: build_models(p, cfg.dtypes, cfg.seed) for p in cfg.presets}
        for n in thread_counts:  # the stable one-thread pass first
            for preset in cfg.presets:
                if time.perf_counter() > deadline:
                    result["skipped"] = result.get("skipped", []) + [f"{preset}, {n} threads"]
                    continue
                torch.set_num_threads(n)
                rows, matmul = bench_forward(preset, models[preset], n, cfg, deadline)
                result["forward"] += rows
                result["matmul"].append(matmul)
    finally:
        torch.set_num_threads(threads_before)
    result["machine"]["load_avg_1min_end"] = os.getloadavg()[0]
    result["seconds"] = time.perf_counter() - t0
    return result


def to_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    matmul = {(r["preset"], r["threads"]): r for r in result["matmul"]}
    fwd = {(r["preset"], r["dtype"], r["threads"]): r for r in result["forward"]}
    lines = [
        "# DiT forward speed (`worldstream bench dit`)",
        "",
        f"Machine: {m['platform']}, {m['processor']}, {m['cpu_count']} logical CPUs, torch {m['torch']}. "
        f"Load average {m['load_avg_1min']:.1f} at the start and {m['load_avg_1min_end']:.1f} at the end: "
        "the cores were shared with other jobs, so compare ratios within this run.",
        "",
        "One denoiser forward, batch 1, inference mode; `best` / `median` of the timed runs after a "
        "warm-up, dtypes timed round-robin. 1 thread: the thread's CPU time (compute only, stable under "
        "load); more threads: wall time (what a user sees; other jobs on the cores inflate it). GFLOP = "
        "analytic count (`dit_flops`: linear 2*M*K*N, attention 4*Lq*Lk*D, action modules, camera layers). "
        "INT8 = `convert_to_int8` (self/cross-attention q/k/v/o) then bf16, as the official runtime.",
        "",
    ]
    for p, geo in result["geometry"].items():
        S = (geo["height"] // 2) * (geo["width"] // 2)
        T = geo["memory"] + geo["past"] + geo["new"]
        lines.append(f"* `{p}`: {geo['height']}x{geo['width']} latents -> {S} tokens/frame; "
                     f"{geo['memory']} memory + {geo['past']} clean + {geo['new']} noisy latents = "
                     f"{T} frames = {T * S} tokens.")
    lines += [
        "",
        "| preset | dtype | threads | tokens | GFLOP | best ms | median ms | runs | GFLOP/s | "
        "% of bf16 matmul | vs bf16 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (p, d, n), r in fwd.items():
        ref = matmul.get((p, n))
        share = f"{100 * r['gflops_per_s'] / ref['gflops_per_s']:.0f}%" if ref else "-"
        bf16 = fwd.get((p, "bf16", n))
        vs = f"{bf16['best_s'] / r['best_s']:.2f}x" if bf16 else "-"
        lines.append(f"| {p} | {d} | {n} | {r['tokens']} | {r['gflop']:.1f} | {r['best_s'] * 1e3:.1f} | "
                     f"{r['median_s'] * 1e3:.1f} | {r['runs']} | {r['gflops_per_s']:.0f} | {share} | {vs} |")
    slower = [f"{p} {d}" for (p, d, n), r in fwd.items()
              if n > 1 and (p, d, 1) in fwd and r["best_s"] > fwd[(p, d, 1)]["best_s"]]
    lines += [
        "",
        "`% of bf16 matmul` = this GFLOP/s / the bf16 GEMM rate below (same preset, same threads); "
        "`vs bf16` = bf16 best time / this best time (> 1: faster than bf16).",
        "",
        *([f"NOTE more threads were slower than one thread for {', '.join(slower)}: other jobs held the "
           "cores, and OpenMP threads then wait for each other at every op. Such rows measure the machine's "
           "load, not the model; the one-thread rows are the comparable numbers.", ""] if slower else []),
        "## References measured in the same run",
        "",
        "| bf16 matmul at the FFN up-projection shape | threads | M x K x N | best ms | GFLOP/s |",
        "|---|---:|---|---:|---:|",
        *[f"| {r['preset']} | {r['threads']} | {r['m']} x {r['k']} x {r['n']} | {r['best_s'] * 1e3:.2f} | "
          f"{r['gflops_per_s']:.0f} |" for r in result["matmul"]],
        "",
        *[f"FLOP breakdown, {p} (GFLOP): " + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in flops.items()) + "."
          for p, flops in {r["preset"]: r["flops"] for r in result["forward"]}.items()],
        "",
        *[f"FLOP count check ({p}, float32): GEMM/conv part {c['analytic_gemm_gflop']:.3f} GFLOP analytic vs "
          f"{c['counted_gemm_gflop']:.3f} counted by torch FlopCounterMode (ratio {c['ratio']:.4f})."
          for p, c in result["flop_check"].items()],
        "",
        "Kernel choices of the model (nano sizes, one thread, CPU time):",
        "",
        "| op | dtype | model uses | ms | alternative | ms | speedup |",
        "|---|---|---|---:|---|---:|---:|",
        *[f"| {r['what']} | {r['dtype']} | {r['ours']} | {r['ours_ms']:.2f} | {r['plain']} | "
          f"{r['plain_ms']:.2f} | {r['speedup']:.2f}x |" for r in result["kernels"]],
        "",
        f"Total benchmark time: {result['seconds']:.0f} s."
        + (f" Skipped at the deadline: {'; '.join(result['skipped'])}." if result.get("skipped") else ""),
        "",
    ]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("docs/results"), help="directory for dit_speed.md")
    p.add_argument("--json", type=Path, help="also write the raw numbers as JSON")
    p.add_argument("--presets", nargs="+", default=list(DiTBenchConfig.presets), help="DiT presets to time")
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES, help="weight/compute dtypes")
    p.add_argument("--repeats", type=int, default=DiTBenchConfig.repeats, help="timed forwards per case")
    p.add_argument("--threads", type=int, nargs="+", default=list(DiTBenchConfig.threads),
                   help="intra-op thread counts to time (0 = all logical CPUs)")


def main(args: argparse.Namespace) -> int:
    cfg = DiTBenchConfig(presets=tuple(args.presets), dtypes=tuple(args.dtypes), repeats=args.repeats,
                         threads=tuple(args.threads))
    result = run(cfg)
    md = to_markdown(result)
    write_report(args.out / "dit_speed.md", md, args.json, result)
    print(md)
    return 0
