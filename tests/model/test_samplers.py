"""Flow paths and samplers: golden FlowUniPC vectors, tiny-DiT sampling, solver accuracy, the MG3 clip loop."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from worldstream.conformance import scheduler as scheduler_group
from worldstream.diffusion.flow import (
    FlowConfig,
    add_noise,
    sample_training_sigmas,
    shift_sigmas,
    velocity_target,
    x0_from_velocity,
)
from worldstream.diffusion.samplers import (
    FewStepConfig,
    FewStepScheduler,
    FlowEulerScheduler,
    FlowUniPCConfig,
    FlowUniPCMultistepScheduler,
    apply_cfg,
    cfg_denoise_fn,
    clip_timestep_tokens,
    make_scheduler,
    sample_clip,
)

GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "golden"
HAS_DIT = importlib.util.find_spec("worldstream.model.dit") is not None
SHIFT = 5.0


# ---- golden ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 50])
def test_golden_schedule_and_solver_run(n):
    g = load_file(str(GOLDEN / "scheduler_vectors.safetensors"))
    s = FlowUniPCMultistepScheduler()
    s.set_timesteps(n, shift=SHIFT)
    assert s.timesteps.dtype == torch.int64
    assert torch.equal(s.timesteps, g[f"steps{n}.timesteps_int64"])
    assert torch.equal(s.sigmas, g[f"steps{n}.sigmas_fp32"])
    x = g[f"run{n}.sample_init"]
    for i, t in enumerate(s.timesteps):
        x = s.step(g[f"run{n}.model_outputs"][i], t, x)
        assert (x - g[f"run{n}.samples_after_step"][i]).abs().max() <= 1e-5, f"step {i}"


def test_golden_bf16_timestep_quirk():
    meta = json.loads((GOLDEN / "scheduler_vectors.json").read_text())
    s = FlowUniPCMultistepScheduler()
    s.set_timesteps(3, shift=SHIFT)
    assert s.timesteps.tolist() == [999, 908, 713]
    fed = [clip_timestep_tokens(int(t), 1, 2, 3, 1, torch.bfloat16)[0, -1].item() for t in s.timesteps]
    assert fed == meta["steps3"]["timesteps_as_bf16"] == [1000.0, 908.0, 712.0]
    fed32 = [clip_timestep_tokens(int(t), 1, 2, 3, 1, torch.float32)[0, -1].item() for t in s.timesteps]
    assert fed32 == [999.0, 908.0, 713.0]


def test_conformance_group_incl_tiny_dit_sampling():
    """The whole `scheduler` group; with the DiT built, the 3-step sampling run on the tiny DiT is included."""
    results = list(scheduler_group.check(GOLDEN))
    failed = [(r.case, r.max_diff, r.note) for r in results if not r.passed]
    assert not failed, failed
    cases = {r.case for r in results}
    assert "run50.samples_after_step" in cases
    if HAS_DIT:
        assert {"sampling.step2.noise_pred", "sampling.latents_final"} <= cases, cases
    else:
        assert "sampling_tiny_dit" in cases  # reported as skipped


# ---- schedule and state ---------------------------------------------------------------------------


def test_schedule_formula_and_reset():
    s = FlowUniPCMultistepScheduler()
    s.set_timesteps(7, shift=3.0)
    base = np.linspace(np.float32(0.999), 0.0, 8)[:-1]
    np.testing.assert_allclose(s.sigmas[:-1].numpy(), 3 * base / (1 + 2 * base), rtol=1e-6)
    assert s.sigmas[-1] == 0 and torch.all(s.sigmas[:-1] > s.sigmas[1:])
    x, v = torch.randn(2, 3), torch.randn(2, 3)

    def run():
        s.set_timesteps(7, shift=3.0)
        y = x
        for t in s.timesteps:
            y = s.step(v, t, y)
        return y

    assert torch.equal(run(), run())  # set_timesteps resets the multistep history


def test_step_errors():
    s = FlowUniPCMultistepScheduler()
    with pytest.raises(RuntimeError, match="before set_timesteps"):
        s.step(torch.zeros(1), 999, torch.zeros(1))
    s.set_timesteps(2, shift=SHIFT)
    with pytest.raises(ValueError, match="not in the schedule"):
        s.step(torch.zeros(1), 5, torch.zeros(1))
    for t in s.timesteps:
        s.step(torch.zeros(1), t, torch.zeros(1))
    with pytest.raises(RuntimeError, match="already taken"):
        s.step(torch.zeros(1), s.timesteps[-1], torch.zeros(1))
    with pytest.raises(ValueError, match="num_steps"):
        s.set_timesteps(0)


# ---- correctness on analytic problems --------------------------------------------------------------


def _oracle(x0: torch.Tensor, sched):
    """Denoiser that knows x0: v = (x - x0) / sigma at the scheduler's current sigma."""
    def v(x, t):
        sigma = sched.sigmas[sched.step_index or 0]
        return (x - x0) / sigma
    return v


@pytest.mark.parametrize("kind", ["unipc", "euler", "few_step"])
def test_oracle_denoiser_lands_on_x0(kind):
    torch.manual_seed(0)
    x0, noise = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    sched = make_scheduler(kind, generator=torch.Generator().manual_seed(1))
    sched.set_timesteps(None if kind == "few_step" else 6, shift=SHIFT)
    x = add_noise(x0, noise, sched.sigmas[0])
    denoise = _oracle(x0, sched)
    for t in sched.timesteps:
        x = sched.step(denoise(x, t), t, x)
    assert (x - x0).abs().max() < 1e-4


def _gaussian_velocity(mu: float, s0: float):
    """Exact flow velocity E[noise - x0 | x_sigma] for data x0 ~ N(mu, s0^2) (per element)."""
    def v(x: torch.Tensor, sigma: float) -> torch.Tensor:
        a = 1 - sigma
        var = a * a * s0 * s0 + sigma * sigma
        r = x - a * mu
        e_x0 = mu + a * s0 * s0 / var * r
        e_n = sigma / var * r
        return e_n - e_x0
    return v


def _solve(sched, v, x, steps, shift):
    sched.set_timesteps(steps, shift=shift)
    for i, t in enumerate(sched.timesteps):
        x = sched.step(v(x, float(sched.sigmas[i])), t, x)
    return x


def test_unipc_is_second_order_on_exact_gaussian_flow():
    # data N(1.5, 1): the exact velocity is known, so the ODE solution is too (fine Euler as reference)
    v = _gaussian_velocity(mu=1.5, s0=1.0)
    x_init = torch.randn(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reference = _solve(FlowEulerScheduler(), v, x_init.clone(), 8000, 1.0)

    def err(sched, n):
        return float((_solve(sched, v, x_init.clone(), n, 1.0) - reference).abs().max())

    e_euler, e10, e20 = err(FlowEulerScheduler(), 20), err(FlowUniPCMultistepScheduler(), 10), \
        err(FlowUniPCMultistepScheduler(), 20)
    assert e20 < 0.2 * e_euler, (e20, e_euler)
    assert e10 / e20 > 3.0, (e10, e20)  # halving the step divides the error by ~4 (measured 4.1)
    assert err(FlowUniPCMultistepScheduler(FlowUniPCConfig(solver_order=3)), 20) < e_euler


def test_bf16_samples_stay_bf16():
    s = FlowUniPCMultistepScheduler()
    s.set_timesteps(3, shift=SHIFT)
    x = torch.randn(1, 4, 2, 2, 2, dtype=torch.bfloat16)
    for t in s.timesteps:
        x = s.step(torch.randn(1, 4, 2, 2, 2), t, x)  # float32 model output, as the DiT
        assert x.dtype == torch.bfloat16


def test_few_step_fixed_list_and_reproducible_renoise():
    s = FewStepScheduler(FewStepConfig(denoising_timesteps=(1000.0, 500.0)), torch.Generator().manual_seed(3))
    s.set_timesteps()
    assert s.sigmas.tolist() == pytest.approx([1.0, shift_sigmas(0.5, 5.0), 0.0])
    with pytest.raises(ValueError, match="2 fixed steps"):
        s.set_timesteps(4)

    def run(seed):
        s.generator = torch.Generator().manual_seed(seed)
        s.set_timesteps()
        x = torch.ones(3)
        outs = []
        for t in s.timesteps:
            x = s.step(torch.zeros(3), t, x)
            outs.append(x)
        return outs

    a, b = run(7), run(7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], torch.ones(3))  # the intermediate step re-noised x0 = 1 to the next sigma
    assert torch.equal(a[1], a[0])  # v = 0: x0 = x, and the last step returns x0 without noise


# ---- flow paths and training timesteps ---------------------------------------------------------------


def test_flow_path_identities():
    x0, n = torch.randn(5), torch.randn(5)
    sigma = torch.tensor(0.3)
    x = add_noise(x0, n, sigma)
    v = velocity_target(x0, n)
    assert torch.allclose(x0_from_velocity(x, v, sigma), x0, atol=1e-6)
    assert torch.allclose(add_noise(x0, n, 0.0), x0) and torch.allclose(add_noise(x0, n, 1.0), n)


@pytest.mark.parametrize("mode", ["uniform", "logit_normal"])
def test_training_sigmas(mode):
    cfg = FlowConfig(timestep_sampling=mode, shift=3.0)
    s = sample_training_sigmas(4096, cfg, torch.Generator().manual_seed(0))
    assert s.dtype == torch.float32 and s.shape == (4096,)
    assert 0 <= s.min() and s.max() <= 1
    assert s.median() > 0.6  # shift 3 moves the median 0.5 to 0.75
    s1 = sample_training_sigmas(4096, FlowConfig(timestep_sampling=mode, shift=1.0),
                                torch.Generator().manual_seed(0))
    assert abs(float(s1.median()) - 0.5) < 0.05
    with pytest.raises(ValueError, match="timestep_sampling"):
        sample_training_sigmas(2, FlowConfig(timestep_sampling="beta"))  # type: ignore[arg-type]


# ---- CFG and the MG3 clip loop --------------------------------------------------------------------------


def test_cfg():
    c, u = torch.tensor([2.0]), torch.tensor([1.0])
    assert apply_cfg(c, u, 5.0).item() == 6.0 and apply_cfg(c, u, 1.0).item() == 2.0
    fn = cfg_denoise_fn(lambda x, t: x + 1, lambda x, t: x, 5.0)
    assert fn(torch.zeros(1), None).item() == 5.0


@pytest.mark.parametrize("dtype,quirk,first_t", [(torch.bfloat16, True, 1000.0), (torch.bfloat16, False, 999.0),
                                                 (torch.float32, True, 999.0)])
def test_sample_clip_prefix_and_timesteps(dtype, quirk, first_t):
    B, C, F, H, W, P, tokens = 1, 4, 3, 2, 4, 1, 2  # 2x4 latents with a 1x2 patch grid -> 2 tokens per frame
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(B, C, F, H, W, generator=g).to(dtype)
    prefix = torch.randn(B, C, P, H, W, generator=g)
    seen = []

    def denoise(latents, t_tokens):
        seen.append((latents.clone(), t_tokens.clone()))
        return torch.randn(latents.shape, generator=g)  # float32, as the DiT

    out = sample_clip(denoise, noise, prefix, P, FlowUniPCMultistepScheduler(), 3, SHIFT,
                      tokens_per_frame=tokens, timestep_in_latent_dtype=quirk)
    assert out.dtype == dtype and out.shape == noise.shape
    assert torch.equal(out[:, :, :P], prefix.to(dtype))  # re-stitched
    first_latents, first_tokens = seen[0]
    assert torch.equal(first_latents[:, :, :P], prefix.to(dtype))
    assert torch.equal(first_latents[:, :, P:], noise[:, :, P:])
    assert first_tokens.shape == (B, F * tokens)
    assert first_tokens.dtype == (dtype if quirk else torch.float32)
    assert first_tokens[0, : P * tokens].abs().sum() == 0  # clean prefix: t = 0
    assert first_tokens[0, P * tokens :].eq(first_t).all()
    assert len(seen) == 3


def test_sample_clip_errors():
    noise = torch.randn(1, 2, 3, 2, 2)
    sched = FlowEulerScheduler()
    with pytest.raises(ValueError, match="clean_prefix must be"):
        sample_clip(lambda x, t: x, noise, None, 1, sched, 2, SHIFT, tokens_per_frame=1)
    with pytest.raises(ValueError, match="does not fit"):
        sample_clip(lambda x, t: x, noise, torch.zeros(1, 2, 1, 3, 2), 1, sched, 2, SHIFT, tokens_per_frame=1)
    with pytest.raises(ValueError, match="num_prefix"):
        sample_clip(lambda x, t: x, noise, torch.zeros(1, 2, 3, 2, 2), 3, sched, 2, SHIFT, tokens_per_frame=1)
    out = sample_clip(lambda x, t: torch.zeros_like(x), noise, None, 0, sched, 2, SHIFT, tokens_per_frame=1)
    assert torch.equal(out, noise)  # v = 0 leaves the sample unchanged
