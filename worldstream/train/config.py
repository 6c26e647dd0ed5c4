"""RunConfig: one typed, frozen description of a training run, and `--set a.b=v` overrides.

Notable:
* A run is a Python recipe (worldstream/train/recipes/) returning a `RunConfig`; variants are made
  with `dataclasses.replace`, the CLI adds `--set a.b=v` (torchtitan's "Python dataclass registry",
  no hydra). `model`, `data` and `objective` are the recipe's own frozen dataclasses; the loop
  settings (`optim`, `schedule`, `logging`, `checkpoint`, `parallel`) are defined here.
* `optim` is keyed by module name: every module named there is trained with its own AdamW and
  update ratio (DMD: critic every step, student every k-th); bundle modules not named are frozen.
* Overrides walk the *values* (so recipe dataclasses behind `Any` work), coerce the string with the
  field's type hint (int/float/bool/str/Literal/tuple/Optional/Path) and fail with the key, the
  expected type and the valid keys (with a close-match suggestion) on any mistake.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# -------------------------------------------------------------------------------------------------
# sub-configs


@dataclass(frozen=True)
class OptimConfig:
    """AdamW + update cadence + EMA of one trained module."""

    lr: float = 1e-3  # peak learning rate (reached after schedule.warmup_steps)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0  # decoupled (AdamW)
    grad_clip: float = 1.0  # max global L2 norm of this module's grads; 0 disables clipping
    update_every: int = 1  # updated at trainer steps where step % update_every == 0 (DMD student: 5)
    ema_decay: float = 0.0  # EMA of the weights, updated after every optimizer step; 0 disables


@dataclass(frozen=True)
class ScheduleConfig:
    steps: int = 1000  # total trainer steps of the run (the LR schedule spans these)
    warmup_steps: int = 0  # linear warmup from lr/warmup_steps to lr
    decay: Literal["cosine", "constant"] = "cosine"  # after warmup
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of the peak lr


@dataclass(frozen=True)
class LoggingConfig:
    every_n_steps: int = 1  # one CSV/TensorBoard row every n steps
    csv: bool = True  # DIR/train.csv
    tensorboard: bool = True  # DIR/tb/
    progress: bool = True  # tqdm bar on stderr
    sample_every_n_steps: int = 0  # cadence of the recipe's sample/eval hooks; 0 disables them


@dataclass(frozen=True)
class CheckpointConfig:
    every_n_steps: int = 500  # DIR/ckpt/step_XXXXXX/ every n steps; 0 = only at the end
    keep_last: int = 3  # older step_* folders are deleted (the `latest` one never is)
    save_final: bool = True  # also save when the run ends (or stops early)


@dataclass(frozen=True)
class ParallelConfig:
    # "auto": DDP when launched with WORLD_SIZE > 1 (torchrun), else single process. "fsdp2": params,
    # grads and optimizer state sharded per transformer block (one trained module; parallel/parallelize.py)
    mode: Literal["auto", "none", "ddp", "fsdp2"] = "auto"
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl with CUDA, else gloo
    activation_checkpointing: bool = False  # recompute each block's activations in backward (any mode)


@dataclass(frozen=True)
class RunConfig:
    recipe: str = ""  # filled in by the recipe registry
    seed: int = 0  # torch/numpy/python RNGs before the models are built
    model: Any = None  # the recipe's model config dataclass(es)
    data: Any = None  # the recipe's data config dataclass
    objective: Any = None  # the recipe's objective config dataclass
    optim: dict[str, OptimConfig] = field(default_factory=lambda: {"model": OptimConfig()})
    schedule: ScheduleConfig = ScheduleConfig()
    logging: LoggingConfig = LoggingConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    parallel: ParallelConfig = ParallelConfig()
    grad_accum: int = 1  # micro-batches per trainer step (per rank)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: torch.autocast around the objective
    max_nonfinite_steps: int = 5  # abort after this many consecutive non-finite losses/grad norms

    def validate(self) -> RunConfig:
        """Raise ValueError naming the field on an inconsistent value."""

        def need(ok: bool, key: str, what: str, value: Any) -> None:
            if not ok:
                raise ValueError(f"config {key}: expected {what}, got {value!r}")

        need(isinstance(self.optim, dict) and len(self.optim) > 0, "optim",
             "a non-empty {module: OptimConfig}", self.optim)
        for name, o in self.optim.items():
            need(isinstance(o, OptimConfig), f"optim.{name}", "an OptimConfig", o)
            need(o.lr >= 0, f"optim.{name}.lr", ">= 0", o.lr)
            need(o.update_every >= 1, f"optim.{name}.update_every", ">= 1", o.update_every)
            need(0.0 <= o.ema_decay < 1.0, f"optim.{name}.ema_decay", "in [0, 1)", o.ema_decay)
            need(o.grad_clip >= 0, f"optim.{name}.grad_clip", ">= 0", o.grad_clip)
        s = self.schedule
        need(s.steps >= 1, "schedule.steps", ">= 1", s.steps)
        need(s.warmup_steps >= 0, "schedule.warmup_steps", ">= 0", s.warmup_steps)
        need(0.0 <= s.min_lr_ratio <= 1.0, "schedule.min_lr_ratio", "in [0, 1]", s.min_lr_ratio)
        need(self.grad_accum >= 1, "grad_accum", ">= 1", self.grad_accum)
        need(self.max_nonfinite_steps >= 1, "max_nonfinite_steps", ">= 1", self.max_nonfinite_steps)
        need(self.logging.every_n_steps >= 1, "logging.every_n_steps", ">= 1", self.logging.every_n_steps)
        need(self.logging.sample_every_n_steps >= 0, "logging.sample_every_n_steps", ">= 0",
             self.logging.sample_every_n_steps)
        need(self.checkpoint.every_n_steps >= 0, "checkpoint.every_n_steps", ">= 0",
             self.checkpoint.every_n_steps)
        need(self.checkpoint.keep_last >= 1, "checkpoint.keep_last", ">= 1", self.checkpoint.keep_last)
        return self


# -------------------------------------------------------------------------------------------------
# serialisation and comparison


def to_dict(obj: Any) -> Any:
    """JSON-able nested dict of a config (dataclasses, dicts, tuples, paths, scalars)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"config value of type {type(obj).__name__} is not serialisable: {obj!r}")


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are leaves."""
    if not isinstance(d, dict) or not d:
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def diff_keys(a: dict, b: dict) -> list[str]:
    """Dotted keys whose values differ between two `to_dict` trees (added/removed keys included)."""
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k, _MISSING) != fb.get(k, _MISSING))


_MISSING = object()


# -------------------------------------------------------------------------------------------------
# --set a.b=v overrides


def apply_overrides(cfg: RunConfig, overrides: list[str] | tuple[str, ...]) -> RunConfig:
    """Apply `key=value` strings in order and validate the result."""
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected key=value, e.g. optim.model.lr=3e-4")
        cfg = _set_path(cfg, key.split("."), value.strip(), key, [])
    return cfg.validate()


def _set_path(obj: Any, parts: list[str], value: str, key: str, done: list[str]) -> Any:
    head, rest = parts[0], parts[1:]
    where = ".".join(done) or "RunConfig"
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        names = [f.name for f in dataclasses.fields(obj)]
        if head not in names:
            raise ValueError(f"--set {key}: unknown key {head!r} in {where}; valid keys: {', '.join(names)}"
                             + _suggest(head, names))
        current = getattr(obj, head)
        if rest:
            new = _set_path(current, rest, value, key, done + [head])
        else:
            hint = typing.get_type_hints(type(obj)).get(head, Any)
            new = _coerce(value, hint, current, key)
        return dataclasses.replace(obj, **{head: new})
    if isinstance(obj, dict):
        names = [str(k) for k in obj]
        if head not in obj:
            raise ValueError(f"--set {key}: unknown key {head!r} in {where}; valid keys: {', '.join(names)}"
                             + _suggest(head, names))
        current = obj[head]
        if rest:
            new = _set_path(current, rest, value, key, done + [head])
        else:
            new = _coerce(value, Any, current, key)
        return {**obj, head: new}
    raise ValueError(f"--set {key}: {where} is a value ({type(obj).__name__}), it has no key {head!r}")


def _suggest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _coerce(s: str, hint: Any, current: Any, key: str) -> Any:
    """Parse string `s` as the type `hint` (or, for `Any`, the type of `current`)."""
    if hint is Any:
        if dataclasses.is_dataclass(current) or isinstance(current, dict):
            raise ValueError(f"--set {key}: this is a section, set one of its fields ({key}.<field>=...)")
        hint = type(current) if current is not None else str
        if hint is tuple:  # element type from the current value
            hint = tuple[type(current[0]), ...] if current else tuple[str, ...]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    bad = ValueError(f"--set {key}={s}: expected {_type_name(hint)}, got {s!r}")
    if origin is Literal:
        for a in args:
            if str(a) == s:
                return a
        raise ValueError(f"--set {key}={s}: expected one of {', '.join(map(str, args))}")
    if origin in (typing.Union, types.UnionType):
        if s.lower() in ("none", "null") and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(s, a, current, key)
            except ValueError:
                continue
        raise bad
    if origin is tuple:
        body = s.strip()
        if body[:1] in "([" and body[-1:] in ")]":
            body = body[1:-1]
        items = [x.strip() for x in body.split(",") if x.strip()]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(x, args[0], None, key) for x in items)
        if len(items) != len(args):
            raise ValueError(f"--set {key}={s}: expected {len(args)} comma-separated values "
                             f"({_type_name(hint)}), got {len(items)}")
        return tuple(_coerce(x, a, None, key) for x, a in zip(items, args))
    if dataclasses.is_dataclass(hint) or origin is dict or hint is dict:
        raise ValueError(f"--set {key}: this is a section, set one of its fields ({key}.<field>=...)")
    if hint is bool:
        if s.lower() in _TRUE:
            return True
        if s.lower() in _FALSE:
            return False
        raise bad
    if hint is int:
        try:
            return int(s.replace("_", ""))
        except ValueError:
            try:
                f = float(s)
            except ValueError:
                raise bad from None
            if not f.is_integer():
                raise bad from None
            return int(f)
    if hint is float:
        try:
            return float(s)
        except ValueError:
            raise bad from None
    if hint is str:
        return s
    if hint is Path:
        return Path(s)
    raise ValueError(f"--set {key}: fields of type {_type_name(hint)} cannot be set from the command line")


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is None and hasattr(hint, "__name__"):
        return hint.__name__
    return str(hint).replace("typing.", "")
