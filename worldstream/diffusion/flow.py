"""Rectified-flow paths, the timestep shift, and training-time timestep sampling.

Conventions (Wan / MG3, facts section 5.3):
* sigma in [0, 1] is the noise level; x_sigma = (1 - sigma) * x0 + sigma * noise.
* The network predicts the velocity v = noise - x0 ("flow_prediction"), so x0 = x_sigma - sigma * v.
* The DiT's timestep is t = sigma * num_train_timesteps (1000).
* Shift (sample_shift 5.0 for MG3): sigma' = shift * sigma / (1 + (shift - 1) * sigma), which pushes sigmas
  toward 1 (more steps at high noise). The same map is used for training-time sampling here.

Training timesteps (`sample_training_sigmas`): "uniform" (sigma ~ U(0, 1)) or "logit_normal"
(sigma = sigmoid(N(mean, std)), SD3-style), then shifted. The official MG3 training code is not public;
these are the usual choices for Wan-family flow models and are config fields, not facts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch


@dataclass(frozen=True)
class FlowConfig:
    num_train_timesteps: int = 1000  # Wan/MG3 config `num_train_timesteps`; t = sigma * this
    shift: float = 5.0  # MG3 `sample_shift` (generate.py default None -> 5.0)
    timestep_sampling: Literal["uniform", "logit_normal"] = "logit_normal"
    logit_mean: float = 0.0  # logit-normal location (SD3 default)
    logit_std: float = 1.0  # logit-normal scale (SD3 default)
    sigma_min: float = 0.0  # training sigmas are clamped to [sigma_min, sigma_max] after the shift
    sigma_max: float = 1.0


def shift_sigmas(sigmas, shift: float):
    """sigma' = shift * sigma / (1 + (shift - 1) * sigma); works on floats, numpy arrays and tensors."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """x_sigma = (1 - sigma) x0 + sigma noise. `sigma` broadcasts (e.g. [B, 1, 1, 1, 1] or per frame)."""
    return (1 - sigma) * x0 + sigma * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching regression target v = noise - x0 (d x_sigma / d sigma)."""
    return noise - x0


def x0_from_velocity(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """x0 = x_sigma - sigma * v (the FlowUniPC `convert_model_output` for flow_prediction)."""
    return x - sigma * v


def sigma_to_timestep(sigma, num_train_timesteps: int = FlowConfig.num_train_timesteps):
    return sigma * num_train_timesteps


def inference_sigmas(num_steps: int, shift: float, sigma_max: float, sigma_min: float = 0.0) -> np.ndarray:
    """The Wan FlowUniPC grid: linspace(sigma_max, sigma_min, n + 1)[:-1], shifted; float64, length n.

    The final sigma (0) is appended by the samplers, not here.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return shift_sigmas(np.linspace(sigma_max, sigma_min, num_steps + 1)[:-1], shift)


def sample_training_sigmas(batch: int, config: FlowConfig = FlowConfig(),
                           generator: torch.Generator | None = None,
                           device: torch.device | str = "cpu") -> torch.Tensor:
    """Draw training noise levels [batch] float32 in [sigma_min, sigma_max] (mode and shift from `config`)."""
    if config.timestep_sampling == "uniform":
        u = torch.rand(batch, generator=generator)
    elif config.timestep_sampling == "logit_normal":
        u = torch.sigmoid(config.logit_mean + config.logit_std * torch.randn(batch, generator=generator))
    else:
        raise ValueError(f"unknown timestep_sampling {config.timestep_sampling!r} (uniform | logit_normal)")
    sigma = shift_sigmas(u, config.shift).clamp(config.sigma_min, config.sigma_max)
    return sigma.to(device=device, dtype=torch.float32)
