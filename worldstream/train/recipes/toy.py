"""Toy recipes: tiny MLPs on a synthetic regression task; the trainer's tests and the example recipe.

* `toy`: one trained module "model" fits y = sin(x @ W) with dropout, input jitter, gradient
  accumulation and an EMA; every random draw that exact resume must reproduce is present (torch
  RNG in dropout and jitter, a seeded sample order, a stateful objective).
* `toy_multi`: a DMD-shaped stage in miniature - a frozen "teacher", a "critic" updated every step
  that learns the student's squared error, and a "student" updated every 2nd step that distils the
  teacher and is also pushed by the critic's estimate (its loss flows *through* the critic, which
  must get no gradient from it).

Run one: `worldstream train --recipe toy --out runs/toy` (a few seconds on a CPU).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from worldstream.train.config import (
    CheckpointConfig,
    LoggingConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
)
from worldstream.train.objectives import ModelBundle
from worldstream.train.recipes import recipe
from worldstream.train.trainer import DataPosition, Hook, HookContext, SeededSampler

# -------------------------------------------------------------------------------------------------
# configs


@dataclass(frozen=True)
class ToyModelConfig:
    in_dim: int = 8
    hidden: int = 32
    out_dim: int = 1
    dropout: float = 0.1  # draws from the torch RNG at every training forward


@dataclass(frozen=True)
class ToyDataConfig:
    num_samples: int = 512  # training pool
    eval_samples: int = 128  # held-out pool (eval hook)
    batch_size: int = 16  # per rank and micro-batch
    seed: int = 1234  # the pool and the sample order
    target_scale: float = 1.0  # y = sin(target_scale * x @ W), W ~ N(0, 1/in_dim)
    delay_s: float = 0.0  # emulated loading latency per micro-batch (tests kill a run mid-way)


@dataclass(frozen=True)
class ToyObjectiveConfig:
    input_noise: float = 0.05  # std of gaussian input jitter drawn from the torch RNG
    loss_avg_decay: float = 0.9  # running average of the loss kept as objective state (logged)
    critic_weight: float = 0.1  # toy_multi: weight of the critic's error estimate in the student loss
    nan_at_steps: tuple[int, ...] = ()  # fault injection: a NaN loss at these 0-based steps


# -------------------------------------------------------------------------------------------------
# data


@dataclass
class ToyBatch:
    x: torch.Tensor  # [B, in_dim]
    y: torch.Tensor  # [B, out_dim]

    def to(self, device: torch.device | str) -> ToyBatch:
        return ToyBatch(self.x.to(device), self.y.to(device))

    def __len__(self) -> int:
        return int(self.x.shape[0])


def toy_pool(model: ToyModelConfig, data: ToyDataConfig) -> tuple[np.ndarray, np.ndarray]:
    """x [N+E, in_dim], y [N+E, out_dim] float32 (training pool first, then the held-out pool)."""
    rng = np.random.default_rng(data.seed)
    w = rng.standard_normal((model.in_dim, model.out_dim)) / np.sqrt(model.in_dim)
    x = rng.standard_normal((data.num_samples + data.eval_samples, model.in_dim))
    y = np.sin(data.target_scale * x @ w)
    return x.astype(np.float32), y.astype(np.float32)


def toy_batches(cfg: RunConfig, pos: DataPosition) -> Iterator[ToyBatch]:
    x, y = toy_pool(cfg.model, cfg.data)
    d = cfg.data
    sampler = SeededSampler(d.num_samples, d.batch_size, d.seed, pos.rank, pos.world_size)
    for idx in sampler.iterate(pos.consumed):
        if cfg.data.delay_s:
            time.sleep(cfg.data.delay_s)
        yield ToyBatch(torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))


# -------------------------------------------------------------------------------------------------
# models


class ToyMLP(nn.Module):
    def __init__(self, cfg: ToyModelConfig, in_dim: int | None = None):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim or cfg.in_dim, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, cfg.out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # [B, in] -> [B, out]


class ToyCritic(ToyMLP):
    """Estimates the student's squared error from (x, student output)."""

    def __init__(self, cfg: ToyModelConfig):
        super().__init__(cfg, in_dim=cfg.in_dim + cfg.out_dim)


def build_toy(cfg: RunConfig) -> ModelBundle:
    return ModelBundle({"model": ToyMLP(cfg.model)})


def build_toy_multi(cfg: RunConfig) -> ModelBundle:
    m = cfg.model
    return ModelBundle({"teacher": ToyMLP(m), "student": ToyMLP(m), "critic": ToyCritic(m)})


# -------------------------------------------------------------------------------------------------
# objectives


@dataclass
class ToyRegression:
    """MSE of the jittered-input prediction; keeps a running loss average as state (like an ErrorBuffer)."""

    cfg: ToyObjectiveConfig
    loss_avg: torch.Tensor = field(default_factory=lambda: torch.zeros(()))

    @classmethod
    def from_run(cls, cfg: RunConfig) -> ToyRegression:
        return cls(cfg.objective)

    def __call__(self, bundle: ModelBundle, batch: ToyBatch, step: int):
        x = batch.x + self.cfg.input_noise * torch.randn_like(batch.x)
        pred = bundle["model"](x)  # [B, out]
        loss = F.mse_loss(pred.float(), batch.y)
        if step in self.cfg.nan_at_steps:
            loss = loss * float("nan")
        if torch.isfinite(loss):  # the trainer skips this step; keep the state clean too
            d = self.cfg.loss_avg_decay
            self.loss_avg = d * self.loss_avg + (1 - d) * loss.detach()
        return loss, {"loss_avg": self.loss_avg, "pred_std": pred.detach().float().std()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"loss_avg": self.loss_avg.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.loss_avg = state["loss_avg"].clone()


@dataclass
class ToyDistill:
    """toy_multi: critic learns the student's squared error; student distils the teacher + critic estimate."""

    cfg: ToyObjectiveConfig

    @classmethod
    def from_run(cls, cfg: RunConfig) -> ToyDistill:
        return cls(cfg.objective)

    def __call__(self, bundle: ModelBundle, batch: ToyBatch, step: int):
        x = batch.x + self.cfg.input_noise * torch.randn_like(batch.x)
        with torch.no_grad():
            target = bundle["teacher"](x)  # [B, out]
        losses, logs = {}, {}
        if "critic" in bundle.due:
            with torch.no_grad():
                s = bundle.raw("student")(x)
            err = (s - target).pow(2).sum(-1, keepdim=True)  # [B, 1]
            est = bundle["critic"](torch.cat([x, s], dim=-1))
            losses["critic"] = F.mse_loss(est.float(), err.float())
        if "student" in bundle.due:
            s = bundle["student"](x)
            # NOTE the raw critic: its weights are not trained by this loss (see objectives/__init__)
            est = bundle.raw("critic")(torch.cat([x, s], dim=-1))
            distill = F.mse_loss(s.float(), target.float())
            losses["student"] = distill + self.cfg.critic_weight * est.float().mean()
            logs["distill"] = distill.detach()
        if step in self.cfg.nan_at_steps:
            losses = {k: v * float("nan") for k, v in losses.items()}
        return losses, logs


# -------------------------------------------------------------------------------------------------
# hooks


def eval_hooks(cfg: RunConfig) -> list[Hook]:
    """Held-out MSE of the EMA (or raw) module every `logging.sample_every_n_steps`."""
    name = "model" if "model" in cfg.optim else "student"
    x, y = toy_pool(cfg.model, cfg.data)
    x_eval, y_eval = torch.from_numpy(x[cfg.data.num_samples:]), torch.from_numpy(y[cfg.data.num_samples:])

    def held_out(ctx: HookContext) -> dict[str, float]:
        module = ctx.bundle.for_eval(name)
        was_training = module.training
        module.eval()
        device = next(module.parameters()).device
        mse = F.mse_loss(module(x_eval.to(device)).float(), y_eval.to(device))
        module.train(was_training)
        return {"eval/mse": float(mse)}

    if name == "student":  # targets come from the teacher there, not from y
        return []
    return [Hook(cfg.logging.sample_every_n_steps, held_out, "held_out_mse")]


# -------------------------------------------------------------------------------------------------
# recipes


def _toy_base() -> RunConfig:
    return RunConfig(
        seed=0,
        model=ToyModelConfig(),
        data=ToyDataConfig(),
        objective=ToyObjectiveConfig(),
        optim={"model": OptimConfig(lr=3e-3, weight_decay=0.01, grad_clip=1.0, ema_decay=0.9)},
        schedule=ScheduleConfig(steps=200, warmup_steps=10, decay="cosine", min_lr_ratio=0.1),
        logging=LoggingConfig(every_n_steps=1, sample_every_n_steps=50),
        checkpoint=CheckpointConfig(every_n_steps=50, keep_last=2),
        grad_accum=2,
    )


@recipe(build=build_toy, data=toy_batches, objective=ToyRegression.from_run, hooks=eval_hooks)
def toy() -> RunConfig:
    """Tiny MLP regression (one module, EMA, grad accumulation): the trainer's example and test."""
    return _toy_base()


@recipe(build=build_toy_multi, data=toy_batches, objective=ToyDistill.from_run, hooks=eval_hooks)
def toy_multi() -> RunConfig:
    """DMD-shaped toy: frozen teacher, critic every step, student every 2nd step through the critic."""
    return dataclasses.replace(
        _toy_base(),
        optim={
            "critic": OptimConfig(lr=1e-3, grad_clip=1.0),
            "student": OptimConfig(lr=3e-3, grad_clip=1.0, update_every=2, ema_decay=0.9),
        },
        grad_accum=1,
    )
