"""Stage 1 objectives: the VAE (reconstruction + KL) and LightVAE (distillation of a pruned decoder).

What they train (SPEC "Training" 1; MG3 facts 6: the official VAE/LightVAE training code is not public, so
the weights below are config fields, not facts):
* `VAEObjective`: video window [B, 3, 1+4k, H, W] in [-1, 1] -> encoder moments (mu, logvar) -> a posterior
  sample z = mu + std * eps (or mu) -> decoder -> reconstruction. Loss = l1 * |x - x^| + mse * (x - x^)^2 +
  kl * KL(N(mu, std) || N(0, 1)), each a mean over elements. The KL is kept small: it only keeps the latents
  bounded and smooth for the DiT, reconstruction decides quality.
* `LightVAEObjective`: MG-LightVAE style. The full VAE ("teacher", frozen) encodes the window and decodes
  it; the pruned decoder ("student", made by `prune_decoder` from the teacher, so it starts close) decodes
  the same mean latents. Loss = teacher * |student - teacher frames| + gt * |student - x|. The student
  never encodes (a LightVAE encodes with the full encoder), so its encoder is frozen by the recipe.

Both run the networks in one pass over the window (first-chunk rule, `VAE.forward`: `forward(video)` for the
VAE, the decode-only `forward(z=mu)` for the student, so both work under DDP) under the trainer's bf16
autocast; losses are computed in float32. Logged: `l1`, `mse`, `psnr` (dB on [0, 1] pixels),
`kl`, `mu_std`, `logvar` (VAE); `l1_teacher`, `l1_gt`, `psnr`, `psnr_teacher` (LightVAE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from worldstream.model.vae import VAE
from worldstream.train.objectives import ModelBundle

__all__ = [
    "VAEObjectiveConfig",
    "VAEObjective",
    "LightVAEObjectiveConfig",
    "LightVAEObjective",
    "psnr",
    "decode_train",
    "check_video",
    "init_logvar",
]

PIXEL_RANGE = 2.0  # videos live in [-1, 1]: PSNR is computed on [0, 1], i.e. mse / PIXEL_RANGE**2


@dataclass(frozen=True)
class VAEObjectiveConfig:
    l1_weight: float = 1.0  # mean |x - x^| over pixels
    mse_weight: float = 1.0  # mean (x - x^)^2; optional (0 = L1 only); pushes PSNR
    kl_weight: float = 1e-4  # mean KL per latent element; small (latents only need to stay bounded)
    sample_posterior: bool = True  # z = mu + std * eps while training (else z = mu)
    # initial logvar (bias of the logvar half of `conv1`, set by the recipe's build): a fresh logvar ~ 0
    # means std-1 noise on the latents, and Adam moves a bias by only ~lr per step, so a short run would
    # train the decoder on very noisy latents (measured: train PSNR 18 dB after 170 steps, logvar -0.1)
    logvar_init: float = -6.0
    logvar_min: float = -30.0  # logvar is clamped before the KL (numerical safety)
    logvar_max: float = 20.0


@dataclass(frozen=True)
class LightVAEObjectiveConfig:
    teacher_weight: float = 1.0  # mean |student - teacher decode|
    gt_weight: float = 1.0  # mean |student - x| (ground truth)


# -------------------------------------------------------------------------------------------------
# helpers


def psnr(mse: torch.Tensor | float) -> float:
    """PSNR in dB of a mean squared error measured on [-1, 1] pixels (i.e. on [0, 1] after rescaling)."""
    m = float(mse) / PIXEL_RANGE**2
    return 10.0 * math.log10(1.0 / max(m, 1e-12))


def check_video(video: torch.Tensor, vae: VAE) -> None:
    """Raise ValueError naming the problem if `video` is not [B, 3, 1+4k, H, W] for this VAE."""
    if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[1] != vae.cfg.in_channels:
        shape = list(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"video: expected [B, {vae.cfg.in_channels}, 1+{vae.cfg.temporal_stride}k, H, W], "
                         f"got {shape}")
    f, h, w = video.shape[2:]
    t, s = vae.cfg.temporal_stride, vae.cfg.spatial_stride
    if (f - 1) % t or h % s or w % s:
        raise ValueError(f"video: {f} frames of {h}x{w}; expected 1+{t}k frames and sizes divisible by {s}")


def decode_train(vae: VAE, z: torch.Tensor) -> torch.Tensor:
    """Differentiable one-pass decode of raw latents z [B, z, T, h, w] -> [B, 3, 4T-3, H, W], unclamped.

    `VAE.decode_raw` (first-chunk rule, no de-normalisation, no clamp) on the plain module; a trained,
    possibly wrapped module is called as `module(z=z)` instead (see `LightVAEObjective`).
    """
    return vae.decode_raw(z)


@torch.no_grad()
def init_logvar(vae: VAE, value: float) -> VAE:
    """Set the bias of the logvar outputs of `vae.conv1` (moments -> (mu, logvar)) to `value`."""
    vae.conv1.bias[vae.cfg.z_dim :].fill_(value)
    return vae


def _video(batch) -> torch.Tensor:
    """The micro-batch's video [B, 3, F, H, W] in [-1, 1] (a tensor, or an object with `.video`)."""
    return batch if isinstance(batch, torch.Tensor) else batch.video


# -------------------------------------------------------------------------------------------------
# objectives


@dataclass
class VAEObjective:
    """Reconstruction + KL of the trained module "vae" (see the module docstring)."""

    cfg: VAEObjectiveConfig
    module: str = "vae"  # bundle name of the trained VAE

    @classmethod
    def from_run(cls, run) -> VAEObjective:
        return cls(run.objective)

    def __call__(self, bundle: ModelBundle, batch, step: int):
        c = self.cfg
        x = _video(batch)  # [B, 3, F, H, W]
        check_video(x, bundle.raw(self.module))
        # 1. encode -> moments -> posterior sample (or mu) -> decode, one pass (VAE.forward: DDP-safe)
        rec, mu, logvar = bundle[self.module](x, sample=c.sample_posterior)
        rec, mu = rec.float(), mu.float()
        logvar = logvar.float().clamp(c.logvar_min, c.logvar_max)
        # 2. reconstruction
        err = rec - x.float()
        l1, mse = err.abs().mean(), err.pow(2).mean()
        # 3. KL(N(mu, sigma) || N(0, 1)) per latent element
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        loss = c.l1_weight * l1 + c.mse_weight * mse + c.kl_weight * kl
        logs = {"l1": l1.detach(), "mse": mse.detach(), "psnr": psnr(mse.detach()), "kl": kl.detach(),
                "mu_std": mu.detach().std(), "logvar": logvar.detach().mean()}
        return loss, logs


@dataclass
class LightVAEObjective:
    """Distil the pruned decoder "student" from the frozen full VAE "teacher" (module docstring)."""

    cfg: LightVAEObjectiveConfig
    teacher: str = "teacher"
    student: str = "student"

    @classmethod
    def from_run(cls, run) -> LightVAEObjective:
        return cls(run.objective)

    def __call__(self, bundle: ModelBundle, batch, step: int):
        c = self.cfg
        x = _video(batch).float()  # [B, 3, F, H, W]
        teacher = bundle.raw(self.teacher)
        check_video(x, teacher)
        # 1. the teacher's mean latents and decode (no gradient)
        with torch.no_grad():
            mu = teacher.moments(x)[0]  # [B, z, T, h, w]
            target = decode_train(teacher, mu).float().clamp(-1.0, 1.0)  # what inference shows
        # 2. the student decodes the same latents: through the module's forward (decode-only mode), so a
        # DDP/FSDP2 wrapper syncs its gradients
        out = bundle[self.student](z=mu).float()
        # 3. losses
        l1_t, l1_gt = (out - target).abs().mean(), (out - x).abs().mean()
        loss = c.teacher_weight * l1_t + c.gt_weight * l1_gt
        logs = {"l1_teacher": l1_t.detach(), "l1_gt": l1_gt.detach(),
                "psnr": psnr((out.detach().clamp(-1, 1) - x).pow(2).mean()),
                "psnr_teacher": psnr((target - x).pow(2).mean())}
        return loss, logs
