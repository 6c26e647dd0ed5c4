"""Base stage: error-aware flow matching on a window of a clip's latent timeline (MG3 base model).

What it trains (SPEC "Training" 2, MG3 paper "error-aware" base model; the official training code is not
public, so the numbers here are config fields, not facts):
* Windows (train/conditioning.py): with probability `p_i2v` a first-clip window (latent 0 = the image,
  clean; the rest noisy), else P clean past latents + F noisy latents at a random position.
* Flow matching (diffusion/flow.py): one sigma per sample for all its noisy latents (the pipeline denoises a
  clip at one t), x_t = (1 - sigma) x0 + sigma eps, target v = eps - x0, MSE on the **noisy latents
  only**. The clean prefix (and memory) get timestep 0 and no loss (`LatentBatch.loss_mask`).
* ErrorBuffer: after each step the model's x0 error on the noisy latents, (x_t - sigma v_pred) - x0, is
  stored per latent [C, h, w] (CPU, detached; the most recent `capacity`). Once it holds `min_entries`,
  the clean conditioning latents are replaced by x + gamma * r with r drawn uniformly from the buffer, so
  the model learns to condition on its own imperfect outputs (as at inference, where the past latents
  are generated). The first clip's image latent stays clean (at inference it is a real encoded image).
* Resumable: the buffer is objective state (`state_dict`/`load_state_dict`, saved by the trainer per
  rank); every random draw (windows, sigmas, noise, buffer picks, retrieval seeds) comes from the global
  torch RNG, which the trainer restores.

The DiT takes one RoPE index list per call, so a micro-batch is run as one forward per group of samples
sharing (memory_latent_idx, predict_latent_idx) (`TrainWindowConfig.shared_start` makes the base stage a
single forward).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from einops import rearrange
from torch import nn

from worldstream.diffusion.flow import (
    FlowConfig,
    add_noise,
    sample_training_sigmas,
    velocity_target,
    x0_from_velocity,
)
from worldstream.train.batch import ClipLatents, LatentBatch
from worldstream.train.conditioning import (
    IntrinsicsMode,
    MemoryWindowConfig,
    TrainWindowConfig,
    build_latent_batch,
    null_memory_actions,
    sample_windows,
    token_timesteps,
)
from worldstream.train.objectives import ModelBundle

__all__ = ["ErrorBufferConfig", "ErrorBuffer", "FlowMatchingConfig", "FlowMatchingObjective"]

STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ErrorBufferConfig:
    capacity: int = 512  # residual latents kept (ring buffer: the oldest is overwritten)
    min_entries: int = 64  # injection starts once the buffer holds this many residuals
    gamma: float = 1.0  # injected conditioning = clean + gamma * residual
    collect_max_sigma: float = 1.0  # collect residuals of samples with sigma <= this (1: all)
    storage_dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16 halves the buffer's memory

    def __post_init__(self) -> None:
        if self.capacity < 1 or not 0 <= self.min_entries <= self.capacity:
            raise ValueError(f"ErrorBufferConfig: need capacity >= 1 and 0 <= min_entries <= capacity, "
                             f"got {self}")
        if self.storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"ErrorBufferConfig: storage_dtype must be one of {sorted(STORAGE_DTYPES)}")


class ErrorBuffer:
    """Bounded store of per-latent residuals [C, h, w] on the CPU; uniform sampling with replacement."""

    def __init__(self, capacity: int, dtype: torch.dtype = torch.float32):
        if capacity < 1:
            raise ValueError(f"ErrorBuffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.dtype = dtype
        self.data: torch.Tensor | None = None  # [capacity, C, h, w], allocated on the first add
        self.size = 0  # valid entries
        self.next = 0  # ring position of the next write
        self.added = 0  # residuals ever added (logs)

    def __len__(self) -> int:
        return self.size

    @property
    def entry_shape(self) -> tuple[int, ...] | None:
        return None if self.data is None else tuple(self.data.shape[1:])

    def add(self, residuals: torch.Tensor) -> None:
        """residuals [K, C, h, w]: stored detached on the CPU, overwriting the oldest when full."""
        if residuals.ndim != 4:
            raise ValueError(f"ErrorBuffer.add: expected residuals [K, C, h, w], got {list(residuals.shape)}")
        if self.data is None:
            self.data = torch.zeros(self.capacity, *residuals.shape[1:], dtype=self.dtype)
        elif tuple(residuals.shape[1:]) != self.entry_shape:
            raise ValueError(f"ErrorBuffer.add: residual latents {list(residuals.shape[1:])} do not match "
                             f"the stored {list(self.entry_shape)} (a new latent size needs a new buffer)")
        r = residuals.detach().to("cpu", self.dtype)[-self.capacity:]  # only the newest fit
        slots = (self.next + torch.arange(len(r))) % self.capacity
        self.data[slots] = r
        self.next = int((self.next + len(r)) % self.capacity)
        self.size = min(self.capacity, self.size + len(r))
        self.added += int(residuals.shape[0])

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n residuals drawn uniformly (with replacement) -> [n, C, h, w] float32 on the CPU."""
        if self.size == 0:
            raise ValueError("ErrorBuffer.sample: the buffer is empty")
        idx = torch.randint(self.size, (n,), generator=generator)
        return self.data[idx].float()

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "size": self.size, "next": self.next, "added": self.added,
                "data": None if self.data is None else self.data[: self.size].clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"ErrorBuffer.load_state_dict: saved capacity {state['capacity']} != "
                             f"configured {self.capacity}")
        data = state["data"]
        self.size, self.next, self.added = int(state["size"]), int(state["next"]), int(state["added"])
        if data is None:
            self.data = None
            return
        self.data = torch.zeros(self.capacity, *data.shape[1:], dtype=self.dtype)
        self.data[: self.size] = data.to(self.dtype)


@dataclass(frozen=True)
class FlowMatchingConfig:
    """Base-stage objective (nano defaults): windows, noise levels, error buffer."""

    window: TrainWindowConfig = field(default_factory=TrainWindowConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)  # shift 5 (MG3), logit-normal sigmas
    errors: ErrorBufferConfig = field(default_factory=ErrorBufferConfig)
    intrinsics: IntrinsicsMode = "fov90"  # MG3 always uses its 90-degree K; "clip": ClipLatents.intrinsics
    perturb_image: bool = False  # also inject errors into the first clip's image latent
    model: str = "model"  # bundle module name of the DiT


class FlowMatchingObjective:
    """`objective(bundle, batch, step) -> (loss, logs)` for the base stage; see the module docstring.

    `batch` is a `ClipLatents` (the objective picks the windows) or an already prepared `LatentBatch`.
    """

    memory: MemoryWindowConfig | None = None  # the memory stage sets this

    def __init__(self, cfg: FlowMatchingConfig = FlowMatchingConfig()):
        self.cfg = cfg
        self.buffer = ErrorBuffer(cfg.errors.capacity, STORAGE_DTYPES[cfg.errors.storage_dtype])

    @classmethod
    def from_run(cls, run) -> FlowMatchingObjective:
        """Recipe hook: `@recipe(objective=FlowMatchingObjective.from_run)` with `RunConfig.objective`."""
        return cls(run.objective)

    # ---- the pieces a recipe / test can call separately --------------------------------------------

    def min_window_start(self) -> int:
        return 1

    def check_model(self, model: nn.Module) -> None:
        """Hook for stage requirements on the DiT config."""

    def prepare(self, clip: ClipLatents, camera_block: int) -> LatentBatch:
        """Pick this micro-batch's windows (global torch RNG) and build their conditioning."""
        w = self.cfg.window
        clip.validate(w.temporal_stride)
        windows = sample_windows(clip.num_latents, len(clip), w, self.min_window_start())
        rng = None
        if self.memory is not None:  # retrieval draws from numpy; seed it from the torch stream (resumable)
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
        return build_latent_batch(clip, windows, w, camera_block, memory=self.memory, rng=rng,
                                  intrinsics=self.cfg.intrinsics)

    def inject(self, clean: torch.Tensor) -> torch.Tensor:
        """clean [B, C, K, h, w] -> clean + gamma * residuals drawn from the buffer (one per latent)."""
        B, _, K, _, _ = clean.shape
        r = self.buffer.sample(B * K).to(clean.device)  # [B*K, C, h, w]
        return clean + self.cfg.errors.gamma * rearrange(r, "(b k) c h w -> b c k h w", b=B)

    @property
    def injecting(self) -> bool:
        e = self.cfg.errors
        return e.gamma != 0 and len(self.buffer) >= max(e.min_entries, 1)

    # ---- the objective -------------------------------------------------------------------------------

    def __call__(self, bundle: ModelBundle, batch: ClipLatents | LatentBatch, step: int):
        raw = bundle.raw(self.cfg.model)
        self.check_model(raw)
        if isinstance(batch, ClipLatents):
            batch = self.prepare(batch, raw.cfg.camera_block)
        return self.loss(bundle[self.cfg.model], batch, tokens_per_frame=_tokens_per_frame(raw, batch))

    def loss(self, model: nn.Module, wb: LatentBatch, tokens_per_frame: int):
        """Error injection -> noise -> DiT (one forward per RoPE group) -> masked loss -> residuals."""
        cfg = self.cfg
        B, P = len(wb), wb.num_prefix
        device = wb.latents.device
        x0 = wb.latents.float()  # [B, C, F, h, w]
        x0_cur = x0[:, :, P:]  # [B, C, Fc, h, w]

        # 1. error injection into the clean conditioning (past latents; the first clip's image stays clean)
        injecting = self.injecting
        prefix, memory = x0[:, :, :P], None if wb.memory is None else wb.memory.float()
        if injecting and (not wb.first_clip or cfg.perturb_image):
            prefix = self.inject(prefix)
        if injecting and memory is not None:
            memory = self.inject(memory)

        # 2. noise the current latents: x_t = (1 - sigma) x0 + sigma eps, target v = eps - x0
        sigma = sample_training_sigmas(B, cfg.flow, device=device)  # [B]
        eps = torch.randn_like(x0_cur)
        s5 = sigma[:, None, None, None, None]
        x_t = add_noise(x0_cur, eps, s5)
        x_in = torch.cat([prefix, x_t], dim=2)  # [B, C, F, h, w]

        # 3. per-token timesteps: prefix 0, noisy sigma * 1000 (memory 0, passed to the DiT)
        t = token_timesteps(sigma, wb.num_frames, P, tokens_per_frame, cfg.flow.num_train_timesteps)

        # 4. the DiT, memory outputs included so that the mask below is over every frame it returns
        pred, calls = self.forward(model, wb, x_in, t, memory, tokens_per_frame)  # [B, C, M+F, h, w]

        # 5. flow-matching loss on the current (noisy) latents only
        mask = wb.loss_mask().to(device)  # [M+F]
        v_pred = pred[:, :, mask].float()  # [B, C, Fc, h, w]
        loss = (v_pred - velocity_target(x0_cur, eps)).square().mean()

        # 6. collect the model's x0 error on the current latents
        with torch.no_grad():
            residual = x0_from_velocity(x_t, v_pred.detach(), s5) - x0_cur  # [B, C, Fc, h, w]
            keep = sigma <= cfg.errors.collect_max_sigma
            if bool(keep.any()):
                self.buffer.add(rearrange(residual[keep], "b c f h w -> (b f) c h w"))
        logs = {
            "sigma": sigma.mean().detach(),
            "residual_rms": residual.square().mean().sqrt(),
            "error_buffer": float(len(self.buffer)),
            "injecting": float(injecting),
            "first_clip": float(wb.first_clip),
            "dit_calls": float(calls),
        }
        return loss, logs

    def forward(self, model: nn.Module, wb: LatentBatch, x_in: torch.Tensor, t: torch.Tensor,
                memory: torch.Tensor | None, tokens_per_frame: int) -> tuple[torch.Tensor, int]:
        """DiT outputs [B, C, M+F, h, w] (memory frames first) and the number of forwards."""
        B = len(wb)
        outs, order = [], []
        for group in wb.rope_groups():
            i = torch.tensor(group, dtype=torch.long, device=x_in.device)
            first = group[0]
            kw: dict[str, Any] = dict(
                x=x_in[i], t=t[i], context=wb.text[i], mouse_cond=wb.mouse[i], keyboard_cond=wb.keyboard[i],
                plucker_emb=wb.plucker[i], predict_latent_idx=tuple(wb.predict_latent_idx[first].tolist()),
            )
            if memory is not None:
                M = wb.num_memory
                kb, ms = null_memory_actions(len(group), M, wb.keyboard.shape[2], wb.mouse.shape[2],
                                             x_in.device)
                kw.update(x_memory=memory[i], timestep_memory=t.new_zeros(len(group), M * tokens_per_frame),
                          mouse_cond_memory=ms, keyboard_cond_memory=kb,
                          memory_latent_idx=wb.memory_latent_idx[first].tolist(), return_memory=True)
                out = torch.cat(model(**kw), dim=2)  # [b, C, M+F, h, w]
            else:
                out = model(**kw)  # [b, C, F, h, w]
            outs.append(out)
            order.extend(group)
        pred = torch.cat(outs, dim=0)
        if order != list(range(B)):
            pred = pred[torch.argsort(torch.tensor(order, device=pred.device))]
        return pred, len(outs)

    # ---- state (exact resume) --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"error_buffer": self.buffer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["error_buffer"])


def _tokens_per_frame(model: nn.Module, wb: LatentBatch) -> int:
    _, ph, pw = model.cfg.patch_size
    h, w = wb.latents.shape[-2:]
    return (h // ph) * (w // pw)
