"""Conformance group `scheduler`: the golden `scheduler_*` vectors (golden README section 7).

* `scheduler_vectors`: timesteps (exact), sigmas (exact float32) and the stand-alone 3- and 50-step solver
  runs (every `samples_after_step`, max |diff| <= 1e-5), plus the bf16 timestep quirk (the timesteps the bf16
  pipeline feeds the DiT, exact).
* `scheduler_sampling_tiny_dit`: the full 3-step sampling on the tiny DiT with case a's conditions through
  `sample_clip` (timestep tokens exact, noise predictions and latents <= 1e-4). Reported as skipped (not
  failed) while the DiT (`worldstream.model.dit`) is not part of this build.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

from worldstream.conformance import CaseResult, compare, guarded

GROUP = "scheduler"
TOL_SOLVER = 1e-5  # README: scheduler-only runs <= 1e-5 absolute (values up to 2.4)
TOL_SAMPLING = 1e-4  # README: the sampling run inherits the DiT tolerance
TOL_EXACT = 0.0
SHIFT = 5.0  # README: set_timesteps(n, shift=5.0) (MG3 sample_shift)
VECTORS, SAMPLING = "scheduler_vectors.safetensors", "scheduler_sampling_tiny_dit.safetensors"
SAMPLING_PREFIX = 1  # first clip: latent 0 is the clean image latent
SAMPLING_CASE = "a"  # the DiT case whose conditions the sampling run uses
SAMPLING_SEQ_LEN = 48  # README section 7: the run pads to seq_len 48 (as the pipeline's first clip, case d)


def applies(root: Path) -> bool:
    root = Path(root)
    return (root / VECTORS).exists() or (root / SAMPLING).exists()


def check(root: Path) -> Iterator[CaseResult]:
    root = Path(root)
    if (root / VECTORS).exists():
        yield from guarded(GROUP, "vectors", lambda: _vectors(root))
    if (root / SAMPLING).exists():
        yield from guarded(GROUP, "sampling_tiny_dit", lambda: _sampling(root))


def _runs(g: dict) -> list[int]:
    return sorted({int(k.split(".")[0][len("steps"):]) for k in g if k.startswith("steps")})


def _vectors(root: Path) -> Iterator[CaseResult]:
    import torch
    from safetensors.torch import load_file

    from worldstream.diffusion.samplers import FlowUniPCMultistepScheduler, clip_timestep_tokens

    g = load_file(str(root / VECTORS))
    meta_path = root / "scheduler_vectors.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    for n in _runs(g):
        sched = FlowUniPCMultistepScheduler()
        sched.set_timesteps(n, shift=SHIFT)
        yield compare(GROUP, f"steps{n}.timesteps", sched.timesteps, g[f"steps{n}.timesteps_int64"],
                      TOL_EXACT)
        yield compare(GROUP, f"steps{n}.sigmas", sched.sigmas, g[f"steps{n}.sigmas_fp32"], TOL_EXACT)
        as_bf16 = meta.get(f"steps{n}", {}).get("timesteps_as_bf16")
        if as_bf16 is not None:
            fed = torch.stack([clip_timestep_tokens(int(t), 1, 1, 1, 0, torch.bfloat16)[0, 0]
                               for t in sched.timesteps])
            yield compare(GROUP, f"steps{n}.timesteps_fed_bf16", fed, torch.tensor(as_bf16), TOL_EXACT,
                          "bf16 latents quirk")
        if f"run{n}.sample_init" in g:
            x = g[f"run{n}.sample_init"]
            outs = []
            for i, t in enumerate(sched.timesteps):
                x = sched.step(g[f"run{n}.model_outputs"][i], t, x)
                outs.append(x)
            yield compare(GROUP, f"run{n}.samples_after_step", torch.stack(outs),
                          g[f"run{n}.samples_after_step"], TOL_SOLVER, f"{n} steps")


def _sampling(root: Path) -> Iterator[CaseResult]:
    import torch
    from safetensors.torch import load_file

    if importlib.util.find_spec("worldstream.model.dit") is None:
        yield CaseResult(GROUP, "sampling_tiny_dit", True, None, None,
                         "skipped: worldstream.model.dit not built")
        return
    from worldstream.conformance import dit as dit_group
    from worldstream.diffusion.samplers import FlowUniPCMultistepScheduler, sample_clip

    g = load_file(str(root / SAMPLING))
    if not dit_group.applies(root):
        yield CaseResult(GROUP, "sampling_tiny_dit", True, None, None, "skipped: dit_tiny_* files missing")
        return
    model = dit_group.load_model(root)
    kw, _ = dit_group.case_call(root, SAMPLING_CASE, dit_group.load_cases(root))
    f_clip, tokens_per_frame = kw["x"].shape[2], kw["t"].shape[1] // kw["x"].shape[2]
    seq_len = max(SAMPLING_SEQ_LEN, f_clip * tokens_per_frame)  # padding never reaches valid tokens
    cond = {k: kw[k] for k in ("context", "mouse_cond", "keyboard_cond", "plucker_emb", "predict_latent_idx")}
    noise, img = g["noise"], g["img_cond"]
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def denoise(latents, t_tokens):
        with torch.no_grad():
            v = model(x=latents, t=t_tokens, seq_len=seq_len, **cond)
        calls.append((t_tokens, v))
        return v

    steps = len(g["scheduler_timesteps"])
    after: list[torch.Tensor] = []
    sched = FlowUniPCMultistepScheduler()
    final = sample_clip(denoise, noise, img, SAMPLING_PREFIX, sched, steps, SHIFT,
                        tokens_per_frame=tokens_per_frame, on_step=lambda i, t, x: after.append(x))
    yield compare(GROUP, "sampling.timesteps", sched.timesteps, g["scheduler_timesteps"], TOL_EXACT)
    yield compare(GROUP, "sampling.sigmas", sched.sigmas, g["scheduler_sigmas"], TOL_EXACT)
    for i, ((t_tokens, v), x) in enumerate(zip(calls, after)):
        name = f"sampling.step{i}"
        yield compare(GROUP, f"{name}.timestep_tokens", t_tokens, g[f"step{i}_timestep_tokens"], TOL_EXACT)
        yield compare(GROUP, f"{name}.noise_pred", v, g[f"step{i}_noise_pred"], TOL_SAMPLING)
        yield compare(GROUP, f"{name}.latents_after", x, g[f"step{i}_latents_after"], TOL_SAMPLING)
    yield compare(GROUP, "sampling.latents_final", final, g["latents_final"], TOL_SAMPLING,
                  f"seq_len {seq_len}")

