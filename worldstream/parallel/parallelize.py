"""parallelize(bundle, cfg, world): apply distribution to a stage's modules from the outside.

Notable:
* Model code stays single-device (torchtitan's rule); the trainer calls this once, after the
  bundle is built and EMA copies are taken, before the optimizers are created. The order for a model
  is sequence parallel (sequence.py, inference today) -> activation checkpointing -> compile (not offered
  yet) -> FSDP2 / DDP.
* Modes: "none", "ddp" (DistributedDataParallel over the trained modules; frozen modules such as DMD's
  teacher stay plain replicas) and "fsdp2" (`fully_shard` per transformer block, then the root: params,
  grads and optimizer state sharded over all ranks; gradients averaged like DDP). "auto" resolves to
  "ddp" when WORLD_SIZE > 1. A module's transformer blocks are its `blocks` ModuleList (WorldDiT);
  modules without one are sharded as a whole.
* Activation checkpointing (`activation_checkpointing=True`, any mode): each block's activations are
  recomputed in backward (torch's composable `checkpoint`: non-reentrant torch.utils.checkpoint run from
  module hooks, so parameter names and state-dict keys do not change).
* NOTE FSDP2 shards parameters in place (they become DTensors): the trainer builds optimizers from
  `bundle.raw(name).parameters()` *after* this call and reads/writes weights and optimizer state only
  through the helpers below, which gather full tensors (a collective under FSDP2: every rank calls them)
  and keep the on-disk formats of the unsharded modes, so checkpoints move between modes and world sizes.
* NOTE FSDP2 limits (torch 2.13, also on CPU/gloo where everything here is tested):
  - `autograd.backward(loss, inputs=params)` silently produces no gradient for sharded parameters (they
    are not the autograd leaves; the unsharded copies are), so the trainer backpropagates without
    `inputs` and fsdp2 takes one trained module per stage (multi-module stages such as DMD use ddp).
  - EMA copies are sharded like their module (the update stays a local lerp); a sharded module's forward
    is a collective, so a hook that runs a trained module or its EMA must run on every rank
    (`rank0_only=False`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

    from worldstream.train.config import ParallelConfig
    from worldstream.train.objectives import ModelBundle

MODES = ("none", "ddp", "fsdp2")


def resolve_mode(cfg: ParallelConfig, world_size: int) -> str:
    """The effective mode ("none" | "ddp" | "fsdp2"); a clear error for inconsistent launches."""
    mode = cfg.mode
    if mode == "auto":
        mode = "ddp" if world_size > 1 else "none"
    if mode == "none" and world_size > 1:
        raise ValueError(f"launched with WORLD_SIZE={world_size} but parallel.mode='none': the ranks would "
                         "train diverging replicas; use parallel.mode=ddp or fsdp2 (or auto)")
    if mode not in MODES:
        raise ValueError(f"parallel.mode={mode!r} is not supported (supported: auto, {', '.join(MODES)})")
    return mode


def parallelize(bundle: ModelBundle, cfg: ParallelConfig, world_size: int, device: torch.device) -> str:
    """Apply AC and wrap/shard the trained modules of `bundle` in place for `cfg`; returns the effective
    mode ("none" on a single process)."""
    mode = resolve_mode(cfg, world_size)
    for name in bundle.trained:
        module = bundle.raw(name)
        if not any(p.requires_grad for p in module.parameters()):
            raise ValueError(f"module {name!r} is trained (in optim) but has no parameter with requires_grad")
    if mode == "fsdp2" and len(bundle.trained) > 1:
        raise ValueError(f"parallel.mode=fsdp2 trains one module per stage, this stage trains "
                         f"{list(bundle.trained)}: its losses are kept apart with "
                         "autograd.backward(inputs=...), which yields no gradient for FSDP2-sharded "
                         "parameters; use parallel.mode=ddp")

    # 1. activation checkpointing (any mode; trained modules only)
    if cfg.activation_checkpointing:
        for name in bundle.trained:
            apply_activation_checkpointing(bundle.raw(name), name)
    if mode == "none" or world_size == 1:
        return "none"
    if not torch.distributed.is_initialized():
        raise RuntimeError(f"parallel.mode={mode} needs an initialised process group (launch with torchrun)")

    # 2. data parallel: replicas (DDP) or shards (FSDP2)
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index] if device.type == "cuda" else None
        for name in bundle.trained:
            # NOTE DDP syncs rank 0's buffers before each training forward (a collective): hooks that run on
            # rank 0 only must call bundle.raw(name) / bundle.for_eval(name), never the wrapped module
            bundle.wrap(name, DistributedDataParallel(bundle.raw(name), device_ids=device_ids))
        return mode
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (world_size,))
    for name in bundle.trained:
        apply_fsdp2(bundle.raw(name), mesh)
        if name in bundle.ema:  # sharded the same way: update_ema lerps local shards
            apply_fsdp2(bundle.ema[name], mesh)
    return mode


# -------------------------------------------------------------------------------------------------
# the pieces (also usable on their own, e.g. for inference or a custom loop)


def transformer_blocks(module: nn.Module) -> list[nn.Module]:
    """The units of sharding and recomputation: `module.blocks` when it is a ModuleList, else none."""
    blocks = getattr(module, "blocks", None)
    return list(blocks) if isinstance(blocks, nn.ModuleList) else []


def apply_activation_checkpointing(module: nn.Module, name: str = "module") -> nn.Module:
    """Recompute each transformer block's activations in backward (in place; names unchanged)."""
    from torch.distributed._composable import checkpoint

    blocks = transformer_blocks(module)
    if not blocks:
        raise ValueError(f"activation checkpointing: {name!r} ({type(module).__name__}) has no `blocks` "
                         "ModuleList to checkpoint; set parallel.activation_checkpointing=false")
    for block in blocks:
        checkpoint(block)
    return module


def apply_fsdp2(module: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """`fully_shard` each transformer block, then the root (which takes the remaining parameters)."""
    from torch.distributed.fsdp import fully_shard

    for block in transformer_blocks(module):
        fully_shard(block, mesh=mesh)
    fully_shard(module, mesh=mesh)
    return module


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def unsharded_class(module: nn.Module) -> type:
    """The module's own class (FSDP2 swaps in a subclass named FSDP<name>)."""
    from torch.distributed.fsdp import FSDPModule

    cls = type(module)
    if isinstance(module, FSDPModule):
        cls = next(c for c in cls.__mro__[1:] if not issubclass(c, FSDPModule))
    return cls


# -------------------------------------------------------------------------------------------------
# weights and optimizer state in full (checkpoint formats of the unsharded modes)
#
# NOTE sharded tensors are gathered with DTensor.full_tensor() (an all-gather: every rank iterates the same
# keys in the same order) and re-sharded with distribute_tensor(src_data_rank=None), which slices the full
# tensor that every rank holds, without communication.


def _is_dtensor(v: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(v, DTensor)


def _full(v: Any) -> Any:
    return v.full_tensor() if _is_dtensor(v) else v


def _shard_like(full: torch.Tensor, like: Any) -> Any:
    """`full` laid out like the DTensor `like` (a local slice; no communication); else unchanged."""
    if not _is_dtensor(like) or full.shape != like.shape:
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The complete, unsharded weights of a (raw) module, on CPU, with no two entries sharing memory.

    NOTE a collective for an FSDP2-sharded module: every rank calls it and gets the full weights. Tied
    weights (one tensor under two names) are cloned: safetensors refuses shared storage.
    """
    out, seen = {}, set()
    for k, v in module.state_dict().items():
        v = _full(v.detach()).cpu().contiguous()
        ptr = v.untyped_storage().data_ptr() if v.numel() else None
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def load_full_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load complete weights into a (raw) module; raises with the mismatching keys/shapes.

    For an FSDP2-sharded module every rank passes the full weights and keeps its shards."""
    own = module.state_dict()  # a DTensor's shape is the global one
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
    module.load_state_dict({k: _shard_like(v, own[k]) for k, v in state.items()}, strict=True)


def optimizer_state_dict(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`optimizer.state_dict()` with sharded state tensors gathered in full (the file an unsharded run
    writes). NOTE a collective for an FSDP2-sharded module: every rank calls it."""
    state = optimizer.state_dict()
    if not is_sharded(module):
        return state
    full = {i: {k: _full(v) for k, v in s.items()} for i, s in sorted(state["state"].items())}
    return {"state": full, "param_groups": state["param_groups"]}


def load_optimizer_state_dict(
    module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Inverse of `optimizer_state_dict` (every rank passes the full state; no communication)."""
    if is_sharded(module):
        params = [p for g in optimizer.param_groups for p in g["params"]]
        saved = [i for g in state["param_groups"] for i in g["params"]]
        if len(saved) != len(params):
            raise ValueError(f"optimizer state holds {len(saved)} parameters, the optimizer has "
                             f"{len(params)}")
        param_of = dict(zip(saved, params))
        state = {**state, "state": {i: {k: _shard_like(v, param_of[i]) for k, v in s.items()}
                                    for i, s in state["state"].items()}}
    optimizer.load_state_dict(state)
