"""Stages 2-4 for nano: `nano_base`, `nano_memory`, `nano_dmd`, and `export_nano` (the shipped folder).

* Data: the latent shards of `worldstream data cache-latents` (`--set data.path=DIR`), loaded once into
  memory (600 nano clips x 33 latents ~ 150 MB in bf16), batched as `ClipLatents` by a `SeededSampler`, so
  the order follows from (seed, micro-batch index) alone and resume is exact.
* `nano_base`: flow matching + ErrorBuffer (objectives/flow_matching.py) on a freshly initialised nano DiT.
* `nano_memory`: the memory objective (objectives/memory.py) on the base run's DiT (`model.init_run`, EMA).
* `nano_dmd`: frozen teacher = the memory run's DiT; critic and student start as copies of it
  (objectives/dmd.py): a short cold start, then multi-segment self-rollouts.
  Every stage builds its DiT from its own `model` knobs (pass the base run's again to the later stages;
  the weights are loaded strictly, so a mismatch names the keys and shapes).
* Sample videos (train/samples.py) every `logging.sample_every_n_steps` (250 base/memory, 100 DMD): a session
  rollout of a fixed clip of `data.eval_path` (held-out latents; default the first clip of `data.path`) with
  the EMA weights, next to its ground truth, in RUN_DIR/samples/.
* `export_nano(out, dit_run, latents)` assembles `checkpoints/nano/` for `infer/model_bundle.py`: `dit/` (the
  run's EMA weights: the student of a DMD run), `vae/` (the VAE the latents were cached with, latent
  statistics included), optional `lightvae/` (a `nano_lightvae_*` run's decoder with those statistics).

Budgets on this shared 2-core CPU with OMP_NUM_THREADS=1 (bf16 autocast; the DiT at 96x160 = 60 tokens per
latent), measured per step under the usual load (~5 runnable jobs): base ~2 s (4 windows of 6 latents, one
forward), memory ~2.1 s (2 windows of 10 latents, retrieval, one forward each), DMD ~2.6 s when only the
critic is updated and ~4 s with the student (1-3 segments of 4 student steps; teacher + critic on the last;
cold start ~2.4 s). NOTE torch's default 2 threads make every step 5-15x slower on the loaded machine
(thread barriers on oversubscribed cores). `schedule.steps` below fit base ~60 min, memory ~40 min, DMD
~30 min.

Run (after nano_vae and cache-latents):
    worldstream train --recipe nano_base --out /work/runs/nano_base --set data.path=/work/data/nano_v1_latents
    worldstream train --recipe nano_memory --out /work/runs/nano_memory --set data.path=... \
        model.init_run=/work/runs/nano_base
    worldstream train --recipe nano_dmd --out /work/runs/nano_dmd --set data.path=... \
        model.init_run=/work/runs/nano_memory
    python -m worldstream.train.recipes.nano --out checkpoints/nano --dit /work/runs/nano_dmd \
        --latents /work/data/nano_v1_latents
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from worldstream.model.dit import DiTConfig, WorldDiT
from worldstream.model.dit import preset as dit_preset
from worldstream.train.batch import ClipLatents
from worldstream.train.conditioning import TrainWindowConfig
from worldstream.train.config import CheckpointConfig, LoggingConfig, OptimConfig, RunConfig, ScheduleConfig
from worldstream.train.objectives import ModelBundle
from worldstream.train.objectives.dmd import DMDConfig, DMDObjective
from worldstream.train.objectives.flow_matching import FlowMatchingConfig, FlowMatchingObjective
from worldstream.train.objectives.memory import MemoryObjective, MemoryObjectiveConfig, load_base_weights
from worldstream.train.recipes import recipe
from worldstream.train.recipes.nano_vae import checkpoint_folder
from worldstream.train.samples import SampleVideoConfig, dit_sample_hooks
from worldstream.train.trainer import DataPosition, SeededSampler

SHIP_DTYPE = torch.bfloat16  # storage dtype of the exported DiT weights

__all__ = ["DiTModelConfig", "LatentDataConfig", "latent_batches", "run_dit", "export_nano"]


# -------------------------------------------------------------------------------------------------
# configs


@dataclass(frozen=True)
class DiTModelConfig:
    """The stage's DiT: a preset scaled by a few knobs (base), or the DiT of the run it starts from."""

    preset: str = "nano"  # worldstream/model/dit.py PRESETS
    dim: int | None = None  # width (the action modules' img_hidden_size follows); None: the preset's
    ffn_dim: int | None = None
    num_heads: int | None = None
    num_layers: int | None = None  # the action modules stay in the first half of the blocks
    in_dim: int | None = None  # latent channels = the VAE's z_dim (in and out)
    init_run: str | None = None  # memory: the base run; DMD: the memory run (run dir or checkpoint folder)
    init_weights: Literal["ema", "raw"] = "ema"

    def dit_config(self) -> DiTConfig:
        """The preset with the knobs applied (every intermediate config stays valid)."""
        cfg = dit_preset(self.preset)
        dim = self.dim or cfg.dim
        layers = self.num_layers or cfg.num_layers
        action = cfg.action
        if action is not None:
            action = dataclasses.replace(action, img_hidden_size=dim,
                                         blocks=tuple(b for b in action.blocks if b < max(1, layers // 2)))
        z = self.in_dim or cfg.in_dim
        return dataclasses.replace(cfg, dim=dim, ffn_dim=self.ffn_dim or cfg.ffn_dim,
                                   num_heads=self.num_heads or cfg.num_heads, num_layers=layers, in_dim=z,
                                   out_dim=z, action=action)


@dataclass(frozen=True)
class LatentDataConfig:
    path: str = "/work/data/nano_v1_latents"  # latent shards (`worldstream data cache-latents --out`)
    batch_size: int = 2  # clips per micro-batch (per rank)
    num_latents: int | None = None  # latents kept per clip (a prefix); None: the shortest clip of the batch
    seed: int = 0  # sample order
    # sample videos (train/samples.py, every logging.sample_every_n_steps): a latent directory of held-out
    # worlds cached with `--vae <path>/vae`; None: the first clip of `path`
    eval_path: str | None = None
    samples: SampleVideoConfig = field(default_factory=SampleVideoConfig)


# -------------------------------------------------------------------------------------------------
# data


def load_latent_samples(path: str | Path) -> list:
    """Every readable sample of a latent directory, latents kept in bf16 (their storage precision)."""
    from worldstream.data.cache_latents import LatentShardReader

    samples = []
    for s in LatentShardReader(path):
        s.latents = s.latents.to(torch.bfloat16)
        samples.append(s)
    if not samples:
        raise FileNotFoundError(f"{path}: no readable latent samples")
    return samples


def latent_batches(cfg: RunConfig, pos: DataPosition) -> Iterator[ClipLatents]:
    """Micro-batches of `data.batch_size` cached clips; micro-batch k depends on (seed, k) only."""
    from worldstream.data.cache_latents import collate_latents

    d: LatentDataConfig = cfg.data
    samples = load_latent_samples(d.path)
    sampler = SeededSampler(len(samples), d.batch_size, d.seed, pos.rank, pos.world_size)
    for idx in sampler.iterate(pos.consumed):
        yield collate_latents([samples[int(i)] for i in idx], d.num_latents)


# -------------------------------------------------------------------------------------------------
# models


def run_dit(path: str | Path, weights: Literal["ema", "raw"] = "ema", dit_cfg: DiTConfig | None = None
            ) -> tuple[WorldDiT, dict]:
    """The DiT of a nano_base / nano_memory / nano_dmd run (the student of a DMD run) and its meta.json.

    `dit_cfg` None: the run's own `model` knobs (its config.json); else that config (keys and shapes are
    checked against the weights).
    """
    from worldstream.checkpoint import config_from_dict, type_name

    ckpt = checkpoint_folder(path)
    meta = json.loads((ckpt / "meta.json").read_text())
    if dit_cfg is None:
        model_json = json.loads((ckpt / "config.json").read_text()).get("model") or {}
        model = config_from_dict({"type": type_name(DiTModelConfig), "config": model_json}, DiTModelConfig,
                                 source=str(ckpt / "config.json"))
        dit_cfg = model.dit_config()
    module = "student" if "student" in meta.get("trained", []) else "model"
    dit = load_base_weights(WorldDiT(dit_cfg), ckpt, module=module, ema=weights == "ema")
    return dit, {**meta, "module": module, "checkpoint": str(ckpt)}


def build_base(cfg: RunConfig) -> ModelBundle:
    dit = WorldDiT(cfg.model.dit_config())
    dit.init_weights()
    return ModelBundle({"model": dit})


def _init_dit(cfg: RunConfig, needs: str) -> WorldDiT:
    """The DiT of the run this stage starts from (`model.init_run`, required), with this stage's knobs."""
    m: DiTModelConfig = cfg.model
    if not m.init_run:
        raise ValueError(f"{needs}: --set model.init_run=RUN_DIR")
    dit, _ = run_dit(m.init_run, m.init_weights, m.dit_config())
    return dit


def build_memory(cfg: RunConfig) -> ModelBundle:
    return ModelBundle({"model": _init_dit(cfg, "nano_memory starts from the base run")})


def build_dmd(cfg: RunConfig) -> ModelBundle:
    teacher = _init_dit(cfg, "nano_dmd distils the memory run")
    critic, student = copy.deepcopy(teacher), copy.deepcopy(teacher)
    return ModelBundle({"teacher": teacher, "critic": critic, "student": student})


# -------------------------------------------------------------------------------------------------
# recipes


def _run(model: DiTModelConfig, objective, optim: dict[str, OptimConfig], steps: int, warmup: int,
         batch_size: int, checkpoint_every: int, sample_every: int) -> RunConfig:
    return RunConfig(
        seed=0, model=model, data=LatentDataConfig(batch_size=batch_size), objective=objective, optim=optim,
        schedule=ScheduleConfig(steps=steps, warmup_steps=warmup, decay="cosine", min_lr_ratio=0.1),
        logging=LoggingConfig(every_n_steps=5, progress=False, sample_every_n_steps=sample_every),
        checkpoint=CheckpointConfig(every_n_steps=checkpoint_every, keep_last=2),
        precision="bf16",
    )


@recipe(build=build_base, data=latent_batches, objective=FlowMatchingObjective.from_run,
        hooks=dit_sample_hooks)
def nano_base() -> RunConfig:
    """nano DiT base stage: flow matching + ErrorBuffer on cached latents (~60 min on 2 cores)."""
    return _run(DiTModelConfig(),
                FlowMatchingConfig(window=TrainWindowConfig(shared_start=True)),  # one DiT forward per step
                {"model": OptimConfig(lr=3e-4, weight_decay=0.01, grad_clip=1.0, ema_decay=0.995)},
                steps=1500, warmup=50, batch_size=4, checkpoint_every=100, sample_every=250)  # ~2.2 s/step


@recipe(build=build_memory, data=latent_batches, objective=MemoryObjective.from_run, hooks=dit_sample_hooks)
def nano_memory() -> RunConfig:
    """nano memory stage: the base DiT + retrieved memory latents, error injection (~40 min)."""
    return _run(DiTModelConfig(preset="nano"), MemoryObjectiveConfig(),
                {"model": OptimConfig(lr=1e-4, weight_decay=0.01, grad_clip=1.0, ema_decay=0.995)},
                steps=1000, warmup=20, batch_size=2, checkpoint_every=100, sample_every=250)  # ~2.3 s/step


@recipe(build=build_dmd, data=latent_batches, objective=DMDObjective.from_run, hooks=dit_sample_hooks)
def nano_dmd() -> RunConfig:
    """nano DMD: memory model -> few-step student, multi-segment self-rollouts (~30 min)."""
    return _run(DiTModelConfig(preset="nano"), DMDConfig(max_segments=3, cold_start_steps=40),
                {"critic": OptimConfig(lr=4e-5, betas=(0.0, 0.999), grad_clip=1.0),
                 # update ratio: one student step per 3 critic steps (DMD2: 5; ~170 student steps here)
                 "student": OptimConfig(lr=2e-5, betas=(0.0, 0.999), grad_clip=1.0, update_every=3,
                                        ema_decay=0.98)},
                steps=520, warmup=0, batch_size=1, checkpoint_every=50, sample_every=100)  # ~3.3 s/step avg


# -------------------------------------------------------------------------------------------------
# export: the folder `infer/model_bundle.py` loads (checkpoints/nano/{dit,vae,lightvae})


def _with_decoder_of(vae, vae_run: str | Path, weights: Literal["ema", "raw"]):
    """`vae` (the latent directory's, with its statistics) with the weights of a `nano_vae_decoder` run,
    whose frozen encoder must equal `vae`'s: otherwise the cached latents would not be its latents."""
    from worldstream.train.recipes.nano_vae import load_run_vae

    tuned = load_run_vae(vae_run, weights)
    ours, theirs = vae.state_dict(), tuned.state_dict()
    if ours.keys() != theirs.keys():
        raise ValueError(f"{vae_run}: the VAE has other keys than the latent directory's VAE")
    changed = [k for k in ours if not k.startswith("decoder.") and k.split(".")[0] != "conv2"
               and not torch.equal(ours[k], theirs[k])]
    if changed:
        raise ValueError(f"{vae_run}: encoder weights differ from the VAE the latents were cached with "
                         f"({len(changed)} tensors, e.g. {changed[0]}): only a decoder fine-tune of it fits")
    vae.load_state_dict(theirs)
    return vae


def export_nano(out: str | Path, dit_run: str | Path, latents: str | Path,
                lightvae_run: str | Path | None = None, weights: Literal["ema", "raw"] = "ema",
                vae_run: str | Path | None = None) -> Path:
    """Write `out/dit`, `out/vae` (and `out/lightvae`) as self-describing checkpoints; returns `out`.

    dit_run: a nano_base / nano_memory / nano_dmd run (DMD: the student). latents: the latent directory the
    DiT trained on; its `vae/` is the VAE with the latent statistics those latents were normalised with.
    lightvae_run: a nano_lightvae_* run; its decoder gets the same statistics.
    vae_run: a `nano_vae_decoder` run (encoder frozen): its decoder replaces the latent directory's.
    """
    from safetensors.torch import load_file

    from worldstream.checkpoint import save_checkpoint
    from worldstream.data.cache_latents import VAE_DIR, load_vae
    from worldstream.infer.model_bundle import LAYOUT
    from worldstream.model.vae import VAE

    out = Path(out)
    dit, meta = run_dit(dit_run, weights)
    sampler = "few_step" if meta["module"] == "student" else "unipc"  # what the weights were trained for
    # the DiT ships in bf16 (the session's dtype; halves the folder): parameters only, buffers keep theirs
    params = {name for name, _ in dit.named_parameters()}
    state = {k: v.to(SHIP_DTYPE) if k in params and v.is_floating_point() else v
             for k, v in dit.state_dict().items()}
    save_checkpoint(out / LAYOUT.dit, state, dit.cfg, preset="nano",
                    meta={"step": meta.get("step"), "recipe": meta.get("recipe"),
                          "source": meta["checkpoint"], "weights": weights, "sampler": sampler,
                          "storage_dtype": str(SHIP_DTYPE).removeprefix("torch.")})
    vae = load_vae(Path(latents) / VAE_DIR)
    if vae.cfg.z_dim != dit.cfg.in_dim:
        raise ValueError(f"the VAE of {latents} has z_dim {vae.cfg.z_dim}, the DiT of {dit_run} in_dim "
                         f"{dit.cfg.in_dim}: they were not trained together")
    vae_meta = {"source": str(Path(latents) / VAE_DIR)}
    if vae_run is not None:
        vae = _with_decoder_of(vae, vae_run, weights)
        vae_meta["decoder_source"] = str(checkpoint_folder(vae_run))
    save_checkpoint(out / LAYOUT.vae, vae, vae.cfg, preset="nano", meta=vae_meta)
    if lightvae_run is not None:
        ckpt = checkpoint_folder(lightvae_run)
        rate = json.loads((ckpt / "config.json").read_text())["model"]["pruning_rate"]
        light = VAE(dataclasses.replace(vae.cfg, pruning_rate=rate))
        name = "student_ema.safetensors" if weights == "ema" else "student.safetensors"
        light.load_state_dict(load_file(ckpt / name))
        save_checkpoint(out / LAYOUT.lightvae, light, light.cfg, preset="nano", meta={"source": str(ckpt)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m worldstream.train.recipes.nano",
                                description="assemble checkpoints/nano from trained runs")
    p.add_argument("--out", required=True, help="folder to write (e.g. checkpoints/nano)")
    p.add_argument("--dit", required=True, help="nano_base / nano_memory / nano_dmd run dir")
    p.add_argument("--latents", required=True, help="latent directory the DiT trained on (its vae/)")
    p.add_argument("--lightvae", help="nano_lightvae_* run dir (optional)")
    p.add_argument("--vae", help="nano_vae_decoder run dir: its fine-tuned decoder (optional)")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema")
    a = p.parse_args(argv)
    out = export_nano(a.out, a.dit, a.latents, a.lightvae, a.weights, a.vae)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
