"""DMD (objectives/dmd.py): the gradient, a toy 2D distillation, and the DiT objective's self-rollout.

* Toy: an analytic flow teacher for a known mixture of Gaussians (its exact x0 posterior mean), an MLP
  critic and a 4-step MLP student trained with the module's own loss functions; the energy distance of
  the student's samples to the data falls by more than half (a flipped gradient sign makes it grow).
* DiT: tiny models on synthetic clips; critic == teacher gives an exactly zero student gradient; a rollout
  of several segments has gradients through one student call of its last segment only.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from worldstream.data.actions import poses_from_actions
from worldstream.diffusion.flow import FlowConfig, sample_training_sigmas, x0_from_velocity
from worldstream.diffusion.samplers import FewStepScheduler
from worldstream.geometry.camera import extrinsics_from_poses
from worldstream.model.dit import ActionConfig, DiTConfig, WorldDiT
from worldstream.train.batch import ClipLatents
from worldstream.train.objectives import ModelBundle
from worldstream.train.objectives.dmd import (
    DMDConfig,
    DMDObjective,
    critic_flow_loss,
    distribution_matching_loss,
    dmd_gradient,
    few_step_exit,
)

# ---------------------------------------------------------------------------------------------------
# the gradient


def test_dmd_gradient_is_normalised_per_sample_and_zero_when_critic_equals_teacher():
    x = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    teacher = torch.tensor([[0.0, 1.0], [2.0, 2.0]])  # mean |x - teacher| = 1.5, 2.0
    critic = teacher + torch.tensor([[3.0, 0.0], [0.0, -4.0]])
    g = dmd_gradient(x, teacher, critic, eps=1e-6)
    torch.testing.assert_close(g, torch.tensor([[2.0, 0.0], [0.0, -2.0]]))
    assert torch.equal(dmd_gradient(x, teacher, teacher.clone(), eps=1e-6), torch.zeros_like(x))


def test_loss_gradient_on_the_samples_is_the_dmd_gradient():
    torch.manual_seed(0)
    x = torch.randn(3, 4, requires_grad=True)
    shift = torch.tensor([0.5, -1.0, 0.0, 2.0])

    def teacher(x_t, s):
        return x_t * 0.5

    def critic(x_t, s):
        return x_t * 0.5 + shift

    sigma, noise = torch.full((3,), 0.3), torch.randn(3, 4)
    loss, logs = distribution_matching_loss(x, teacher, critic, sigma, noise, 1e-6)
    loss.backward()
    x_t = 0.7 * x.detach() + 0.3 * noise
    expected = dmd_gradient(x.detach(), teacher(x_t, sigma), critic(x_t, sigma), 1e-6) / x.numel()
    torch.testing.assert_close(x.grad, expected)
    assert float(logs["teacher_critic_gap"]) == pytest.approx(float(shift.abs().mean()))


# ---------------------------------------------------------------------------------------------------
# toy 2D: analytic mixture-of-Gaussians teacher, MLP critic and few-step student

MODES, RADIUS, TAU = 4, 2.0, 0.15
MU = torch.tensor([[RADIUS * math.cos(2 * math.pi * k / MODES), RADIUS * math.sin(2 * math.pi * k / MODES)]
                   for k in range(MODES)])


def mog_x0(x_t: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[x0 | x_t] for x0 ~ equal mixture N(mu_k, tau^2 I), x_t = (1 - s) x0 + s eps: the exact teacher."""
    s = sigma.reshape(-1, 1, 1)
    a = 1 - s
    var = a**2 * TAU**2 + s**2  # [B, 1, 1]
    d = x_t[:, None, :] - a * MU[None]  # [B, K, 2]
    w = torch.softmax(-(d**2).sum(-1, keepdim=True) / (2 * var), dim=1)
    return (w * (MU[None] + a * TAU**2 / var * d)).sum(1)


class ToyNet(nn.Module):
    """(x [B, 2], sigma [B] or scalar) -> velocity [B, 2]."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(3, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                               nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.reshape(-1, 1).float().expand(len(x), 1)
        return self.f(torch.cat([x, s], dim=-1))


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


def toy_distill(student_steps: int, critic_per_student: int, flip: bool = False) -> tuple[float, float]:
    torch.manual_seed(0)
    student, critic = ToyNet(), ToyNet()
    sched = FewStepScheduler(generator=torch.Generator().manual_seed(1))
    sched.set_timesteps()
    opt_s = torch.optim.Adam(student.parameters(), lr=1e-3)
    opt_c = torch.optim.Adam(critic.parameters(), lr=2e-3)
    dmd_flow = DMDConfig().dmd_flow
    critic_flow = FlowConfig(timestep_sampling="uniform", shift=1.0)
    data = MU[torch.randint(MODES, (2000,))] + TAU * torch.randn(2000, 2)
    n = 256

    def sample(count: int, exit_step: int, grad: bool) -> torch.Tensor:
        sched.set_timesteps()

        def v(x, i):
            return student(x, sched.sigmas[i])

        return few_step_exit(v, torch.randn(count, 2), sched, exit_step, v if grad else None)

    def distance() -> float:
        with torch.no_grad():
            return energy_distance(sample(2000, 3, False), data)

    def critic_step() -> None:
        x = sample(n, int(torch.randint(4, ())), False)
        loss = critic_flow_loss(x, critic, sample_training_sigmas(n, critic_flow), torch.randn_like(x))
        opt_c.zero_grad()
        loss.backward()
        opt_c.step()

    def critic_x0(x_t, s):
        return x0_from_velocity(x_t, critic(x_t, s), s.reshape(-1, 1))

    before = distance()
    for _ in range(100):  # the critic first learns the student's initial distribution
        critic_step()
    for _ in range(student_steps):
        for _ in range(critic_per_student):
            critic_step()
        x = sample(n, int(torch.randint(4, ())), True)
        sigma = sample_training_sigmas(n, dmd_flow)
        teacher, fake = (critic_x0, mog_x0) if flip else (mog_x0, critic_x0)
        loss, _ = distribution_matching_loss(x, teacher, fake, sigma, torch.randn_like(x), 1e-6)
        opt_s.zero_grad()
        loss.backward()
        opt_s.step()
    return before, distance()


def test_toy_dmd_moves_a_few_step_student_to_the_teacher_distribution():
    before, after = toy_distill(student_steps=300, critic_per_student=5)
    assert after < 0.4 * before, (before, after)  # measured: 0.54 -> 0.10


def test_toy_dmd_with_teacher_and_critic_swapped_moves_away():
    before, after = toy_distill(student_steps=100, critic_per_student=5, flip=True)
    assert after > before, (before, after)


# ---------------------------------------------------------------------------------------------------
# the DiT objective on tiny models

TINY_DIT = DiTConfig(
    in_dim=8, out_dim=8, dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=8, text_len=4,
    action=ActionConfig(blocks=(0,), heads_num=1, hidden_size=8, img_hidden_size=32, keyboard_hidden_dim=64,
                        mouse_hidden_dim=64),
    camera_block=8, sigma_theta=0.8, rope_overflow="extend",
)
LATENTS = 15  # 57 frames: a first clip (25) + 2 later clips (16 each)


def tiny_clips(batch: int = 1, latents: int = LATENTS, seed: int = 0) -> ClipLatents:
    rng = np.random.default_rng(seed)
    nf = 4 * (latents - 1) + 1
    kb = (rng.random((batch, nf, 6)) < 0.3).astype(np.float32)
    ms = rng.choice([-0.05, 0.0, 0.05], size=(batch, nf, 2)).astype(np.float32)
    c2w = np.stack([extrinsics_from_poses(poses_from_actions(kb[b], ms[b])[0]) for b in range(batch)])
    g = torch.Generator().manual_seed(seed)
    return ClipLatents(latents=torch.randn(batch, 8, latents, 2, 4, generator=g), c2w=torch.from_numpy(c2w).float(),
                       keyboard=torch.from_numpy(kb), mouse=torch.from_numpy(ms),
                       text=torch.randn(batch, 3, 8, generator=g), text_lengths=torch.full((batch,), 3))


def tiny_bundle(critic_equals_teacher: bool = False) -> ModelBundle:
    torch.manual_seed(0)
    teacher = WorldDiT(TINY_DIT).requires_grad_(False)
    critic, student = copy.deepcopy(teacher).requires_grad_(True), copy.deepcopy(teacher).requires_grad_(True)
    if not critic_equals_teacher:
        with torch.no_grad():
            for p in critic.parameters():
                p.add_(0.05 * torch.randn_like(p))
    b = ModelBundle({"teacher": teacher, "critic": critic, "student": student})
    b.trained = ("critic", "student")
    return b


def grads(module: nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                      for p in module.parameters()])


def test_critic_equal_to_teacher_gives_zero_student_gradient():
    obj = DMDObjective(DMDConfig(max_segments=2))
    for equal in (True, False):
        bundle = tiny_bundle(critic_equals_teacher=equal)
        bundle.due = frozenset({"student"})
        torch.manual_seed(3)
        losses, logs = obj(bundle, tiny_clips(), step=0)
        assert set(losses) == {"student"}
        losses["student"].backward()
        g = grads(bundle.raw("student"))
        if equal:
            assert float(logs["teacher_critic_gap"]) == 0.0 and torch.count_nonzero(g) == 0
        else:
            assert float(logs["teacher_critic_gap"]) > 0 and float(g.abs().sum()) > 0
        assert float(grads(bundle.raw("critic")).abs().sum()) == 0  # the student loss never trains the critic


def record_calls(module: nn.Module) -> list[tuple[bool, tuple[int, int]]]:
    calls: list[tuple[bool, tuple[int, int]]] = []

    def hook(mod, args, kwargs):
        calls.append((torch.is_grad_enabled(), tuple(kwargs["predict_latent_idx"])))

    module.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def test_only_the_last_segment_carries_gradients():
    obj = DMDObjective(DMDConfig(max_segments=3, exit="last"))
    bundle = tiny_bundle()
    bundle.due = frozenset({"student", "critic"})
    calls = record_calls(bundle.raw("student"))
    torch.manual_seed(0)
    seg = obj.self_rollout(bundle, tiny_clips(), 0, segments=3, grad=True)
    # segments: clip 0 = latents [0, 7), clip 1 = [5, 11), clip 2 = [9, 15); 4 sampler steps each
    windows = [w for _, w in calls]
    assert windows == [(0, 7)] * 4 + [(5, 11)] * 4 + [(9, 15)] * 4
    assert [g for g, _ in calls] == [False] * 11 + [True]  # one call with a graph: the last segment's exit
    assert seg.x.shape == (1, 8, 4, 2, 4) and seg.x.requires_grad
    # memory of the last segment comes from the latents generated before it (the online bank)
    mem = seg.inputs.memory
    assert mem is not None and max(mem.latents) < 9 and mem.latents[-1] == 1  # anchor last
    loss, _ = obj.student_loss(bundle, seg)
    loss.backward()
    assert float(grads(bundle.raw("student")).abs().sum()) > 0
    # the prefix the last segment saw is the tail of segment 1, not data
    assert seg.inputs.prefix.shape == (1, 8, 2, 2, 4) and not seg.inputs.prefix.requires_grad


def test_random_segments_and_critic_only_steps():
    obj = DMDObjective(DMDConfig(max_segments=3))
    bundle = tiny_bundle()
    bundle.due = frozenset({"critic"})
    calls = record_calls(bundle.raw("student"))
    seen = set()
    for seed in range(4):
        torch.manual_seed(seed)
        calls.clear()
        losses, logs = obj(bundle, tiny_clips(), step=5)
        assert set(losses) == {"critic"} and torch.isfinite(losses["critic"])
        assert not any(g for g, _ in calls)  # no student graph when only the critic is updated
        seen.add(int(logs["segments"]))
        losses["critic"].backward()
    assert seen <= {1, 2, 3} and len(seen) >= 2
    assert float(grads(bundle.raw("critic")).abs().sum()) > 0


def test_cold_start_trains_both_on_real_windows():
    obj = DMDObjective(DMDConfig(cold_start_steps=2))
    bundle = tiny_bundle()
    bundle.due = frozenset({"critic", "student"})
    torch.manual_seed(1)
    losses, logs = obj(bundle, tiny_clips(batch=2), step=1)
    assert logs["cold_start"] == 1.0 and set(losses) == {"critic", "student"}
    (losses["critic"] + losses["student"]).backward()
    assert float(grads(bundle.raw("student")).abs().sum()) > 0 and float(grads(bundle.raw("critic")).abs().sum()) > 0


def test_clips_too_short_for_the_segments_are_refused():
    obj = DMDObjective(DMDConfig(max_segments=1))
    obj_long = DMDObjective(dataclasses.replace(obj.cfg, max_segments=4))
    bundle = tiny_bundle()
    obj(bundle, tiny_clips(latents=7), step=0)  # one segment = the first clip: 25 frames suffice
    with pytest.raises(ValueError, match=r"segment\(s\) needs clips of >= (41|57|73) frames .* the clips have 25"):
        for seed in range(20):  # some draw has more than one segment
            torch.manual_seed(seed)
            obj_long(bundle, tiny_clips(latents=7), step=0)
