"""Flow-matching samplers (FlowUniPC, Euler, few-step student), CFG, and MG3's per-clip denoising loop.

Schedulers follow diffusers: `set_timesteps(n, shift=...)` then `step(model_output, t, sample) -> sample` once
per entry of `.timesteps`. The model output is the velocity v (flow_prediction, see diffusion/flow.py). The
trainer knows none of this; the streaming session calls `sample_clip`.

`FlowUniPCMultistepScheduler` reproduces the Wan/MG3 FlowUniPC scheduler (facts 5.3, golden `scheduler_*`):
UniPC (Zhao et al. 2023, "UniPC: a unified predictor-corrector framework") in its data-prediction (x0) form
with B(h) = e^h - 1 ("bh2"), on the flow parameterisation alpha = 1 - sigma, lambda = log(alpha / sigma),
x0 = x - sigma * v. Defaults match the official constructor: 1000 train steps, solver order 2,
lower_order_final, final sigma 0. Step k: (1) convert v to x0, (2) from step 1 on, correct the current
sample with the new x0 (UniC, order of the previous predictor), (3) predict the next sample (UniP, order
ramps 1 -> 2, and is 1 on the last step, which lands on sigma 0 and therefore returns the x0 prediction).
The result is cast back to the sample dtype (latents stay bf16 between steps in the bf16 pipeline).

NOTE numerics: like the official code the scalar coefficients are float32 0-dim tensors and the solved rho
weights are cast to the sample dtype (bf16 in the pipeline); golden float32 runs match to ~1e-6.

NOTE the bf16 timestep quirk (facts 5.3): the official pipeline builds the per-token timestep tensor in the
latents' dtype, so with bf16 latents the DiT sees 1000, 908, 712 for the 3-step schedule 999, 908, 713,
while the scheduler keeps using the exact sigmas. `sample_clip(..., timestep_in_latent_dtype=True)`
reproduces that (a no-op for float32 latents); pass False to always feed exact float32 timesteps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from worldstream.diffusion.flow import inference_sigmas, shift_sigmas

# (latents [B, C, F, H, W], timestep tokens [B, F * tokens_per_frame]) -> velocity [B, C, F, H, W]
DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


####################################################################################################
# Shared schedule machinery


class _FlowScheduler:
    """Sigma grid + step-index bookkeeping shared by the flow schedulers.

    After `set_timesteps(n)`: `sigmas` float32 [n + 1] (last = 0), `timesteps` [n] = sigma * train steps.
    """

    timestep_dtype: torch.dtype = torch.float32

    def __init__(self, num_train_timesteps: int, shift: float):
        n = num_train_timesteps
        # official training grid: sigmas = 1 - linspace(1, 1/N, N)[::-1] stored as float32, then the
        # constructor shift. NOTE sigma_max is therefore float32(0.999) = 0.99900001..., which the float64
        # inference grid inherits (golden sigmas are exact only with it).
        self.sigma_max = shift_sigmas(torch.tensor(1.0 - 1.0 / n, dtype=torch.float32), shift).item()
        self.sigma_min = 0.0
        self.num_train_timesteps = n
        self.default_shift = shift
        self.sigmas: torch.Tensor | None = None
        self.timesteps: torch.Tensor | None = None
        self.step_index: int | None = None

    def _set_sigmas(self, sigmas: np.ndarray, device: torch.device | str) -> None:
        """sigmas float64 [n] (without the final 0) -> self.sigmas / self.timesteps; resets the state."""
        timesteps = sigmas * self.num_train_timesteps
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=self.timestep_dtype)
        self.num_inference_steps = len(timesteps)
        self.step_index = None
        self._reset_state()

    def set_timesteps(self, num_inference_steps: int, shift: float | None = None,
                      device: torch.device | str = "cpu") -> None:
        shift = self.default_shift if shift is None else shift
        self._set_sigmas(inference_sigmas(num_inference_steps, shift, self.sigma_max, self.sigma_min), device)

    def _reset_state(self) -> None:
        pass

    def _begin_step(self, timestep) -> int:
        if self.timesteps is None:
            raise RuntimeError(f"{type(self).__name__}.step called before set_timesteps")
        if self.step_index is None:
            hits = (self.timesteps == torch.as_tensor(timestep).to(self.timesteps)).nonzero().flatten()
            if len(hits) == 0:
                raise ValueError(f"timestep {timestep} is not in the schedule {self.timesteps.tolist()}")
            # NOTE first match; diffusers/Wan take the second match of a repeated timestep (meant for
            # img2img), which skips a step when a long schedule starts on a repeated int timestep
            self.step_index = int(hits[0])
        if self.step_index >= self.num_inference_steps:
            raise RuntimeError(f"{type(self).__name__}: all {self.num_inference_steps} steps already taken")
        return self.step_index

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
        return (1 - sigma) * x0 + sigma * noise


####################################################################################################
# FlowUniPC (the MG3 scheduler)


@dataclass(frozen=True)
class FlowUniPCConfig:
    num_train_timesteps: int = 1000  # official default
    solver_order: int = 2  # official default; predictor order ramps 1 -> solver_order
    solver_type: Literal["bh1", "bh2"] = "bh2"  # B(h) = h (bh1) or e^h - 1 (bh2, official)
    lower_order_final: bool = True  # last steps use lower orders (last step order 1 -> lands on x0)
    disable_corrector: tuple[int, ...] = ()  # step indices whose following corrector is skipped
    shift: float = 1.0  # constructor shift (official 1.0); the sampling shift goes to set_timesteps


def _lam(sigma: torch.Tensor) -> torch.Tensor:
    """log-SNR of the flow path: lambda = log(alpha) - log(sigma), alpha = 1 - sigma (inf at sigma 0)."""
    return torch.log(1 - sigma) - torch.log(sigma)


class FlowUniPCMultistepScheduler(_FlowScheduler):
    """UniPC multistep (x0 form, bh2) for flow matching; see the file docstring."""

    timestep_dtype = torch.int64  # official: int64(sigma * 1000), i.e. truncated

    def __init__(self, config: FlowUniPCConfig = FlowUniPCConfig()):
        if config.solver_order < 1:
            raise ValueError(f"solver_order must be >= 1, got {config.solver_order}")
        super().__init__(config.num_train_timesteps, config.shift)
        self.config = config
        self._reset_state()

    def _reset_state(self) -> None:
        order = self.config.solver_order
        self.model_outputs: list[torch.Tensor | None] = [None] * order  # x0 predictions, newest last
        self.lower_order_nums = 0
        self.last_sample: torch.Tensor | None = None
        self.this_order = 1

    def _coefficients(self, lam_t: torch.Tensor, lam_0: torch.Tensor, lam_hist: list[torch.Tensor],
                      order: int):
        """UniPC B(h)-weights for one update from lambda_0 to lambda_t with older points `lam_hist`.

        Returns (rks [order], h_phi_1, B_h, R [order, order], b [order]): R rows are rks^(i-1).
        """
        h = lam_t - lam_0
        rks = [(lam_i - lam_0) / h for lam_i in lam_hist] + [torch.ones_like(h)]
        rks = torch.stack(rks)
        hh = -h  # x0 form
        h_phi_1 = torch.expm1(hh)
        b_h = hh if self.config.solver_type == "bh1" else torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        factorial = 1
        rows, b = [], []
        for i in range(1, order + 1):
            rows.append(rks ** (i - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        return rks, h_phi_1, b_h, torch.stack(rows), torch.stack(b)

    def _predict(self, x: torch.Tensor, order: int) -> torch.Tensor:
        """UniP: x at sigmas[i] -> x at sigmas[i + 1], using the last `order` x0 predictions."""
        i, s, m = self.step_index, self.sigmas, self.model_outputs
        m0 = m[-1]
        sigma_t, sigma_0 = s[i + 1], s[i]
        lam_hist = [_lam(s[i - j]) for j in range(1, order)]
        rks, h_phi_1, b_h, R, b = self._coefficients(_lam(sigma_t), _lam(sigma_0), lam_hist, order)
        d1s = [(m[-(j + 1)] - m0) / rks[j - 1] for j in range(1, order)]
        alpha_t = 1 - sigma_t
        x_t = sigma_t / sigma_0 * x - alpha_t * h_phi_1 * m0
        if d1s:
            rhos = torch.full((1,), 0.5) if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
            rhos = rhos.to(x.dtype)  # official casts the weights to the sample dtype
            pred_res = sum(rhos[k] * d1s[k] for k in range(len(d1s)))
            x_t = x_t - alpha_t * b_h * pred_res
        return x_t.to(x.dtype)

    def _correct(self, model_t: torch.Tensor, x: torch.Tensor, x_t: torch.Tensor, order: int) -> torch.Tensor:
        """UniC: refine x_t (at sigmas[i], predicted from x at sigmas[i - 1]) with its own x0 `model_t`."""
        i, s, m = self.step_index, self.sigmas, self.model_outputs
        m0 = m[-1]
        sigma_t, sigma_0 = s[i], s[i - 1]
        lam_hist = [_lam(s[i - (j + 1)]) for j in range(1, order)]
        rks, h_phi_1, b_h, R, b = self._coefficients(_lam(sigma_t), _lam(sigma_0), lam_hist, order)
        d1s = [(m[-(j + 1)] - m0) / rks[j - 1] for j in range(1, order)]
        rhos = torch.full((1,), 0.5) if order == 1 else torch.linalg.solve(R, b)
        rhos = rhos.to(x.dtype)
        alpha_t = 1 - sigma_t
        x_t_ = sigma_t / sigma_0 * x - alpha_t * h_phi_1 * m0
        corr_res = sum(rhos[k] * d1s[k] for k in range(len(d1s))) if d1s else 0
        out = x_t_ - alpha_t * b_h * (corr_res + rhos[-1] * (model_t - m0))
        return out.to(x.dtype)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor) -> torch.Tensor:
        """One solver step; returns the sample at the next sigma, in `sample.dtype`."""
        i = self._begin_step(timestep)
        cfg = self.config
        # 1. velocity -> x0 prediction at the current sigma
        x0 = sample - self.sigmas[i] * model_output
        # 2. corrector with the new x0 (not on the first step)
        if i > 0 and (i - 1) not in cfg.disable_corrector and self.last_sample is not None:
            sample = self._correct(x0, self.last_sample, sample, self.this_order)
        # 3. history shift, then predictor of the allowed order
        self.model_outputs = self.model_outputs[1:] + [x0]
        order = cfg.solver_order
        if cfg.lower_order_final:
            order = min(order, self.num_inference_steps - i)
        self.this_order = min(order, self.lower_order_nums + 1)  # warm-up: no more history than exists
        self.last_sample = sample
        prev = self._predict(sample, self.this_order)
        self.lower_order_nums = min(self.lower_order_nums + 1, cfg.solver_order)
        self.step_index = i + 1
        return prev


####################################################################################################
# Euler and few-step samplers


@dataclass(frozen=True)
class FlowEulerConfig:
    num_train_timesteps: int = 1000
    shift: float = 1.0  # constructor shift; the sampling shift goes to set_timesteps


class FlowEulerScheduler(_FlowScheduler):
    """First-order flow ODE: x(sigma_next) = x + (sigma_next - sigma) * v, on the FlowUniPC sigma grid.

    Float32 update, result in the sample dtype. `timesteps` are float (sigma * 1000), not truncated.
    """

    def __init__(self, config: FlowEulerConfig = FlowEulerConfig()):
        super().__init__(config.num_train_timesteps, config.shift)
        self.config = config

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor) -> torch.Tensor:
        i = self._begin_step(timestep)
        dt = self.sigmas[i + 1] - self.sigmas[i]
        prev = sample.float() + dt * model_output.float()
        self.step_index = i + 1
        return prev.to(sample.dtype)


@dataclass(frozen=True)
class FewStepConfig:
    num_train_timesteps: int = 1000
    # the student's fixed denoising timesteps before the shift (Self-Forcing / CausVid style 4-step list);
    # empty -> the FlowUniPC grid for whatever step count set_timesteps asks for
    denoising_timesteps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    shift: float = 5.0  # applied to denoising_timesteps / num_train_timesteps


class FewStepScheduler(_FlowScheduler):
    """Few-step student sampler: at each sigma predict x0 = x - sigma * v, then re-noise to the next sigma
    with fresh Gaussian noise: x' = (1 - sigma') x0 + sigma' eps (the last step returns x0).

    `generator` makes the re-noising reproducible. `timesteps` are float (sigma * 1000).
    """

    def __init__(self, config: FewStepConfig = FewStepConfig(), generator: torch.Generator | None = None):
        super().__init__(config.num_train_timesteps, 1.0)
        self.config = config
        self.generator = generator

    def set_timesteps(self, num_inference_steps: int | None = None, shift: float | None = None,
                      device: torch.device | str = "cpu") -> None:
        fixed = self.config.denoising_timesteps
        shift = self.config.shift if shift is None else shift
        if not fixed:
            if num_inference_steps is None:
                raise ValueError("FewStepScheduler without denoising_timesteps needs num_inference_steps")
            return super().set_timesteps(num_inference_steps, shift, device)
        if num_inference_steps not in (None, len(fixed)):
            raise ValueError(f"this few-step student uses {len(fixed)} fixed steps {fixed}, "
                             f"got num_inference_steps={num_inference_steps}")
        sigmas = np.asarray(fixed, dtype=np.float64) / self.num_train_timesteps
        self._set_sigmas(shift_sigmas(sigmas, shift), device)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor) -> torch.Tensor:
        i = self._begin_step(timestep)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        x0 = sample.float() - sigma * model_output.float()
        if sigma_next > 0:
            eps = torch.randn(x0.shape, generator=self.generator, dtype=x0.dtype, device=x0.device)
            x0 = (1 - sigma_next) * x0 + sigma_next * eps
        self.step_index = i + 1
        return x0.to(sample.dtype)


Scheduler = FlowUniPCMultistepScheduler | FlowEulerScheduler | FewStepScheduler


def make_scheduler(kind: Literal["unipc", "euler", "few_step"],
                   generator: torch.Generator | None = None) -> Scheduler:
    """A fresh scheduler with default config (MG3 builds a new FlowUniPC scheduler per clip)."""
    if kind == "unipc":
        return FlowUniPCMultistepScheduler()
    if kind == "euler":
        return FlowEulerScheduler()
    if kind == "few_step":
        return FewStepScheduler(generator=generator)
    raise ValueError(f"unknown sampler {kind!r} (unipc | euler | few_step)")


####################################################################################################
# Classifier-free guidance


def apply_cfg(cond: torch.Tensor, uncond: torch.Tensor, guide_scale: float) -> torch.Tensor:
    """uncond + g * (cond - uncond) (official base model: g = sample_guide_scale 5.0)."""
    return uncond + guide_scale * (cond - uncond)


def cfg_denoise_fn(denoise_cond: DenoiseFn, denoise_uncond: DenoiseFn, guide_scale: float) -> DenoiseFn:
    """Wrap two denoisers (full conditions / null conditions) into one guided denoiser."""
    def denoise(latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return apply_cfg(denoise_cond(latents, timesteps), denoise_uncond(latents, timesteps), guide_scale)
    return denoise


####################################################################################################
# MG3 per-clip loop


def clip_timestep_tokens(t, batch: int, num_frames: int, tokens_per_frame: int, num_prefix: int,
                         dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """Per-token timesteps [B, F * tokens_per_frame]: t everywhere, 0 on the clean-prefix frames.

    NOTE built directly in `dtype`, like the official `torch.full(..., dtype=latents.dtype)`: bf16 rounds t.
    """
    tt = torch.full((num_frames, tokens_per_frame), float(t), dtype=dtype, device=device)  # (F, n)
    tt[:num_prefix] = 0
    return tt.flatten().unsqueeze(0).expand(batch, -1)


def sample_clip(denoise_fn: DenoiseFn, noise: torch.Tensor, clean_prefix: torch.Tensor | None,
                num_prefix: int, scheduler: Scheduler, steps: int | None, shift: float | None, *,
                tokens_per_frame: int,
                timestep_in_latent_dtype: bool = True,
                on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Denoise one clip (facts 5.3). Pure: all model conditions live inside `denoise_fn`.

    noise [B, C, F, H, W] (its dtype is the latent dtype: bf16 in the official pipeline);
    clean_prefix [B, C, P, H, W] with P = num_prefix (the image latent on clip 0, the previous clip's last
    latents later), or None when num_prefix is 0. Returns the final latents [B, C, F, H, W].
    `on_step(i, t, latents)`, if given, sees the latents after each step (prefix re-stitched).
    """
    b, _, f = noise.shape[:3]
    if num_prefix:
        if clean_prefix is None or clean_prefix.shape[2] != num_prefix:
            got = None if clean_prefix is None else tuple(clean_prefix.shape)
            raise ValueError(f"sample_clip: clean_prefix must be [B, C, {num_prefix}, H, W], got {got}")
        if clean_prefix.shape[:2] != noise.shape[:2] or clean_prefix.shape[3:] != noise.shape[3:]:
            raise ValueError(f"sample_clip: clean_prefix {tuple(clean_prefix.shape)} does not fit noise "
                             f"{tuple(noise.shape)} (B, C, H, W must agree)")
        prefix = clean_prefix.to(noise.dtype)
    if not 0 <= num_prefix < f:
        raise ValueError(f"sample_clip: num_prefix {num_prefix} must be in [0, {f}) for a {f}-frame clip")
    t_dtype = noise.dtype if timestep_in_latent_dtype else torch.float32

    # 1. schedule and initial latents: noise with the clean prefix stitched in
    scheduler.set_timesteps(steps, shift=shift, device=noise.device)
    latents = torch.cat([prefix, noise[:, :, num_prefix:]], dim=2) if num_prefix else noise
    for i, t in enumerate(scheduler.timesteps):
        # 2. per-token timesteps (prefix frames are clean: t = 0)
        t_tokens = clip_timestep_tokens(t.item(), b, f, tokens_per_frame, num_prefix, t_dtype, noise.device)
        # 3. velocity, solver step (the solver keeps the exact sigma), re-stitch the prefix
        v = denoise_fn(latents, t_tokens)
        latents = scheduler.step(v, t, latents)
        if num_prefix:
            latents = torch.cat([prefix, latents[:, :, num_prefix:]], dim=2)
        if on_step is not None:
            on_step(i, t, latents)
    return latents
