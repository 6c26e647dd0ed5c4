"""The one training loop of every stage (VAE, base, memory, DMD): model-agnostic, resumable bit for bit.

Notable:
* A recipe (worldstream/train/recipes/) supplies a `RunConfig`, a `ModelBundle` of named modules,
  a data iterator factory and an objective `(bundle, batch, step) -> (loss, logs)`; the trainer
  knows no model, sampler or diffusion process (DiT/diamond/Self-Forcing split: network, process,
  loop).
* Several modules per stage (DMD: student, critic, frozen teacher): each module named in
  `cfg.optim` gets its own AdamW, LR schedule, gradient clipping, EMA and update ratio
  (`update_every`); each loss is backpropagated into its own module only.
* Step = `grad_accum` micro-batches -> NaN/inf guard -> optimizer steps of the due modules -> EMA
  -> hooks -> log row -> checkpoint. A non-finite loss or grad norm skips the update (logged as
  `nonfinite=1`); `max_nonfinite_steps` in a row abort with `NonFiniteError`.
* Exact resume: a checkpoint holds weights (safetensors), EMA weights, optimizer states, per-rank
  RNG states (torch, numpy, python) and objective state, the data position (micro-batches
  consumed) and the step. Data factories must derive their order from (seed, position) - see
  `SeededSampler` - never from the global RNGs. Hooks and checkpoint writing run with the RNGs
  saved and restored, so they never shift the random stream of training.
* Distributed: launched by torchrun (RANK/WORLD_SIZE/LOCAL_RANK in the env) the trainer joins the
  process group (gloo on CPU), hands the bundle to worldstream/parallel/parallelize.py, and only
  rank 0 logs and writes checkpoints. Distributed code stays here and in parallel/ (nanoGPT's rule),
  never in model code.

Checkpoint layout (`DIR/ckpt/step_XXXXXX/`, written to a temp folder and renamed; `DIR/ckpt/latest`
names the newest one and is replaced atomically; the last `checkpoint.keep_last` are kept):
    <module>.safetensors, <module>_ema.safetensors   weights of each trained module (+ EMA)
    <module>_optim.pt                                 optimizer state (torch.load(weights_only=True))
    rank_state.pt                                     per-rank RNG + objective state (weights_only)
    trainer_state.json                                step, data position, update counts, lr
    config.json, meta.json                            RunConfig; step, recipe, modules, git sha
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from worldstream.parallel.dist import DistEnv, init_distributed, read_dist_env  # noqa: F401 (DistEnv re-exported)
from worldstream.parallel.parallelize import (
    full_state_dict,
    load_full_state_dict,
    load_optimizer_state_dict,
    optimizer_state_dict,
    parallelize,
    unsharded_class,
)
from worldstream.train.config import RunConfig, ScheduleConfig, diff_keys, flatten, to_dict
from worldstream.train.logging import RunLogger
from worldstream.train.objectives import ModelBundle, split_losses
from worldstream.utils.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from worldstream.train.recipes import Recipe

CKPT_DIR = "ckpt"
LATEST = "latest"


class NonFiniteError(RuntimeError):
    """Raised after `max_nonfinite_steps` consecutive steps with a non-finite loss or grad norm."""


class ConfigChangedWarning(UserWarning):
    """The resumed run's config differs from the checkpoint's."""


# -------------------------------------------------------------------------------------------------
# data position, hooks


@dataclass(frozen=True)
class DataPosition:
    """Where a rank's data stream starts: after `consumed` micro-batches of this rank."""

    consumed: int
    rank: int = 0
    world_size: int = 1


@dataclass(frozen=True)
class SeededSampler:
    """Sample indices for micro-batch k of a rank, from (seed, k) alone: restorable at any position.

    Each epoch is a fresh permutation drawn from (seed, epoch); global batches of
    `batch_size * world_size` are cut from it (the incomplete tail is dropped) and rank r takes the
    r-th contiguous slice - so N ranks at batch B see exactly the samples of 1 rank at batch N*B.
    """

    num_samples: int
    batch_size: int  # per rank
    seed: int
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.batches_per_epoch < 1:
            raise ValueError(f"{self.num_samples} samples cannot fill one global batch of "
                             f"{self.batch_size} x {self.world_size} ranks")

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // (self.batch_size * self.world_size)

    def indices(self, k: int) -> np.ndarray:
        """[batch_size] int64 indices of this rank's k-th micro-batch."""
        epoch, j = divmod(k, self.batches_per_epoch)
        perm = _epoch_permutation(self.seed, epoch, self.num_samples)
        g = self.batch_size * self.world_size
        start = j * g + self.rank * self.batch_size
        return perm[start : start + self.batch_size]

    def iterate(self, start: int) -> Iterator[np.ndarray]:
        k = start
        while True:
            yield self.indices(k)
            k += 1


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    perm.setflags(write=False)  # shared by the cache
    return perm


@dataclass(frozen=True)
class HookContext:
    step: int  # completed trainer steps
    bundle: ModelBundle  # `bundle.for_eval(name)` is the EMA copy when there is one
    cfg: RunConfig
    out_dir: Path
    rank: int


@dataclass(frozen=True)
class Hook:
    """A periodic callback (sample videos, eval); runs under no_grad with the RNGs restored afterwards.

    `fn` may return scalars, which are added to that step's log row. NOTE use `ctx.bundle.for_eval(name)`
    or `.raw(name)`, never `ctx.bundle[name]`: a DDP-wrapped forward on rank 0 alone would hang.
    """

    every_n_steps: int  # 0 disables
    fn: Callable[[HookContext], Mapping[str, float] | None]
    name: str = ""
    rank0_only: bool = True


# -------------------------------------------------------------------------------------------------
# LR schedule, EMA, RNG state


def lr_factor(step: int, s: ScheduleConfig) -> float:
    """Multiplier of the peak lr at 0-based trainer step `step`: linear warmup, then cosine or constant."""
    if step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    if s.decay == "constant":
        return 1.0
    progress = min(1.0, (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps))
    return s.min_lr_ratio + (1.0 - s.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_ema(module: nn.Module) -> nn.Module:
    ema = copy.deepcopy(module).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, module: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * module for floating parameters/buffers; other buffers copied."""
    for e, p in zip(ema.parameters(), module.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), module.buffers()):
        if e.is_floating_point():
            e.lerp_(b, 1.0 - decay)
        else:
            e.copy_(b)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """torch/numpy/python RNG states as tensors and plain numbers (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserve_rng() -> Iterator[None]:
    """Run a block without consuming the training random stream."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


_GIT_SHA: str | None = None


def git_sha() -> str:
    global _GIT_SHA
    if _GIT_SHA is None:
        try:
            r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                               capture_output=True, text=True, timeout=10)
            _GIT_SHA = r.stdout.strip() if r.returncode == 0 else "unknown"
        except (OSError, subprocess.SubprocessError):
            _GIT_SHA = "unknown"
    return _GIT_SHA


# -------------------------------------------------------------------------------------------------
# checkpoint folders


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders (with meta.json), oldest first."""
    root = Path(out_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    dirs = [p for p in root.glob("step_*") if p.is_dir() and (p / "meta.json").is_file()]
    return sorted(dirs, key=lambda p: p.name)


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The folder `DIR/ckpt/latest` names, or None when there is no checkpoint yet."""
    pointer = Path(out_dir) / CKPT_DIR / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    path = pointer.parent / name
    if not (path / "meta.json").is_file():
        raise FileNotFoundError(f"{pointer} names {name!r}, but {path} is missing or incomplete "
                                "(no meta.json)")
    return path


def module_type(module: nn.Module) -> str:
    cls = unsharded_class(module)  # FSDP2 swaps in a subclass
    return f"{cls.__module__}.{cls.__qualname__}"


def _fsync_tree(directory: Path) -> None:
    for p in directory.iterdir():
        if p.is_file():
            with open(p, "rb+") as f:
                os.fsync(f.fileno())


def _batch_size(batch: Any) -> int | None:
    """Samples in a micro-batch (for samples/s): leading dim of the first tensor found."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else None
    if isinstance(batch, Mapping):
        values = list(batch.values())
    elif isinstance(batch, (list, tuple)):
        values = list(batch)
    elif hasattr(batch, "__dataclass_fields__"):
        values = [getattr(batch, f) for f in batch.__dataclass_fields__]
    else:
        return None
    for v in values:
        n = _batch_size(v)
        if n is not None:
            return n
    return None


# -------------------------------------------------------------------------------------------------
# the trainer


@dataclass
class TrainResult:
    step: int  # completed steps
    last_row: dict[str, float]  # the last logged values
    steps_per_s: float  # over this call of fit()
    checkpoint: Path | None  # the newest checkpoint folder
    rows: list[dict[str, float]] = field(default_factory=list)  # every step's values (this process)


class Trainer:
    """`Trainer(recipe, cfg, out_dir, resume=...).fit()`; see the module docstring."""

    def __init__(self, recipe: Recipe, cfg: RunConfig, out_dir: str | os.PathLike, resume: bool = False):
        # 1. config and process group
        if cfg.recipe and cfg.recipe != recipe.name:
            raise ValueError(f"config is for recipe {cfg.recipe!r} but the recipe is {recipe.name!r}")
        self.cfg = cfg = dataclasses.replace(cfg, recipe=recipe.name).validate()
        self.recipe = recipe
        self.out_dir = Path(out_dir)
        self.resume = resume
        self.env = read_dist_env()
        self.device, self._owns_pg = init_distributed(self.env, cfg.parallel.backend)
        self.hooks: list[Hook] = list(recipe.hooks(cfg)) if recipe.hooks else []

        # 2. where we start from
        ckpt = latest_checkpoint(self.out_dir) if self.out_dir.exists() else None
        if ckpt is None and not resume and list_checkpoints(self.out_dir):
            raise ValueError(f"{self.out_dir} holds checkpoints but no {CKPT_DIR}/{LATEST} pointer; "
                             "choose another --out")
        if ckpt is not None and not resume:
            raise ValueError(f"{self.out_dir} already holds a run (checkpoint {ckpt.name}): pass --resume to "
                             "continue it or choose another --out")
        self.resume_from = ckpt if resume else None
        if resume and ckpt is None and self.env.is_main:
            print(f"note: no checkpoint in {self.out_dir / CKPT_DIR}, starting from step 0", file=sys.stderr)
        meta = self._check_meta(self.resume_from) if self.resume_from else None

        # 3. modules: seeded build (identical on every rank), then per-rank streams
        seed_everything(cfg.seed)
        bundle = recipe.build(cfg)
        if not isinstance(bundle, ModelBundle):
            raise ValueError(f"recipe {recipe.name}: build() returned {type(bundle).__name__}, "
                             "expected a ModelBundle")
        unknown = [n for n in cfg.optim if n not in bundle]
        if unknown:
            raise ValueError(f"config optim names module(s) {unknown} which recipe {recipe.name} does not "
                             f"build (modules: {', '.join(bundle.names)})")
        bundle.trained = tuple(cfg.optim)
        for name in bundle.names:
            module = bundle.raw(name).to(self.device)
            if name in bundle.trained:
                module.train()
            else:  # frozen (e.g. DMD's teacher)
                module.eval().requires_grad_(False)
        if self.env.rank > 0:
            seed_everything(cfg.seed + self.env.rank)
        self.bundle = bundle
        if meta is not None:
            self._check_modules(meta)
            self._load_weights(self.resume_from)
        for name in bundle.trained:
            if cfg.optim[name].ema_decay > 0 and name not in bundle.ema:
                bundle.ema[name] = make_ema(bundle.raw(name))

        # 4. distribution, then optimizers over the (possibly sharded) raw parameters
        self.mode = parallelize(bundle, cfg.parallel, self.env.world_size, self.device)
        self.params = {n: [p for p in bundle.raw(n).parameters() if p.requires_grad] for n in bundle.trained}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        for n in bundle.trained:
            o = cfg.optim[n]
            if not self.params[n]:
                raise ValueError(f"module {n!r} is trained (optim.{n}) but has no parameter with "
                                 "requires_grad")
            self.optimizers[n] = torch.optim.AdamW(self.params[n], lr=o.lr, betas=o.betas, eps=o.eps,
                                                   weight_decay=o.weight_decay)
        self.objective = recipe.objective(cfg)

        # 5. loop state (restored from the checkpoint when resuming)
        self.step = 0
        self.consumed = 0  # micro-batches drawn by this rank
        self.nonfinite_run = 0
        self.updates = {n: 0 for n in bundle.trained}
        self._rank_state: dict[str, Any] | None = None
        if self.resume_from is not None:
            self._load_state(self.resume_from)
        self.last_checkpoint: Path | None = self.resume_from

    # ---------------------------------------------------------------------------------------------
    # public API

    def every_n_steps(self, n: int, name: str = "", rank0_only: bool = True) -> Callable:
        """Decorator registering a periodic hook: `@trainer.every_n_steps(100) def sample(ctx): ...`."""

        def register(fn: Callable[[HookContext], Mapping[str, float] | None]) -> Callable:
            self.hooks.append(Hook(n, fn, name or fn.__name__, rank0_only))
            return fn

        return register

    def fit(self, stop_at: int | None = None) -> TrainResult:
        """Train to `schedule.steps` (or stop early after `stop_at` steps, checkpointing there)."""
        cfg, env = self.cfg, self.env
        end = cfg.schedule.steps if stop_at is None else min(stop_at, cfg.schedule.steps)
        logger = None
        if env.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / CKPT_DIR).mkdir(exist_ok=True)
            for stale in (self.out_dir / CKPT_DIR).glob(".step_*.tmp-*"):  # a killed save
                shutil.rmtree(stale, ignore_errors=True)
            atomic_write_json(self.out_dir / "config.json", to_dict(cfg))
            continuing = self.resume or self.step > 0  # resumed, or a second fit() of this trainer
            logger = RunLogger(self.out_dir, csv_enabled=cfg.logging.csv, tensorboard=cfg.logging.tensorboard,
                               resume_step=self.step if continuing else None)
        data = iter(self.recipe.data(cfg, DataPosition(self.consumed, env.rank, env.world_size)))
        if self._rank_state is not None:  # last: building and the data factory may draw random numbers
            set_rng_state(self._rank_state["rng"])
            self._rank_state = None
        from tqdm import tqdm

        bar = tqdm(total=end, initial=self.step, desc=f"train {self.recipe.name}", unit="step",
                   disable=not (env.is_main and cfg.logging.progress), file=sys.stderr, dynamic_ncols=True)
        rows: list[dict[str, float]] = []
        last: dict[str, float] = {}
        start_step, t_start = self.step, time.perf_counter()
        t_log, steps_since, samples_since = t_start, 0, 0
        try:
            while self.step < end:
                values, samples = self._train_step(self.step, data)
                self.step += 1
                steps_since += 1
                samples_since += samples
                bar.update(1)
                if values["nonfinite"] and env.is_main:
                    bar.write(f"step {self.step}: non-finite loss or gradient norm, update skipped "
                              f"({self.nonfinite_run}/{cfg.max_nonfinite_steps} in a row)", file=sys.stderr)
                values.update(self._run_hooks())
                if self.step % cfg.logging.every_n_steps == 0 or self.step == end:
                    now = time.perf_counter()
                    values["steps_per_s"] = steps_since / max(now - t_log, 1e-9)
                    if samples_since:
                        values["samples_per_s"] = samples_since / max(now - t_log, 1e-9)
                    t_log, steps_since, samples_since = now, 0, 0
                    if logger is not None:
                        with preserve_rng():
                            logger.log(self.step, values)
                    bar.set_postfix({k: f"{values[k]:.4g}" for k in ("loss", "lr") if k in values})
                rows.append(values)
                last = values
                if self.nonfinite_run >= cfg.max_nonfinite_steps:
                    shown = ", ".join(f"{k}={v}" for k, v in values.items() if "loss" in k or "grad" in k)
                    raise NonFiniteError(
                        f"recipe {self.recipe.name}: {self.nonfinite_run} consecutive steps (up to step "
                        f"{self.step}) had a non-finite loss or gradient norm ({shown}); "
                        f"updates were skipped. Last checkpoint: {self.last_checkpoint or 'none'}. Lower the "
                        f"lr, enable grad clipping or check the data.")
                every = cfg.checkpoint.every_n_steps
                if (every and self.step % every == 0) or (self.step == end and cfg.checkpoint.save_final):
                    self.save_checkpoint()
        finally:
            bar.close()
            if logger is not None:
                logger.close()
        elapsed = time.perf_counter() - t_start
        if self._owns_pg and self.step >= cfg.schedule.steps:  # finished: leave the process group
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
            self._owns_pg = False
        steps_per_s = (self.step - start_step) / max(elapsed, 1e-9)
        return TrainResult(self.step, last, steps_per_s, self.last_checkpoint, rows)

    # ---------------------------------------------------------------------------------------------
    # one step

    def _train_step(self, step: int, data: Iterator[Any]) -> tuple[dict[str, float], int]:
        cfg, bundle = self.cfg, self.bundle
        trained = bundle.trained
        due = [n for n in trained if step % cfg.optim[n].update_every == 0]
        bundle.due = frozenset(due)
        for n in due:
            for group in self.optimizers[n].param_groups:
                group["lr"] = cfg.optim[n].lr * lr_factor(step, cfg.schedule)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

        # 1. micro-batches: forward under autocast, each loss into its own module's parameters
        sums: dict[str, float] = {}
        samples = 0
        for micro in range(cfg.grad_accum):
            try:
                batch = next(data)
            except StopIteration:
                raise ValueError(f"recipe {self.recipe.name}: the data iterator ended after {self.consumed} "
                                 "micro-batches; data factories must yield forever (loop over epochs)") \
                    from None
            self.consumed += 1
            if hasattr(batch, "to"):
                batch = batch.to(self.device)
            samples += _batch_size(batch) or 0
            with contextlib.ExitStack() as stack:
                # DDP: all-reduce gradients only on the last micro-batch
                if self.mode == "ddp" and micro < cfg.grad_accum - 1:
                    for n in due:
                        stack.enter_context(bundle[n].no_sync())
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                    loss, logs = self.objective(bundle, batch, step)
                losses = split_losses(loss, trained)
                missing = [n for n in due if n not in losses]
                if missing:
                    raise ValueError(f"recipe {self.recipe.name}: the objective returned no loss for "
                                     f"{missing} at step {step}, but they are due (update_every); got losses "
                                     f"for {list(losses)}")
                for i, n in enumerate(due):
                    # NOTE fsdp2 (one trained module): `inputs=` would give sharded parameters no gradient
                    inputs = None if self.mode == "fsdp2" else self.params[n]
                    torch.autograd.backward(losses[n].float() / cfg.grad_accum, inputs=inputs,
                                            retain_graph=i < len(due) - 1)
            for n, v in losses.items():
                key = "loss" if len(trained) == 1 else f"loss/{n}"
                sums[key] = sums.get(key, 0.0) + float(v.detach()) / cfg.grad_accum
            for k, v in logs.items():
                if isinstance(v, torch.Tensor) and v.numel() != 1:
                    raise ValueError(f"recipe {self.recipe.name}: objective log {k!r} has shape "
                                     f"{list(v.shape)}; logs must be scalars")
                sums[k] = sums.get(k, 0.0) + float(v) / cfg.grad_accum
        if len(trained) > 1:
            sums["loss"] = sum(v for k, v in sums.items() if k.startswith("loss/"))

        # 2. gradient norms (clipped), non-finite guard agreed by all ranks
        norms = {}
        for n in due:
            clip = cfg.optim[n].grad_clip
            norms[n] = float(torch.nn.utils.clip_grad_norm_(self.params[n], clip if clip > 0 else math.inf))
        loss_keys = ["loss"] if len(trained) == 1 else [f"loss/{n}" for n in due]
        bad = any(not math.isfinite(sums[k]) for k in loss_keys)
        bad = bad or any(not math.isfinite(v) for v in norms.values())
        sums, bad = self._reduce(sums, bad)

        # 3. update (or skip), EMA
        if bad:
            self.nonfinite_run += 1
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
        else:
            self.nonfinite_run = 0
            for n in due:
                self.optimizers[n].step()
                self.updates[n] += 1
                if n in bundle.ema:
                    update_ema(bundle.ema[n], bundle.raw(n), cfg.optim[n].ema_decay)

        values = dict(sums)
        for n in due:
            suffix = "" if len(trained) == 1 else f"/{n}"
            values["lr" + suffix] = self.optimizers[n].param_groups[0]["lr"]
            values["grad_norm" + suffix] = norms[n]
        values["nonfinite"] = float(bad)
        return values, samples * self.env.world_size

    def _reduce(self, sums: dict[str, float], bad: bool) -> tuple[dict[str, float], bool]:
        """Average logged values over ranks; a step is bad when it is bad on any rank."""
        if self.env.world_size == 1:
            return sums, bad
        keys = sorted(sums)
        t = torch.tensor([sums[k] for k in keys] + [float(bad)], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        out = {k: float(v) / self.env.world_size for k, v in zip(keys, t[:-1].tolist())}
        return out, bool(t[-1].item() > 0)

    def _run_hooks(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for hook in self.hooks:
            if hook.every_n_steps <= 0 or self.step % hook.every_n_steps:
                continue
            if hook.rank0_only and not self.env.is_main:
                continue
            ctx = HookContext(self.step, self.bundle, self.cfg, self.out_dir, self.env.rank)
            with preserve_rng(), torch.no_grad():
                result = hook.fn(ctx)
            out.update({k: float(v) for k, v in (result or {}).items()})
        return out

    # ---------------------------------------------------------------------------------------------
    # checkpoints

    def save_checkpoint(self) -> Path | None:
        """Write DIR/ckpt/step_XXXXXX atomically (rank 0), update `latest`, prune; all ranks must call it."""
        with preserve_rng():
            rank_state = {"rng": rng_state()}
            if hasattr(self.objective, "state_dict"):
                rank_state["objective"] = self.objective.state_dict()
            if self.env.world_size > 1:
                gathered: list[Any] = [None] * self.env.world_size
                torch.distributed.all_gather_object(gathered, rank_state)
            else:
                gathered = [rank_state]
            states = self._full_states()  # a collective under fsdp2
            if self.env.is_main:
                self.last_checkpoint = self._write_checkpoint(gathered, states)
        return self.last_checkpoint

    def _full_states(self) -> dict[str, dict[str, Any]]:
        """Per trained module: full weights, EMA weights, optimizer state (rank 0; under fsdp2 every rank
        joins the gather)."""
        if not self.env.is_main and self.mode != "fsdp2":
            return {}
        b = self.bundle
        return {n: {"model": full_state_dict(b.raw(n)),
                    "ema": full_state_dict(b.ema[n]) if n in b.ema else None,
                    "optim": optimizer_state_dict(b.raw(n), self.optimizers[n])} for n in b.trained}

    def _write_checkpoint(self, rank_states: list[Any], states: dict[str, dict[str, Any]]) -> Path:
        root = self.out_dir / CKPT_DIR
        root.mkdir(parents=True, exist_ok=True)
        final = root / step_dir_name(self.step)
        tmp = root / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        bundle = self.bundle
        for n in bundle.trained:
            meta = {"module": n, "type": module_type(bundle.raw(n)), "step": str(self.step)}
            save_file(states[n]["model"], tmp / f"{n}.safetensors", metadata=meta)
            if n in bundle.ema:
                save_file(states[n]["ema"], tmp / f"{n}_ema.safetensors", metadata=meta)
            torch.save(states[n]["optim"], tmp / f"{n}_optim.pt")
        torch.save(rank_states, tmp / "rank_state.pt")
        atomic_write_json(tmp / "trainer_state.json", {
            "step": self.step, "consumed": self.consumed, "nonfinite_run": self.nonfinite_run,
            "updates": self.updates, "world_size": self.env.world_size,
            "lr": {n: o.param_groups[0]["lr"] for n, o in self.optimizers.items()}})
        atomic_write_json(tmp / "config.json", to_dict(self.cfg))
        atomic_write_json(tmp / "meta.json", {
            "step": self.step, "recipe": self.recipe.name, "git_sha": git_sha(),
            "modules": {n: module_type(bundle.raw(n)) for n in bundle.names},
            "trained": list(bundle.trained), "frozen": list(bundle.frozen), "ema": sorted(bundle.ema),
            "world_size": self.env.world_size, "torch": torch.__version__, "time": time.time()})
        _fsync_tree(tmp)
        if final.exists():  # re-saving a step (a resumed run that stopped at the same step)
            trash = root / f".{final.name}.old-{os.getpid()}"
            final.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)
        tmp.rename(final)
        atomic_write_text(root / LATEST, final.name + "\n")
        for old in list_checkpoints(self.out_dir)[: -self.cfg.checkpoint.keep_last]:
            if old.name != final.name:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def _check_meta(self, ckpt: Path) -> dict[str, Any]:
        meta = json.loads((ckpt / "meta.json").read_text())
        if meta.get("recipe") != self.recipe.name:
            raise ValueError(f"checkpoint {ckpt} was written by recipe {meta.get('recipe')!r} "
                             f"(modules {meta.get('modules')}); this run is recipe {self.recipe.name!r}. "
                             "Resume with the same recipe or choose another --out")
        saved = json.loads((ckpt / "config.json").read_text())
        changed = diff_keys(saved, to_dict(self.cfg))
        if changed and self.env.is_main:
            a, b = flatten(saved), flatten(to_dict(self.cfg))
            detail = ", ".join(f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in changed)
            warnings.warn(f"resuming {ckpt} with a changed config ({len(changed)} key(s)): {detail}",
                          ConfigChangedWarning, stacklevel=3)
        return meta

    def _check_modules(self, meta: Mapping[str, Any]) -> None:
        now = {n: module_type(self.bundle.raw(n)) for n in self.bundle.names}
        saved = meta.get("modules", {})
        diffs = [f"{n}: checkpoint {saved.get(n, '<absent>')} vs now {now.get(n, '<absent>')}"
                 for n in sorted(saved.keys() | now.keys()) if saved.get(n) != now.get(n)]
        if diffs:
            raise ValueError(f"checkpoint {self.resume_from} holds other module types: {'; '.join(diffs)}")
        missing = [n for n in self.bundle.trained if n not in meta.get("trained", [])]
        if missing:
            raise ValueError(f"checkpoint {self.resume_from} has no weights for trained module(s) {missing} "
                             f"(it trained {meta.get('trained')})")

    def _load_weights(self, ckpt: Path) -> None:
        for n in self.bundle.trained:
            for suffix, target in (("", self.bundle.raw(n)), ("_ema", None)):
                path = ckpt / f"{n}{suffix}.safetensors"
                if target is None:  # EMA: only when this run keeps one
                    if self.cfg.optim[n].ema_decay <= 0:
                        continue
                    if not path.is_file():
                        warnings.warn(f"{ckpt} has no EMA of {n!r}; starting the EMA from the weights",
                                      stacklevel=3)
                        continue
                    target = self.bundle.ema[n] = make_ema(self.bundle.raw(n))
                try:
                    load_full_state_dict(target, load_file(path, device=str(self.device)))
                except (ValueError, RuntimeError, OSError) as e:
                    raise ValueError(f"cannot load {path} into module {n!r}: {e}") from None

    def _load_state(self, ckpt: Path) -> None:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        self.step, self.consumed = int(state["step"]), int(state["consumed"])
        self.nonfinite_run = int(state["nonfinite_run"])
        self.updates.update({n: int(v) for n, v in state["updates"].items() if n in self.updates})
        for n, opt in self.optimizers.items():
            path = ckpt / f"{n}_optim.pt"
            load_optimizer_state_dict(self.bundle.raw(n), opt,
                                      torch.load(path, map_location=self.device, weights_only=True))
            for group in opt.param_groups:  # a changed optim config wins over the saved hyper-parameters
                o = self.cfg.optim[n]
                group.update(betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        ranks = torch.load(ckpt / "rank_state.pt", weights_only=True)
        if len(ranks) != self.env.world_size:
            if self.env.is_main:
                warnings.warn(f"{ckpt} was written by {len(ranks)} rank(s), this run has "
                              f"{self.env.world_size}: data order and random streams change "
                              "(resume is not exact)", stacklevel=3)
        self._rank_state = ranks[self.env.rank % len(ranks)]
        if "objective" in self._rank_state and hasattr(self.objective, "load_state_dict"):
            self.objective.load_state_dict(self._rank_state["objective"])
