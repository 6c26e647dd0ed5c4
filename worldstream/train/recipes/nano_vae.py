"""Stage 1 recipes for nano: the VAE (`nano_vae`) and its LightVAE decoders (`nano_lightvae_p050`, `_p075`).

* Data: windows of 1 + 4k frames (default 17: 5 latents) at a random start of a random clip of the clip
  shards (`/work/data/nano_v1`), read by random access (`FrameIndex`: tar member offsets, one npz per clip),
  so the order follows from (seed, micro-batch index) alone and resume is exact. A bad member is skipped
  with a `CorruptShardWarning` and the next clip is used.
* Eval (every `logging.sample_every_n_steps`): PSNR of the inference path (EMA weights, mean latents,
  `VAE.decode` with MG3's first-chunk rule, clamped) on fixed windows of held-out worlds
  (`data.eval_root`, rendered with other world seeds); logged as `eval/psnr` (mean over windows, dB on
  [0, 1] pixels), `eval/psnr_min` and `eval/mse`.
* LightVAE: the teacher is the trained full VAE of `model.teacher_run` (its EMA weights by default), frozen;
  the student is `prune_decoder(teacher, pruning_rate)` (channel importance), and only its decoder trains.

Budget on this shared 2-core CPU (bf16 autocast): a step of 2 x 17 frames at 96x160 takes ~1.3 s on an
idle machine; under the usual load (~4) it takes ~3 s with OMP_NUM_THREADS=1 but 3-30 s (mean ~7 s) with
torch's 2 threads (thread barriers stall on oversubscribed cores), so run with OMP_NUM_THREADS=1.
`schedule.steps` is chosen for ~35 minutes of wall time.

Run: `worldstream train --recipe nano_vae --out /work/runs/nano_vae`; then
`worldstream train --recipe nano_lightvae_p050 --out /work/runs/nano_lightvae_p050`.
"""

from __future__ import annotations

import dataclasses
import json
import tarfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import load_file

from worldstream.data.shards import CorruptShardWarning, ShardReader, list_shards, load_npz
from worldstream.model.vae import NANO, VAE, LightVAE, VAEConfig, prune_decoder
from worldstream.train.config import (
    CheckpointConfig,
    LoggingConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
)
from worldstream.train.objectives import ModelBundle
from worldstream.train.objectives.vae import (
    LightVAEObjective,
    LightVAEObjectiveConfig,
    VAEObjective,
    VAEObjectiveConfig,
    init_logvar,
    psnr,
)
from worldstream.train.recipes import recipe
from worldstream.train.trainer import (
    CKPT_DIR,
    DataPosition,
    Hook,
    HookContext,
    SeededSampler,
    latest_checkpoint,
)

FRAMES_EXT = ".frames.npz"

# -------------------------------------------------------------------------------------------------
# configs


@dataclass(frozen=True)
class VideoDataConfig:
    root: str = "/work/data/nano_v1"  # clip shards (training worlds)
    eval_root: str | None = "/work/data/nano_heldout"  # held-out worlds (other world seeds); None: no eval
    frames: int = 17  # frames per window, 1 + 4k (17 -> 5 latents)
    batch_size: int = 2  # windows per micro-batch
    seed: int = 0  # clip order and window starts
    eval_windows: int = 8  # held-out windows (one per clip, clips spread over the eval set)
    eval_frames: int = 17
    eval_batch: int = 2  # windows per eval forward


@dataclass(frozen=True)
class VAEFinetuneModelConfig:
    """Continue a trained VAE with its encoder frozen: latents cached with that encoder stay valid."""

    init_run: str = "/work/runs/nano_vae"  # run dir (its ckpt/latest) or a checkpoint folder
    init_weights: Literal["ema", "raw"] = "ema"  # the weights the latents were cached with (cache: ema)


@dataclass(frozen=True)
class LightVAEModelConfig:
    teacher_run: str = "/work/runs/nano_vae"  # run dir (its ckpt/latest) or a checkpoint folder
    teacher_weights: Literal["ema", "raw"] = "ema"
    pruning_rate: float = 0.5  # MG-LightVAE p (decoder widths round(w * (1 - p)))


# -------------------------------------------------------------------------------------------------
# data


@dataclass
class VideoBatch:
    video: torch.Tensor  # [B, 3, F, H, W] float32 in [-1, 1]

    def to(self, device: torch.device | str) -> VideoBatch:
        return VideoBatch(self.video.to(device))

    def __len__(self) -> int:
        return int(self.video.shape[0])


def to_video_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [..., F, H, W, 3] -> float32 [..., 3, F, H, W] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div_(127.5).sub_(1.0)
    return x.movedim(-1, -4)


class FrameIndex:
    """Random access to the lossless frames of every clip in a shard directory (no decoding at indexing).

    Reads the tar headers once (member offsets) and then each clip's `<key>.frames.npz` by seek + read.
    Shards whose headers are unreadable are skipped with a `CorruptShardWarning` (counted in
    `skipped_shards`); a clip whose member fails to decode raises `ValueError` naming shard and member.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.entries: list[tuple[Path, str, int, int]] = []  # (shard, key, data offset, size)
        self.skipped_shards = 0
        for path in list_shards(self.root):
            try:
                with tarfile.open(path, "r:") as tf:
                    members = tf.getmembers()
            except (tarfile.TarError, OSError, EOFError) as e:
                self.skipped_shards += 1
                warnings.warn(f"skipping shard {path}: unreadable tar ({type(e).__name__}: {e})",
                              CorruptShardWarning, stacklevel=2)
                continue
            for m in members:
                if m.isfile() and m.name.endswith(FRAMES_EXT):
                    self.entries.append((path, m.name[: -len(FRAMES_EXT)], m.offset_data, m.size))
        if not self.entries:
            raise FileNotFoundError(f"{self.root}: no clips with lossless frames (*{FRAMES_EXT}) in the "
                                    "shards; render with --video-format npz")

    def __len__(self) -> int:
        return len(self.entries)

    def video(self, i: int) -> np.ndarray:
        """uint8 [T, H, W, 3] of clip i."""
        path, key, offset, size = self.entries[i]
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        try:
            if len(data) != size:
                raise ValueError(f"truncated ({len(data)} of {size} bytes)")
            video = load_npz(data)["video"]
            if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
                raise ValueError(f"video has shape {list(video.shape)} {video.dtype}, "
                                 "expected [T,H,W,3] uint8")
        except Exception as e:
            raise ValueError(f"{path} member {key}{FRAMES_EXT}: {type(e).__name__}: {e}") from e
        return video


def video_batches(cfg: RunConfig, pos: DataPosition) -> Iterator[VideoBatch]:
    """Micro-batches of `data.batch_size` random windows; micro-batch k depends on (seed, k) only."""
    d = cfg.data
    index = FrameIndex(d.root)
    sampler = SeededSampler(len(index), d.batch_size, d.seed, pos.rank, pos.world_size)
    for k, idx in enumerate(sampler.iterate(pos.consumed), start=pos.consumed):
        rng = np.random.default_rng([d.seed, k, pos.rank])
        clips = []
        for i in idx.tolist():
            video = _read_or_next(index, int(i))
            if video.shape[0] < d.frames:
                shard, key = index.entries[i][:2]
                raise ValueError(f"{shard} clip {key} has {video.shape[0]} frames, fewer than "
                                 f"data.frames={d.frames}")
            start = int(rng.integers(0, video.shape[0] - d.frames + 1))
            clips.append(video[start : start + d.frames])
        yield VideoBatch(to_video_tensor(np.stack(clips)))  # [B, 3, F, H, W]


def _read_or_next(index: FrameIndex, i: int) -> np.ndarray:
    """Clip i, or (lenient) the next readable clip after a warning."""
    for j in range(len(index)):
        try:
            return index.video((i + j) % len(index))
        except ValueError as e:
            warnings.warn(f"skipping clip: {e}", CorruptShardWarning, stacklevel=2)
    raise ValueError(f"{index.root}: no readable clip")


def eval_windows(d: VideoDataConfig) -> torch.Tensor:
    """[N, 3, F, H, W] fixed held-out windows: clips spread over the eval set, seeded starts."""
    clips = list(ShardReader(d.eval_root))
    if not clips:
        raise FileNotFoundError(f"{d.eval_root}: no readable held-out clips")
    pick = np.linspace(0, len(clips) - 1, min(d.eval_windows, len(clips))).round().astype(int)
    rng = np.random.default_rng([d.seed, len(clips)])
    out = []
    for i in pick:
        video = clips[i].video
        start = int(rng.integers(0, video.shape[0] - d.eval_frames + 1))
        out.append(video[start : start + d.eval_frames])
    return to_video_tensor(np.stack(out))


# -------------------------------------------------------------------------------------------------
# models


def checkpoint_folder(path: str | Path) -> Path:
    """A checkpoint folder from a run dir (its ckpt/latest) or a checkpoint folder itself."""
    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    ckpt = latest_checkpoint(path) if path.is_dir() else None
    if ckpt is None:
        raise FileNotFoundError(f"{path}: no checkpoint (expected a run dir with {CKPT_DIR}/latest, or a "
                                "checkpoint folder with meta.json)")
    return ckpt


def run_vae_config(path: str | Path) -> VAEConfig:
    """The `VAEConfig` of a `nano_vae` or `nano_vae_decoder` run (the latter: its init run's, recursively)."""
    ckpt = checkpoint_folder(path)
    model = json.loads((ckpt / "config.json").read_text())["model"]
    if "init_run" in model:  # VAEFinetuneModelConfig: same architecture as the run it continues
        return run_vae_config(model["init_run"])
    return VAEConfig.from_dict(model)


def load_run_vae(path: str | Path, weights: Literal["ema", "raw"] = "ema", module: str = "vae") -> VAE:
    """The trained VAE of a `nano_vae`-style run (config from the checkpoint's config.json `model`)."""
    ckpt = checkpoint_folder(path)
    vae = VAE(run_vae_config(ckpt))
    file = ckpt / (f"{module}_ema.safetensors" if weights == "ema" else f"{module}.safetensors")
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found (weights={weights!r}; the run has "
                                f"{sorted(p.name for p in ckpt.glob('*.safetensors'))})")
    vae.load_state_dict(load_file(file))
    return vae.eval()


def build_vae(cfg: RunConfig) -> ModelBundle:
    vae = init_logvar(VAE(cfg.model).init_weights(), cfg.objective.logvar_init)
    return ModelBundle({"vae": vae})


def freeze_encoder(vae: VAE) -> VAE:
    """Only the decoder side (conv2 + decoder) of `vae` trains: encoder and moment conv get no gradient."""
    vae.encoder.requires_grad_(False)
    vae.conv1.requires_grad_(False)
    return vae


def build_vae_decoder(cfg: RunConfig) -> ModelBundle:
    m: VAEFinetuneModelConfig = cfg.model
    # the encoder and its moment conv stay exactly as they were: latents cached with them stay valid
    vae = freeze_encoder(load_run_vae(m.init_run, m.init_weights).train())
    return ModelBundle({"vae": vae})


def build_lightvae(cfg: RunConfig) -> ModelBundle:
    m: LightVAEModelConfig = cfg.model
    teacher = load_run_vae(m.teacher_run, m.teacher_weights).requires_grad_(False)
    # a LightVAE never encodes with the student: its encoder and moment conv stay frozen (and unused)
    student = freeze_encoder(prune_decoder(teacher, m.pruning_rate))
    return ModelBundle({"teacher": teacher, "student": student})


# -------------------------------------------------------------------------------------------------
# eval hooks


def _psnr_windows(decode_fn, encode_fn, windows: torch.Tensor, batch: int, bf16: bool) -> list[float]:
    out = []
    for s in range(0, windows.shape[0], batch):
        x = windows[s : s + batch]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            rec = decode_fn(encode_fn(x))  # [b, 3, F, H, W] in [-1, 1]
        out += [psnr(m) for m in (rec.float() - x).pow(2).flatten(1).mean(1).tolist()]
    return out


def vae_eval_hooks(cfg: RunConfig) -> list[Hook]:
    d = cfg.data
    if d.eval_root is None or cfg.logging.sample_every_n_steps <= 0:
        return []
    windows = eval_windows(d)

    def held_out(ctx: HookContext) -> dict[str, float]:
        vae = ctx.bundle.for_eval("vae")
        was = vae.training
        vae.eval()
        p = _psnr_windows(vae.decode, vae.encode, windows, d.eval_batch, ctx.cfg.precision == "bf16")
        vae.train(was)
        return {"eval/psnr": float(np.mean(p)), "eval/psnr_min": float(np.min(p))}

    return [Hook(cfg.logging.sample_every_n_steps, held_out, "held_out_psnr")]


def lightvae_eval_hooks(cfg: RunConfig) -> list[Hook]:
    d = cfg.data
    if d.eval_root is None or cfg.logging.sample_every_n_steps <= 0:
        return []
    windows = eval_windows(d)
    teacher_psnr: list[float] = []  # computed once (the teacher is frozen)

    def held_out(ctx: HookContext) -> dict[str, float]:
        teacher, student = ctx.bundle.raw("teacher"), ctx.bundle.for_eval("student")
        was = student.training
        student.eval()
        light = LightVAE(teacher, student)
        bf16 = ctx.cfg.precision == "bf16"
        p = _psnr_windows(light.decode, light.encode, windows, d.eval_batch, bf16)
        if not teacher_psnr:
            teacher_psnr.append(float(np.mean(_psnr_windows(teacher.decode, teacher.encode, windows,
                                                            d.eval_batch, bf16))))
        student.train(was)
        return {"eval/psnr": float(np.mean(p)), "eval/psnr_min": float(np.min(p)),
                "eval/psnr_teacher": teacher_psnr[0]}

    return [Hook(cfg.logging.sample_every_n_steps, held_out, "held_out_psnr")]


# -------------------------------------------------------------------------------------------------
# recipes


@recipe(build=build_vae, data=video_batches, objective=VAEObjective.from_run, hooks=vae_eval_hooks)
def nano_vae() -> RunConfig:
    """nano VAE (stride 4,8,8; 16 channels): L1 + MSE + small KL on 17-frame windows, bf16, EMA."""
    return RunConfig(
        seed=0,
        model=NANO,
        data=VideoDataConfig(),
        objective=VAEObjectiveConfig(),
        optim={"vae": OptimConfig(lr=5e-4, betas=(0.9, 0.99), weight_decay=0.0, grad_clip=1.0,
                                  ema_decay=0.99)},
        # ~35 min on the loaded 2-core CPU: 0.25-0.45 steps/s measured with OMP_NUM_THREADS=1 (+ eval hooks)
        schedule=ScheduleConfig(steps=700, warmup_steps=30, decay="cosine", min_lr_ratio=0.05),
        logging=LoggingConfig(every_n_steps=10, progress=False, sample_every_n_steps=100),
        checkpoint=CheckpointConfig(every_n_steps=120, keep_last=2),  # ~5 minutes
        precision="bf16",
    )


@recipe(build=build_vae_decoder, data=video_batches, objective=VAEObjective.from_run, hooks=vae_eval_hooks)
def nano_vae_decoder() -> RunConfig:
    """nano VAE decoder fine-tune: `model.init_run`'s VAE, encoder frozen (cached latents stay valid)."""
    return RunConfig(
        seed=1,
        model=VAEFinetuneModelConfig(),
        data=VideoDataConfig(seed=1),  # other windows than the first run
        # the frozen encoder's posterior: decode its mean, as inference does (no KL gradient reaches it)
        objective=VAEObjectiveConfig(sample_posterior=False),
        optim={"vae": OptimConfig(lr=3e-4, betas=(0.9, 0.99), weight_decay=0.0, grad_clip=1.0,
                                  ema_decay=0.99)},
        # decoder-only backward: ~0.6 steps/s on one loaded core
        schedule=ScheduleConfig(steps=1500, warmup_steps=30, decay="cosine", min_lr_ratio=0.05),
        logging=LoggingConfig(every_n_steps=10, progress=False, sample_every_n_steps=100),
        checkpoint=CheckpointConfig(every_n_steps=100, keep_last=2),
        precision="bf16",
    )


def _lightvae(pruning_rate: float) -> RunConfig:
    return RunConfig(
        seed=0,
        model=LightVAEModelConfig(pruning_rate=pruning_rate),
        data=VideoDataConfig(),
        objective=LightVAEObjectiveConfig(),
        optim={"student": OptimConfig(lr=2e-4, betas=(0.9, 0.99), grad_clip=1.0, ema_decay=0.99)},
        # ~10 min on the loaded 2-core CPU (the teacher's encode + decode run without gradient each step)
        schedule=ScheduleConfig(steps=200, warmup_steps=10, decay="cosine", min_lr_ratio=0.05),
        logging=LoggingConfig(every_n_steps=10, progress=False, sample_every_n_steps=50),
        checkpoint=CheckpointConfig(every_n_steps=100, keep_last=2),
        precision="bf16",
    )


@recipe(build=build_lightvae, data=video_batches, objective=LightVAEObjective.from_run,
        hooks=lightvae_eval_hooks)
def nano_lightvae_p050() -> RunConfig:
    """nano LightVAE p=0.5: decoder pruned by importance from the nano VAE, distilled (teacher + GT L1)."""
    return _lightvae(0.5)


@recipe(build=build_lightvae, data=video_batches, objective=LightVAEObjective.from_run,
        hooks=lightvae_eval_hooks)
def nano_lightvae_p075() -> RunConfig:
    """nano LightVAE p=0.75: decoder pruned by importance from the nano VAE, distilled (teacher + GT L1)."""
    return dataclasses.replace(_lightvae(0.75))
