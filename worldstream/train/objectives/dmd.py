"""Stage 4: DMD distillation of the memory model into a few-step student, on multi-segment self-rollouts.

Three modules (SPEC "Training" 4; DMD: Yin et al. 2024, DMD2: Yin et al. 2024 "Improved Distribution
Matching Distillation"; self-rollout: Huang et al. 2025 "Self Forcing"). MG3's distillation code is not
public: the numbers below are config fields, not facts.
* `teacher` (frozen): the memory-stage DiT, the "real score".
* `critic` (trained, init = teacher): the "fake score", flow matching on the student's (detached) samples.
* `student` (trained, init = teacher): sampled with the session's few-step sampler (`FewStepScheduler`:
  x0 at each of 4 fixed sigmas, re-noised in between).

Per micro-batch (each sample of it a separate rollout, batch 1 as the session):
1. Cold start (the first `cold_start_steps` trainer steps): the student learns plain x0 denoising (the
   v-target of flow matching) at its own few-step sigmas on real windows; the critic flow matching on the
   same windows. No rollout.
2. Self-rollout: n ~ U{1..max_segments} segments generated exactly as a `WorldSession` would: the image
   latent and the actions/prompt come from the data clip, segment 0 is the first clip, later segments
   take their past from the tail of the previous one and their memory from the session's online
   `MemoryBank` (the latents generated so far, retrieved by camera overlap). Segments 0..n-2 run through
   `infer/rollout.py`'s `rollout_clip` itself (no gradients); the last one through `prepare_clip` and
   `few_step_exit`: the sampler stops at a random step j (Self Forcing's random exit) and the student's x0
   prediction there is the sample x, with gradients through that one DiT call only.
3. Student loss (DMD2): sigma ~ `dmd_flow`; x_t = (1 - sigma) x + sigma eps; teacher and critic x0
   predictions on x_t with the segment's conditions (prefix, memory, actions, cameras); grad = (critic x0
   - teacher x0) / mean|x - teacher x0| (per sample); loss = 0.5 * ||x - stopgrad(x - grad)||^2, whose
   gradient w.r.t. x is that grad (mean-reduced). Only the last segment's new latents enter any loss.
4. Critic loss: flow matching (sigma ~ `critic_flow`) on the detached x with the same conditions.

Update ratio: `optim.critic.update_every` / `optim.student.update_every` (DMD2: 5 critic steps per student
step); `bundle.due` says which losses to build, so critic-only steps run the rollout without gradients.
Resumable: every random draw (segments, exit step, sigmas, noise, the rollout generator's seed) comes from
the global torch RNG, which the trainer checkpoints; the objective keeps no other state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from worldstream.diffusion.flow import FlowConfig, add_noise, sample_training_sigmas, x0_from_velocity
from worldstream.diffusion.samplers import FewStepScheduler, clip_timestep_tokens, make_scheduler
from worldstream.geometry.retrieval import RetrievalConfig
from worldstream.infer.config import FEW_STEP_STEPS, SessionConfig
from worldstream.infer.model_bundle import InferenceBundle
from worldstream.infer.rollout import ClipInputs, new_state, prepare_clip, rollout_clip, rows_for_next_clip
from worldstream.train.batch import ClipLatents, LatentBatch, frames_for_latents
from worldstream.train.conditioning import MemoryWindowConfig, TrainWindowConfig, token_timesteps
from worldstream.train.objectives import ModelBundle
from worldstream.train.objectives.flow_matching import FlowMatchingConfig, FlowMatchingObjective
from worldstream.train.objectives.memory import MemoryObjective, MemoryObjectiveConfig

__all__ = ["DMDConfig", "DMDObjective", "LatentSpace", "LatentBundle", "dmd_gradient",
           "distribution_matching_loss", "critic_flow_loss", "few_step_exit"]

# (x [B, ...] at noise level sigma [B]) -> velocity or x0 prediction [B, ...]
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SEED_HIGH = 2**62  # rollout generator seeds are drawn from the torch stream in [0, SEED_HIGH)


########################################################################################################
# The DMD pieces (model-agnostic: the DiT objective below and the toy tests share them)


def dmd_gradient(x: torch.Tensor, teacher_x0: torch.Tensor, critic_x0: torch.Tensor, eps: float
                 ) -> torch.Tensor:
    """DMD2's normalised gradient on samples x [B, ...]: (critic x0 - teacher x0) / mean|x - teacher x0|.

    = (p_real - p_fake) / mean|p_real| with p = x - x0, the normaliser per sample (floored at `eps`).
    """
    dims = tuple(range(1, x.ndim))
    norm = (x - teacher_x0).abs().mean(dim=dims, keepdim=True).clamp_min(eps)  # [B, 1, ...]
    return (critic_x0 - teacher_x0) / norm


def _per_sample(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sigma.reshape(-1, *([1] * (like.ndim - 1))).to(like.device, torch.float32)


def distribution_matching_loss(x: torch.Tensor, teacher_x0: ScoreFn, critic_x0: ScoreFn, sigma: torch.Tensor,
                               noise: torch.Tensor, eps: float
                               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Student loss on samples x [B, ...] (with gradients): 0.5 * ||x - stopgrad(x - grad)||^2 (mean).

    teacher_x0 / critic_x0 map (x_t, sigma [B]) to x0 predictions; both run without gradients on
    x_t = (1 - sigma) x + sigma noise. d loss / d x = grad / x.numel(): the DMD gradient, pushed through
    whatever produced x.
    """
    with torch.no_grad():
        xd = x.detach().float()
        x_t = add_noise(xd, noise.float(), _per_sample(sigma, xd))
        real, fake = teacher_x0(x_t, sigma).float(), critic_x0(x_t, sigma).float()
        grad = torch.nan_to_num(dmd_gradient(xd, real, fake, eps))
    loss = 0.5 * F.mse_loss(x.float(), xd - grad)
    logs = {"dmd_grad_abs": grad.abs().mean(), "teacher_critic_gap": (fake - real).abs().mean(),
            "teacher_residual": (xd - real).abs().mean()}
    return loss, logs


def critic_flow_loss(x: torch.Tensor, critic_v: ScoreFn, sigma: torch.Tensor, noise: torch.Tensor
                     ) -> torch.Tensor:
    """Critic flow matching on detached samples x [B, ...]: ||v(x_t, sigma) - (noise - x)||^2 (mean)."""
    xd = x.detach().float()
    x_t = add_noise(xd, noise.float(), _per_sample(sigma, xd))
    return F.mse_loss(critic_v(x_t, sigma).float(), noise.float() - xd)


def few_step_exit(velocity: Callable[[torch.Tensor, int], torch.Tensor], noise: torch.Tensor,
                  scheduler: FewStepScheduler, exit_step: int,
                  velocity_grad: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> torch.Tensor:
    """The few-step sampler stopped at step `exit_step`: its x0 prediction there (Self Forcing's exit).

    `velocity(x, i)` is the student at step i (run without gradients for steps < exit_step);
    `velocity_grad` (default: none -> no gradients at all) is the call whose graph the loss goes through.
    Steps 0..exit_step-1 are the scheduler's own (x0, then re-noised to the next sigma), so
    exit_step = last gives exactly the sampler's output distribution.
    """
    if scheduler.timesteps is None:
        raise ValueError("few_step_exit: call scheduler.set_timesteps first")
    n = len(scheduler.timesteps)
    if not 0 <= exit_step < n:
        raise ValueError(f"few_step_exit: exit_step {exit_step} outside the sampler's {n} steps")
    x = noise
    for i, t in enumerate(scheduler.timesteps[:exit_step]):
        with torch.no_grad():
            x = scheduler.step(velocity(x, i), t, x)
    sigma = scheduler.sigmas[exit_step]
    with contextlib.nullcontext() if velocity_grad is not None else torch.no_grad():
        v = (velocity_grad or velocity)(x, exit_step)
    return x0_from_velocity(x.float(), v.float(), sigma)


########################################################################################################
# Latent-space rollouts (no VAE)


@dataclass(frozen=True)
class LatentSpace:
    """The VAE numbers a latent-space rollout needs (it never encodes or decodes)."""

    z_dim: int
    spatial_stride: int
    temporal_stride: int


@dataclass
class LatentBundle(InferenceBundle):
    """An `InferenceBundle` without a VAE (vae=None): `vae_config` is the latent space only."""

    space: LatentSpace | None = None

    @property
    def vae_config(self) -> LatentSpace:
        if self.space is None:
            raise ValueError("LatentBundle needs a LatentSpace")
        return self.space


@dataclass
class Segment:
    """The trained (last) segment of one rollout."""

    x: torch.Tensor  # [1, C, F_new, h, w] student x0 at the exit step (gradients when the student is due)
    inputs: ClipInputs  # its conditions (prefix, memory, actions, cameras, prompt)
    exit_step: int


########################################################################################################
# The objective


@dataclass(frozen=True)
class DMDConfig:
    """DMD stage (nano defaults): segments, memory, noise levels, cold start, module names."""

    window: TrainWindowConfig = field(default_factory=TrainWindowConfig)  # P past + F new (session schedule)
    use_memory: bool = True  # memory from the online bank from segment 1 on (False: no memory tokens)
    retrieval: RetrievalConfig = field(default_factory=lambda: RetrievalConfig(base_offsets=(1, 9, 17, 25)))
    anchor: bool = True  # last memory slot = the anchor latent (as the session)
    max_segments: int = 3  # K: a rollout has 1..K segments (uniform); the loss is on the last one
    exit: Literal["random", "last"] = "random"  # exit step of the last segment: random (Self Forcing)
    # or the sampler's last step
    dmd_flow: FlowConfig = field(default_factory=lambda: FlowConfig(  # DMD2 t ~ U[0.02, 0.98]
        timestep_sampling="uniform", shift=1.0, sigma_min=0.02, sigma_max=0.98))
    critic_flow: FlowConfig = field(default_factory=FlowConfig)  # the flow-matching stages' sigmas
    norm_eps: float = 1e-6  # floor of DMD2's per-sample normaliser mean|x - teacher x0|
    cold_start_steps: int = 0  # trainer steps of few-step denoising on real windows before the rollouts
    teacher: str = "teacher"  # bundle module names
    critic: str = "critic"
    student: str = "student"

    def __post_init__(self) -> None:
        if self.max_segments < 1:
            raise ValueError(f"DMDConfig: max_segments must be >= 1, got {self.max_segments}")
        if self.exit not in ("random", "last"):
            raise ValueError(f"DMDConfig: exit must be 'random' or 'last', got {self.exit!r}")
        if self.cold_start_steps < 0 or self.norm_eps <= 0:
            raise ValueError(f"DMDConfig: need cold_start_steps >= 0 and norm_eps > 0, got "
                             f"{self.cold_start_steps}, {self.norm_eps}")

    @property
    def memory(self) -> MemoryWindowConfig | None:
        """The same retrieval slots for the cold start's real windows (MG3's training sampler)."""
        if not self.use_memory:
            return None
        return MemoryWindowConfig(num_memory=self.retrieval.num_memory, anchor=self.anchor,
                                  retrieval=self.retrieval)

    def frames_needed(self, segments: int) -> int:
        """Pixel frames (action rows) of a rollout of `segments` clips: first clip + new frames per later."""
        s = self.window.schedule
        return s.first_clip_frames + (segments - 1) * s.new_frames


class DMDObjective:
    """`objective(bundle, ClipLatents, step) -> ({"critic": .., "student": ..}, logs)`; see the docstring."""

    def __init__(self, cfg: DMDConfig = DMDConfig()):
        self.cfg = cfg
        # real-window preparation for the cold start (the flow-matching stages' windows; no error injection)
        if cfg.use_memory:
            self.windows: FlowMatchingObjective = MemoryObjective(MemoryObjectiveConfig(
                window=cfg.window, memory=cfg.memory, require_rope_jitter=False))
        else:
            self.windows = FlowMatchingObjective(FlowMatchingConfig(window=cfg.window))

    @classmethod
    def from_run(cls, run) -> DMDObjective:
        return cls(run.objective)

    # ---- configuration of the rollouts ----------------------------------------------------------------

    def session_config(self, dit: nn.Module, lat_h: int, lat_w: int, seed: int) -> SessionConfig:
        """The streaming settings the student is distilled for (few-step sampler, fp32 latents)."""
        c = self.cfg
        s = dit.cfg.camera_block  # = the VAE's spatial stride (InferenceBundle.check)
        return SessionConfig(schedule=c.window.schedule, retrieval=c.retrieval, use_memory=c.use_memory,
                             anchor=c.anchor, sampler="few_step", steps=FEW_STEP_STEPS,
                             timestep_in_latent_dtype=False, dtype="float32", height=lat_h * s,
                             width=lat_w * s, seed=seed)

    def latent_bundle(self, dit: nn.Module) -> LatentBundle:
        c = dit.cfg
        return LatentBundle(dit, None, None, source="dmd student",
                            space=LatentSpace(c.in_dim, c.camera_block, self.cfg.window.temporal_stride))

    # ---- the objective -------------------------------------------------------------------------------

    def __call__(self, bundle: ModelBundle, batch: ClipLatents, step: int):
        cfg = self.cfg
        if not isinstance(batch, ClipLatents):
            raise ValueError(f"DMDObjective takes ClipLatents batches, got {type(batch).__name__}")
        batch.validate(cfg.window.temporal_stride)
        due = bundle.due or frozenset((cfg.critic, cfg.student))
        if step < cfg.cold_start_steps:
            return self.cold_start(bundle, batch, due)
        segments = 1 + int(torch.randint(cfg.max_segments, ()))
        need = cfg.frames_needed(segments)
        if batch.num_frames < need:
            first = frames_for_latents(cfg.window.first_clip_latents, cfg.window.temporal_stride)
            raise ValueError(f"a rollout of {segments} segment(s) needs clips of >= {need} frames ({first} + "
                             f"{segments - 1} x {cfg.window.schedule.new_frames}); the clips have "
                             f"{batch.num_frames}: lower objective.max_segments or use longer clips")
        losses: dict[str, torch.Tensor] = {}
        sums: dict[str, float] = {}
        B = len(batch)
        for b in range(B):
            seg = self.self_rollout(bundle, batch, b, segments, grad=cfg.student in due)
            out: dict[str, torch.Tensor] = {}
            if cfg.student in due:
                out[cfg.student], logs = self.student_loss(bundle, seg)
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + float(v) / B
            if cfg.critic in due:
                out[cfg.critic] = self.critic_loss(bundle, seg)
            for k, v in out.items():
                losses[k] = losses[k] + v / B if k in losses else v / B
            sums["exit_step"] = sums.get("exit_step", 0.0) + seg.exit_step / B
            rms = float(seg.x.detach().square().mean().sqrt())
            sums["student_x0_rms"] = sums.get("student_x0_rms", 0.0) + rms / B
        logs = {"segments": float(segments), "cold_start": 0.0,
                "memory": float(seg.inputs.memory is not None), **sums}
        return losses, logs

    # ---- rollout ----------------------------------------------------------------------------------------

    def self_rollout(self, bundle: ModelBundle, batch: ClipLatents, b: int, segments: int, grad: bool
                     ) -> Segment:
        """Sample b's rollout of `segments` clips; the last one with gradients through its exit step."""
        cfg = self.cfg
        student = bundle.raw(cfg.student)
        lat_h, lat_w = batch.latents.shape[-2:]
        scfg = self.session_config(student, lat_h, lat_w, seed=int(torch.randint(SEED_HIGH, ())))
        lb = self.latent_bundle(student)
        n_text = max(1, int(batch.text_lengths[b]))
        image = batch.latents[b:b + 1, :, :1].to(scfg.torch_dtype)  # [1, C, 1, h, w] latent 0 of the clip
        state = new_state(lb, scfg, image, batch.text[b, :n_text])
        kb, ms = batch.keyboard[b].float().cpu().numpy(), batch.mouse[b].float().cpu().numpy()
        f = 0
        # 1. the earlier segments: exactly the session's clips (inference mode, no gradients)
        for _ in range(segments - 1):
            n = rows_for_next_clip(state, scfg)
            rollout_clip(lb, state, (kb[f:f + n], ms[f:f + n]), scfg)
            f += n
        # 2. the last segment: the same inputs, the sampler stopped at the exit step
        n = rows_for_next_clip(state, scfg)
        inputs = prepare_clip(lb, state, (kb[f:f + n], ms[f:f + n]), scfg)
        _detach_inputs(inputs)
        scheduler = make_scheduler("few_step", generator=state.generator)
        scheduler.set_timesteps(scfg.steps, shift=scfg.shift, device=inputs.noise.device)
        steps = len(scheduler.timesteps)
        exit_step = steps - 1 if cfg.exit == "last" else int(torch.randint(steps, ()))
        P = inputs.num_prefix
        velocity = self._velocity(inputs, inputs.denoiser(student), scheduler)
        velocity_grad = None
        if grad:  # the (possibly DDP-wrapped) training module, for the one call the loss goes through
            velocity_grad = self._velocity(inputs, inputs.denoiser(bundle[cfg.student]), scheduler)
        x = few_step_exit(velocity, inputs.noise[:, :, P:].float(), scheduler, exit_step, velocity_grad)
        return Segment(x, inputs, exit_step)

    @staticmethod
    def _velocity(inputs: ClipInputs, denoise, scheduler: FewStepScheduler):
        """x (the new latents) at step i -> the DiT's velocity on them (prefix stitched in, t = 0 there)."""
        P = inputs.num_prefix

        def velocity(x: torch.Tensor, i: int) -> torch.Tensor:
            F_ = P + x.shape[2]
            t = clip_timestep_tokens(float(scheduler.timesteps[i]), 1, F_, inputs.tokens_per_frame, P,
                                     torch.float32, x.device)
            return denoise(torch.cat([inputs.prefix.to(x.dtype), x], dim=2), t)[:, :, P:]

        return velocity

    def _scores(self, inputs: ClipInputs, dit: nn.Module, x0: bool) -> Callable:
        """(x_t [1, C, F_new, h, w], sigma [1]) -> the DiT's x0 (or velocity) on the new latents."""
        P, denoise = inputs.num_prefix, inputs.denoiser(dit)
        n_train = self.cfg.critic_flow.num_train_timesteps

        def score(x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            F_ = P + x_t.shape[2]
            t = clip_timestep_tokens(float(sigma.reshape(-1)[0]) * n_train, 1, F_, inputs.tokens_per_frame, P,
                                     torch.float32, x_t.device)
            v = denoise(torch.cat([inputs.prefix.to(x_t.dtype), x_t], dim=2), t)[:, :, P:].float()
            return x0_from_velocity(x_t, v, _per_sample(sigma, x_t)) if x0 else v

        return score

    # ---- losses -------------------------------------------------------------------------------------------

    def student_loss(self, bundle: ModelBundle, seg: Segment) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        sigma = sample_training_sigmas(1, cfg.dmd_flow, device=seg.x.device)  # [1]
        noise = torch.randn(seg.x.shape, device=seg.x.device)
        # NOTE raw teacher and critic: no gradient flows into them from this loss (objectives/__init__)
        loss, logs = distribution_matching_loss(
            seg.x, self._scores(seg.inputs, bundle.raw(cfg.teacher), x0=True),
            self._scores(seg.inputs, bundle.raw(cfg.critic), x0=True), sigma, noise, cfg.norm_eps)
        return loss, {**logs, "dmd_sigma": sigma.mean()}

    def critic_loss(self, bundle: ModelBundle, seg: Segment) -> torch.Tensor:
        cfg = self.cfg
        sigma = sample_training_sigmas(1, cfg.critic_flow, device=seg.x.device)
        noise = torch.randn(seg.x.shape, device=seg.x.device)
        return critic_flow_loss(seg.x, self._scores(seg.inputs, bundle[cfg.critic], x0=False), sigma, noise)

    # ---- cold start ---------------------------------------------------------------------------------------

    def cold_start(self, bundle: ModelBundle, batch: ClipLatents, due: frozenset[str]):
        """Student: v-target MSE at its own few-step sigmas; critic: flow matching; on real windows."""
        cfg = self.cfg
        raw = bundle.raw(cfg.student)
        wb = self.windows.prepare(batch, raw.cfg.camera_block)
        _, ph, pw = raw.cfg.patch_size
        tpf = (wb.latents.shape[-2] // ph) * (wb.latents.shape[-1] // pw)
        losses, logs = {}, {"cold_start": 1.0, "first_clip": float(wb.first_clip)}
        if cfg.student in due:
            sched = make_scheduler("few_step")
            sched.set_timesteps(FEW_STEP_STEPS, shift=SessionConfig.shift)
            pick = torch.randint(len(sched.timesteps), (len(wb),))
            sigma = sched.sigmas[pick].to(wb.latents.device)
            losses[cfg.student] = self._window_flow_loss(bundle[cfg.student], wb, sigma, tpf)
        if cfg.critic in due:
            sigma = sample_training_sigmas(len(wb), cfg.critic_flow, device=wb.latents.device)
            losses[cfg.critic] = self._window_flow_loss(bundle[cfg.critic], wb, sigma, tpf)
        return losses, logs

    def _window_flow_loss(self, model: nn.Module, wb: LatentBatch, sigma: torch.Tensor, tpf: int
                          ) -> torch.Tensor:
        """Flow-matching MSE on the current latents of real windows (clean prefix and memory)."""
        P = wb.num_prefix
        x0 = wb.latents.float()
        eps = torch.randn_like(x0[:, :, P:])
        x_t = add_noise(x0[:, :, P:], eps, _per_sample(sigma, eps))
        x_in = torch.cat([x0[:, :, :P], x_t], dim=2)
        t = token_timesteps(sigma, wb.num_frames, P, tpf, self.cfg.critic_flow.num_train_timesteps)
        memory = None if wb.memory is None else wb.memory.float()
        pred, _ = self.windows.forward(model, wb, x_in, t, memory, tpf)  # [B, C, M+F, h, w]
        v = pred[:, :, wb.loss_mask().to(pred.device)].float()
        return F.mse_loss(v, eps - x0[:, :, P:])


def _detach_inputs(inputs: ClipInputs) -> None:
    """Plain (non-inference-mode) copies of the stored latents the trained segment reads."""
    inputs.prefix = inputs.prefix.clone()
    if "x_memory" in inputs.memory_kwargs:
        inputs.memory_kwargs = {**inputs.memory_kwargs, "x_memory": inputs.memory_kwargs["x_memory"].clone()}
