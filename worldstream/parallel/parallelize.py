"""parallelize(bundle, cfg, world): apply distribution to a stage's modules from the outside.

Notable:
* Model code stays single-device (torchtitan's rule); the trainer calls this once, after the
  bundle is built and EMA copies are taken, before the optimizers are created.
* Modes today: "none" and "ddp" (DistributedDataParallel over the trained modules; frozen modules
  such as DMD's teacher stay plain replicas). "auto" resolves to "ddp" when WORLD_SIZE > 1.
* NOTE designed for FSDP2 later: `fully_shard` shards parameters in place, so the trainer already
  builds optimizers from `bundle.raw(name).parameters()` *after* this call, and reads/writes
  weights only through `full_state_dict` / `load_full_state_dict` below (which will switch to
  torch.distributed.checkpoint.state_dict's full-state helpers for sharded modules). The planned
  order for the big model is sequence parallel -> activation checkpointing -> compile -> FSDP2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from worldstream.train.config import ParallelConfig
    from worldstream.train.objectives import ModelBundle


def resolve_mode(cfg: ParallelConfig, world_size: int) -> str:
    """The effective mode ("none" | "ddp"); a clear error for inconsistent launches."""
    mode = cfg.mode
    if mode == "auto":
        mode = "ddp" if world_size > 1 else "none"
    if mode == "none" and world_size > 1:
        raise ValueError(f"launched with WORLD_SIZE={world_size} but parallel.mode='none': the ranks would "
                         "train diverging replicas; use parallel.mode=ddp (or auto)")
    if mode not in ("none", "ddp"):
        raise ValueError(f"parallel.mode={mode!r} is not supported yet (supported: auto, none, ddp)")
    return mode


def parallelize(bundle: ModelBundle, cfg: ParallelConfig, world_size: int, device: torch.device) -> str:
    """Wrap the trained modules of `bundle` in place for `cfg.mode`; returns the effective mode."""
    mode = resolve_mode(cfg, world_size)
    if mode == "none" or world_size == 1:
        return "none"
    if not torch.distributed.is_initialized():
        raise RuntimeError("parallel.mode=ddp needs an initialised process group (launch with torchrun)")
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    for name in bundle.trained:
        module = bundle.raw(name)
        if not any(p.requires_grad for p in module.parameters()):
            raise ValueError(f"module {name!r} is trained (in optim) but has no parameter with requires_grad")
        # NOTE DDP syncs rank 0's buffers before each training forward (a collective): hooks that run on
        # rank 0 only must call bundle.raw(name) / bundle.for_eval(name), never the wrapped module
        bundle.wrap(name, DistributedDataParallel(module, device_ids=device_ids))
    return mode


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The complete, unsharded weights of a (raw) module, on CPU, with no two entries sharing memory.

    NOTE tied weights (one tensor under two names) are cloned: safetensors refuses shared storage.
    """
    out, seen = {}, set()
    for k, v in module.state_dict().items():
        v = v.detach().cpu().contiguous()
        ptr = v.untyped_storage().data_ptr() if v.numel() else None
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def load_full_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load complete weights into a (raw) module; raises with the mismatching keys/shapes."""
    own = module.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    shapes = [f"{k}: checkpoint {list(state[k].shape)} vs model {list(own[k].shape)}"
              for k in own.keys() & state.keys() if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(sorted(shapes)[:5]))
        raise ValueError("; ".join(parts))
    module.load_state_dict(state, strict=True)
