"""The objective contract: `objective(bundle, batch, step) -> (loss, logs)`.

Notable:
* An objective is any callable taking the stage's `ModelBundle`, one micro-batch and the 0-based
  trainer step, and returning `(loss, logs)` (diamond's `LossAndLogs`, Self-Forcing's
  `(loss, log_dict)`). `loss` is a scalar tensor when one module is trained, else a dict keyed by
  module name ({"critic": ..., "student": ...}); the trainer backpropagates each loss into *its*
  module's parameters only (`backward(inputs=...)`), so a student loss that flows through the
  critic never leaves gradients on the critic.
* `bundle.due` names the modules the trainer updates at this step (per-module `update_every`);
  objectives may skip the losses of the others (their losses are then ignored anyway).
* `bundle[name]` is the module to call for a training forward (DDP-wrapped when distributed);
  `bundle.raw(name)` is the plain module. NOTE under DDP, a forward whose output is not
  backpropagated into that module at this step (a frozen use of the critic, a student forward
  when only the critic is due) must use `bundle.raw(name)` or run under `torch.no_grad()`: a
  DDP module that ran forward with grad but received no gradient breaks the next step.
* Objectives that keep state across steps (MG3's ErrorBuffer) expose `state_dict()` /
  `load_state_dict(state)` (tensors, numbers, strings, lists, dicts only): the trainer saves it per
  rank in every checkpoint, so resume stays exact.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

Loss = torch.Tensor | Mapping[str, torch.Tensor]
Logs = Mapping[str, float | torch.Tensor]


class ModelBundle:
    """The named modules of one stage: trained ones (own optimizer, see `RunConfig.optim`) and frozen ones."""

    def __init__(self, modules: Mapping[str, nn.Module]):
        if not modules:
            raise ValueError("a ModelBundle needs at least one module")
        for name, m in modules.items():
            if not isinstance(m, nn.Module):
                raise ValueError(f"bundle module {name!r} is a {type(m).__name__}, expected an nn.Module")
        self._raw: dict[str, nn.Module] = dict(modules)
        self._call: dict[str, nn.Module] = dict(modules)  # what objectives call (wrapped by parallelize)
        self.ema: dict[str, nn.Module] = {}  # EMA copies of trained modules (set by the trainer)
        self.trained: tuple[str, ...] = ()  # set by the trainer from RunConfig.optim
        self.due: frozenset[str] = frozenset()  # modules updated at the current step

    def __getitem__(self, name: str) -> nn.Module:
        if name not in self._call:
            raise KeyError(f"bundle has no module {name!r}; modules: {', '.join(self._call)}")
        return self._call[name]

    def __contains__(self, name: object) -> bool:
        return name in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._raw)

    @property
    def frozen(self) -> tuple[str, ...]:
        return tuple(n for n in self._raw if n not in self.trained)

    def raw(self, name: str) -> nn.Module:
        """The plain single-device module (for checkpoints, EMA, non-training forwards)."""
        if name not in self._raw:
            raise KeyError(f"bundle has no module {name!r}; modules: {', '.join(self._raw)}")
        return self._raw[name]

    def wrap(self, name: str, module: nn.Module) -> None:
        """Replace the callable of `name` (parallelize: DDP/FSDP wrappers)."""
        self.raw(name)  # raises on an unknown name
        self._call[name] = module

    def for_eval(self, name: str) -> nn.Module:
        """The EMA copy when there is one, else the raw module (sample/eval hooks)."""
        return self.ema.get(name) or self.raw(name)


@runtime_checkable
class Objective(Protocol):
    def __call__(self, bundle: ModelBundle, batch: Any, step: int) -> tuple[Loss, Logs]: ...


def split_losses(loss: Loss, trained: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Normalise an objective's loss to {module: scalar}; a bare tensor belongs to the only trained module."""
    if isinstance(loss, torch.Tensor):
        if len(trained) != 1:
            raise ValueError(f"the objective returned one loss tensor but {len(trained)} modules are trained "
                             f"({', '.join(trained)}); return a dict keyed by module name")
        loss = {trained[0]: loss}
    if not isinstance(loss, Mapping):
        raise ValueError(f"the objective returned a loss of type {type(loss).__name__}; expected a tensor or "
                         "a dict of tensors keyed by module name")
    out = {}
    for name, value in loss.items():
        if name not in trained:
            raise ValueError(f"the objective returned a loss for {name!r}, which is not a trained module "
                             f"(trained: {', '.join(trained)}; frozen modules get no loss)")
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"the loss of {name!r} must be a scalar tensor, got {shape}")
        out[name] = value.reshape(())
    return out
