"""Memory stage: the base objective plus memory latents retrieved by camera geometry (MG3 memory model).

What changes from the base stage (SPEC "Training" 3; facts 2, 4.7-4.11, 5.2-5.3):
* Initialised from the base model (`load_base_weights`): the memory stage adds no parameters, the
  camera/memory paths of the DiT exist from the start.
* Each later-clip window gets `num_memory` memory latents from the clip's own latents *before* the
  window, chosen by camera overlap (MG3's training sampler, facts 4.11, or the pipelines' frustum
  selector, 4.9); the last slot is the anchor (latent 1). Memory, past and current latents form one
  sequence (memory first) with unified bidirectional self-attention; memory tokens get timestep 0,
  the null actions and Plücker maps relative to their reference frames; their RoPE temporal indices are
  their absolute latent indices. First-clip windows have no memory, as the pipeline's clip 0.
* The ErrorBuffer's residuals are injected into memory and past latents alike (both are generated at
  inference); the loss stays on the current latents only.
* Head-wise RoPE jitter (`DiTConfig.sigma_theta`, 0.8 for MG3) is required by default: the official
  memory model uses it and the base weights carry over unchanged (the RoPE table is not a parameter).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from worldstream.train.conditioning import MemoryWindowConfig
from worldstream.train.objectives.flow_matching import FlowMatchingConfig, FlowMatchingObjective

__all__ = ["MemoryObjectiveConfig", "MemoryObjective", "load_base_weights"]


@dataclass(frozen=True)
class MemoryObjectiveConfig(FlowMatchingConfig):
    """Memory-stage objective: the base config + retrieval (nano defaults: 4 memory latents incl. anchor)."""

    memory: MemoryWindowConfig = field(default_factory=MemoryWindowConfig)
    require_rope_jitter: bool = True  # refuse a DiT with sigma_theta == 0 (MG3's memory model uses 0.8)


class MemoryObjective(FlowMatchingObjective):
    """`objective(bundle, batch, step) -> (loss, logs)` for the memory stage (see the module docstring)."""

    def __init__(self, cfg: MemoryObjectiveConfig = MemoryObjectiveConfig()):
        super().__init__(cfg)
        self.memory = cfg.memory

    def min_window_start(self) -> int:
        """Enough history for distinct memories: latents 1 .. start-1 hold >= num_memory - 1 candidates."""
        return max(1, self.memory.num_memory)

    def check_model(self, model: nn.Module) -> None:
        if self.cfg.require_rope_jitter and model.cfg.sigma_theta <= 0:
            raise ValueError(f"the memory stage uses head-wise RoPE jitter but the DiT has sigma_theta="
                             f"{model.cfg.sigma_theta}; build it with dataclasses.replace(cfg, "
                             "sigma_theta=0.8) (the base weights load unchanged) or set "
                             "objective.require_rope_jitter=false")

    def loss(self, model, wb, tokens_per_frame):
        loss, logs = super().loss(model, wb, tokens_per_frame)
        if wb.memory_latent_idx is not None:
            idx = wb.memory_latent_idx.float()
            logs = {**logs, "memory_distinct": _distinct_fraction(wb.memory_latent_idx),
                    "memory_age": (wb.predict_latent_idx[:, :1].float() - idx).mean()}
        return loss, logs


def _distinct_fraction(idx) -> float:
    """Mean fraction of distinct memory latents per sample (duplicates are allowed, as officially)."""
    return sum(len(set(row)) / len(row) for row in idx.tolist()) / len(idx)


def load_base_weights(model: nn.Module, path: str | os.PathLike, module: str = "model", ema: bool = True
                      ) -> nn.Module:
    """Initialise the memory-stage DiT from base-stage weights (strict keys and shapes).

    `path` is a .safetensors file, a trainer checkpoint folder (`<module>_ema.safetensors` when `ema`,
    else `<module>.safetensors`), or a run folder (its `ckpt/latest`).
    """
    from worldstream.checkpoint import check_state_dict, load_state_dict_file
    from worldstream.train.trainer import latest_checkpoint

    path = Path(path)
    if path.is_dir() and not (path / f"{module}.safetensors").is_file():
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise FileNotFoundError(f"{path} holds neither {module}.safetensors nor a ckpt/latest checkpoint")
        path = ckpt
    if path.is_dir():
        names = ([f"{module}_ema.safetensors"] if ema else []) + [f"{module}.safetensors"]
        found = [path / n for n in names if (path / n).is_file()]
        if not found:
            raise FileNotFoundError(f"{path} has none of {names}")
        path = found[0]
    state = load_state_dict_file(path)
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True)
    return model
