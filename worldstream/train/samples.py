"""Periodic sample videos of the DiT stages (nano_base, nano_memory, nano_dmd): a streaming rollout of a fixed
held-out clip with the EMA weights, decoded next to its ground truth.

Notable:
* The same code path as a `WorldSession` (infer/rollout.py `rollout_clip`): the clip's image latent (latent 0)
  and prompt embedding, its own action rows clip by clip (poses from MG3's kinematics), the session's sampler
  (UniPC for base/memory, the few-step sampler for a DMD student), the online MemoryBank from clip 1 on when
  the stage trains memory, the shipped session dtype (bf16). Only the VAE encode of the image is skipped:
  the cached latent 0 is the encoded image.
* Ground truth = the clip's cached latents decoded with the latent directory's `vae/` (the VAE with the
  latent statistics the DiT trained on); the generated latents are decoded with the same VAE.
  `RUN_DIR/samples/step_XXXXXX.mp4`: ground truth on top, generated below, 4T - 3 frames (written
  atomically). Logged: `sample/psnr` (generated vs ground-truth frames, frame 0 excluded, dB on [0, 1]
  pixels), `sample/psnr_first_clip`, `sample/psnr_later`, `sample/latent_rmse` (normalised latents),
  `sample/seconds`.
* The clip comes from `data.eval_path` (a latent directory of other worlds, cached with the training
  directory's `vae/`) or, without one, from the training directory (`data.path`): sample
  `data.samples.index` in disk order. It is loaded once, when the trainer builds its hooks, so a bad
  path fails at start-up, not after an hour of training.
* Never touches the training state: the trainer runs hooks under `no_grad` with every RNG restored; the
  rollout's noise comes from its own generator (`data.samples.seed`), so every video of a run uses the same
  noise. The weights are copied (`full_state_dict`) into a separate bf16 DiT; under fsdp2 every rank joins
  that gather and rank 0 samples.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from worldstream.train.config import RunConfig

if TYPE_CHECKING:
    from worldstream.infer.config import SessionConfig
    from worldstream.infer.model_bundle import InferenceBundle
    from worldstream.train.trainer import Hook, HookContext

__all__ = ["SampleVideoConfig", "SampleVideoHook", "dit_sample_hooks", "sample_path", "SAMPLES_DIR"]

SAMPLES_DIR = "samples"  # RUN_DIR/samples/step_XXXXXX.mp4
ENCODER_KEYS = ("encoder.", "conv1.")  # VAE weights that define the latent space


@dataclass(frozen=True)
class SampleVideoConfig:
    """The periodic sample video (cadence: `logging.sample_every_n_steps`; clip: `data.eval_path`)."""

    clips: int = 3  # session clips: the first (image + P + F latents) and 2 later ones (memory from clip 1)
    index: int = 0  # which sample of the eval latent directory (disk order)
    sampler: Literal["auto", "unipc", "euler", "few_step"] = "auto"  # auto: few_step for a DMD student,
    # else the session's UniPC
    steps: int = 0  # sampler steps; 0: the session's (UniPC 3, few-step 4)
    dtype: Literal["bfloat16", "float32"] = "bfloat16"  # DiT, latents and VAE (the shipped session's)
    seed: int = 0  # the rollout's noise generator (the same noise at every step of a run)
    fps: int = 16  # playback rate (MG3's sample_fps)
    quality: int = 8  # imageio/ffmpeg quality (0-10)

    def __post_init__(self) -> None:
        if self.clips < 1 or self.index < 0 or self.steps < 0 or self.fps < 1:
            raise ValueError(f"SampleVideoConfig: need clips >= 1, index >= 0, steps >= 0, fps >= 1; "
                             f"got {self}")


def sample_path(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / SAMPLES_DIR / f"step_{step:06d}.mp4"


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR (dB) of two videos in [-1, 1], measured on [0, 1] pixels."""
    from worldstream.train.objectives.vae import psnr

    return psnr((a.float() - b.float()).square().mean())


@dataclass(frozen=True)
class _Stage:
    module: str  # bundle module sampled (its EMA copy when there is one)
    student: bool  # a DMD student (few-step sampler)
    session: SessionConfig


def _module(cfg: RunConfig) -> tuple[str, bool]:
    """(bundle module to sample, is it a DMD student)."""
    obj = cfg.objective
    return (obj.student, True) if hasattr(obj, "student") else (obj.model, False)  # DMDConfig | flow matching


def _stage(cfg: RunConfig, lat_h: int, lat_w: int, camera_block: int) -> _Stage:
    """Module, sampler, schedule and memory of the stage, as the session would run its model."""
    from worldstream.infer.config import FEW_STEP_STEPS, NANO

    obj, s = cfg.objective, cfg.data.samples
    module, student = _module(cfg)
    memory = getattr(obj, "memory", None)  # MemoryWindowConfig (memory; DMD with use_memory) or None (base)
    sampler = ("few_step" if student else NANO.sampler) if s.sampler == "auto" else s.sampler
    steps = s.steps or (FEW_STEP_STEPS if sampler == "few_step" else NANO.steps)
    mem = {} if memory is None else {"retrieval": memory.retrieval, "anchor": memory.anchor}
    session = NANO.replace(schedule=obj.window.schedule, use_memory=memory is not None, sampler=sampler,
                           steps=steps, dtype=s.dtype, seed=s.seed, height=lat_h * camera_block,
                           width=lat_w * camera_block, **mem)
    return _Stage(module, student, session)


class SampleVideoHook:
    """`hook(ctx) -> logs`: one sample video of the current (EMA) weights; see the module docstring."""

    def __init__(self, cfg: RunConfig):
        from worldstream.data.cache_latents import VAE_DIR, LatentShardReader, load_vae

        d, s = cfg.data, cfg.data.samples
        self.cfg = cfg
        # 1. the fixed clip, and the VAE its latents were normalised with
        source = Path(d.eval_path or d.path)
        sample = next(islice(iter(LatentShardReader(source)), s.index, None), None)
        if sample is None:
            raise ValueError(f"sample video: {source} holds no readable sample number {s.index} "
                             f"(data.samples.index)")
        self.sample, self.source = sample, source
        vae = load_vae(Path(d.path) / VAE_DIR)
        if d.eval_path is not None:
            _check_same_vae(vae, load_vae(source / VAE_DIR), Path(d.path), source)
        # 2. how many session clips the sample holds (first clip + new frames per later one)
        sched = cfg.objective.window.schedule
        fit = 1 + (sample.num_frames - sched.first_clip_frames) // sched.new_frames
        if fit < 1:
            raise ValueError(f"sample video: {source} sample {sample.key} has {sample.num_frames} frames, "
                             f"the first clip needs {sched.first_clip_frames}")
        if fit < s.clips:
            warnings.warn(f"sample video: {sample.key} ({sample.num_frames} frames) holds {fit} of the "
                          f"{s.clips} clips asked for (data.samples.clips); using {fit}", stacklevel=2)
        self.clips = min(fit, s.clips)
        self.vae = vae
        self.bundle: InferenceBundle | None = None  # built at the first call (the DiT's config is known then)
        self.truth: torch.Tensor | None = None  # [1, 3, F, H, W] decoded ground truth (first call)
        self.last_session: SessionConfig | None = None  # the streaming settings of the last video

    def _prepare(self, dit_cfg, stage: _Stage) -> InferenceBundle:
        from worldstream.infer.model_bundle import prepare_bundle
        from worldstream.model.dit import WorldDiT

        dtype = stage.session.torch_dtype
        return prepare_bundle(WorldDiT(dit_cfg), self.vae, None, dtype=dtype, source="sample video")

    def __call__(self, ctx: HookContext) -> dict[str, float] | None:
        """The video of step `ctx.step`; its scores. NOTE a failure is reported (a warning and
        `sample/failed` = 1) but never stops the run: the video is a by-product of training."""
        from worldstream.parallel.parallelize import full_state_dict

        t0 = time.perf_counter()
        # 1. the weights (a collective under fsdp2: every rank joins, rank 0 samples)
        module = _module(ctx.cfg)[0]
        state = full_state_dict(ctx.bundle.for_eval(module))
        if ctx.rank != 0:
            return None
        try:
            logs = self.sample_video(ctx, state)
        except Exception as e:  # noqa: BLE001 (reported, see the docstring)
            warnings.warn(f"sample video of step {ctx.step} failed: {type(e).__name__}: {e}", stacklevel=2)
            return {"sample/failed": 1.0}
        logs["sample/seconds"] = time.perf_counter() - t0
        return logs

    def sample_video(self, ctx: HookContext, state: dict[str, torch.Tensor]) -> dict[str, float]:
        """Roll out with the weights `state`, write RUN_DIR/samples/step_XXXXXX.mp4, return the scores."""
        lat_h, lat_w = self.sample.latents.shape[-2:]
        raw = ctx.bundle.raw(_module(ctx.cfg)[0])
        stage = _stage(ctx.cfg, lat_h, lat_w, raw.cfg.camera_block)
        if self.bundle is None:
            self.bundle = self._prepare(raw.cfg, stage)
        self.bundle.dit.load_state_dict(state)
        self.last_session = stage.session
        # 1. the rollout and both decodes
        with torch.inference_mode():
            generated, truth = self.rollout(stage.session)
            video = self.bundle.vae.decode(generated)  # [1, 3, F, H, W]
            if self.truth is None:
                self.truth = self.bundle.vae.decode(truth)
        # 2. the video and the scores (frame 0 is the image in both)
        write_comparison(sample_path(ctx.out_dir, ctx.step), self.truth, video, ctx.cfg.data.samples)
        first = stage.session.schedule.first_clip_frames
        logs = {"sample/psnr": _psnr(video[:, :, 1:], self.truth[:, :, 1:]),
                "sample/psnr_first_clip": _psnr(video[:, :, 1:first], self.truth[:, :, 1:first]),
                "sample/latent_rmse": float((generated[:, :, 1:].float() - truth[:, :, 1:].float())
                                            .square().mean().sqrt())}
        if video.shape[2] > first:
            logs["sample/psnr_later"] = _psnr(video[:, :, first:], self.truth[:, :, first:])
        return logs

    def rollout(self, session: SessionConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """(generated, ground truth) latent timelines [1, C, T, h, w] of `self.clips` session clips."""
        from worldstream.infer.rollout import new_state, rollout_clip, rows_for_next_clip

        s, bundle = self.sample, self.bundle
        latents = s.latents[None].to(session.torch_dtype)  # [1, C, T_all, h, w]
        context = s.text[: max(1, s.text_length)]
        state = new_state(bundle, session, latents[:, :, :1], context)
        out, f = [latents[:, :, :1]], 0
        for _ in range(self.clips):
            n = rows_for_next_clip(state, session)
            new, _ = rollout_clip(bundle, state, (s.keyboard[f:f + n], s.mouse[f:f + n]), session)
            out.append(new.to(latents.dtype))
            f += n
        generated = torch.cat(out, dim=2)
        return generated, latents[:, :, : generated.shape[2]]


def _check_same_vae(train_vae, eval_vae, train_dir: Path, eval_dir: Path) -> None:
    """Eval latents must live in the training latents' space: same encoder and latent statistics (the
    decoders may differ, e.g. after a decoder fine-tune: the training directory's VAE decodes both)."""
    def space(vae) -> tuple:
        c = vae.cfg
        return c.z_dim, c.latent_mean, c.latent_std, c.patch_size, c.temporal_downsample

    a, b = train_vae.state_dict(), eval_vae.state_dict()
    keys = [k for k in a if k.startswith(ENCODER_KEYS)]
    same = space(train_vae) == space(eval_vae) and all(k in b and torch.equal(a[k], b[k]) for k in keys)
    if not same:
        raise ValueError(f"data.eval_path {eval_dir} was cached with another VAE encoder or other latent "
                         f"statistics than data.path {train_dir} ({eval_dir}/vae vs {train_dir}/vae); "
                         f"re-cache it with `worldstream data cache-latents --vae {train_dir}/vae ...`")


def write_comparison(path: Path, truth: torch.Tensor, generated: torch.Tensor, s: SampleVideoConfig) -> None:
    """Videos [1, 3, F, H, W] in [-1, 1] -> an mp4 of F frames [2H, W]: truth on top, generated below."""
    from worldstream.infer.session import frames_to_uint8
    from worldstream.utils.video import write_mp4

    if truth.shape != generated.shape:
        raise ValueError(f"sample video: ground truth {list(truth.shape)} and generated "
                         f"{list(generated.shape)} differ")
    frames = np.concatenate([frames_to_uint8(truth), frames_to_uint8(generated)], axis=1)  # [F, 2H, W, 3]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, frames, s.fps, s.quality)


def dit_sample_hooks(cfg: RunConfig) -> list[Hook]:
    """Recipe `hooks=`: the sample video every `logging.sample_every_n_steps` (0: none)."""
    from worldstream.train.trainer import Hook

    every = cfg.logging.sample_every_n_steps
    if every <= 0:
        return []
    # fsdp2: the weight gather is a collective, so every rank runs the hook (rank 0 samples)
    return [Hook(every, SampleVideoHook(cfg), "sample_video", rank0_only=cfg.parallel.mode != "fsdp2")]
