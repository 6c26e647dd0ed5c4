"""Base and memory objectives: windows, conditioning, ErrorBuffer, masked loss, retrieval, resume, learning."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from worldstream.data.actions import KEY_INDEX, poses_from_actions
from worldstream.geometry.camera import (
    MG3_SCHEDULE,
    ClipSchedule,
    build_plucker_from_pose,
    extrinsics_from_poses,
    intrinsics_90fov,
    memory_relative_pose,
    plucker_for_clip,
)
from worldstream.geometry.retrieval import overlap_ratios
from worldstream.model.action import clip_latents_for_rows
from worldstream.model.dit import ActionConfig, DiTConfig, WorldDiT
from worldstream.train.batch import ClipLatents, LatentBatch, frames_for_latents
from worldstream.train.conditioning import (
    MemoryWindowConfig,
    TrainWindow,
    TrainWindowConfig,
    build_latent_batch,
    retrieve_memory,
    token_timesteps,
    window_plucker,
)
from worldstream.train.config import CheckpointConfig, LoggingConfig, OptimConfig, RunConfig, ScheduleConfig
from worldstream.train.logging import read_csv
from worldstream.train.objectives import ModelBundle
from worldstream.train.objectives.flow_matching import (
    ErrorBuffer,
    ErrorBufferConfig,
    FlowMatchingConfig,
    FlowMatchingObjective,
)
from worldstream.train.objectives.memory import (
    MemoryObjective,
    MemoryObjectiveConfig,
    load_base_weights,
)
from worldstream.train.recipes import Recipe
from worldstream.train.trainer import Trainer

STRIDE = 4
TINY = DiTConfig(
    in_dim=4, out_dim=4, dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=8, text_len=4,
    action=ActionConfig(blocks=(0,), heads_num=1, hidden_size=8, img_hidden_size=32, keyboard_hidden_dim=32,
                        mouse_hidden_dim=32, mouse_qk_dim_list=(8, 12, 12), rope_dim_list=(8, 12, 12)),
    sigma_theta=0.8, camera_block=2,
)
LAT_H = LAT_W = 4  # 2x2 tokens per latent, Plücker maps at 8x8 pixels


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: thread sync dominates on the shared 2-core machine
    yield
    torch.set_num_threads(n)


def tiny_dit(seed: int = 0, live: bool = True) -> WorldDiT:
    torch.manual_seed(seed)
    model = WorldDiT(TINY)
    model.init_weights()
    if live:  # the official init zeroes the head: make the output depend on the input
        with torch.no_grad():
            model.head.head.weight.normal_(0, 0.05)
    return model


def out_and_back() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """129 frames: W x8, a 360-degree spin in place, W x48 (outgoing, facing +X), then S x48 (walking
    backwards: the return faces the same way). Returns keyboard, mouse, poses [129, 5], c2w."""
    nf = frames_for_latents(33, STRIDE)
    kb = np.zeros((nf, 6), np.float32)
    ms = np.zeros((nf, 2), np.float32)
    kb[0:8, KEY_INDEX["W"]] = 1
    ms[8:32, 1] = 1.0  # 15 degrees per frame
    kb[32:80, KEY_INDEX["W"]] = 1
    kb[80:128, KEY_INDEX["S"]] = 1
    poses, _ = poses_from_actions(kb, ms)
    return kb, ms, poses, extrinsics_from_poses(poses)


def make_clip(B: int = 2, T: int = 12, seed: int = 0, trajectory: bool = False) -> ClipLatents:
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    nf = frames_for_latents(T, STRIDE)
    if trajectory:
        kb, ms, _, c2w = out_and_back()
        assert len(kb) == nf
        kb, ms, c2w = (np.stack([a] * B) for a in (kb, ms, c2w))
    else:
        kb = (rng.random((B, nf, 6)) < 0.3).astype(np.float32)
        ms = (rng.integers(-1, 2, (B, nf, 2)) * 0.1).astype(np.float32)
        c2w = np.stack([extrinsics_from_poses(poses_from_actions(kb[b], ms[b])[0]) for b in range(B)])
    return ClipLatents(
        latents=torch.randn(B, TINY.in_dim, T, LAT_H, LAT_W, generator=g), c2w=torch.from_numpy(c2w),
        keyboard=torch.from_numpy(kb), mouse=torch.from_numpy(ms),
        text=torch.randn(B, 3, TINY.text_dim, generator=g), text_lengths=torch.full((B,), 3),
    )


class Recorder(nn.Module):
    """The real DiT, with its call kwargs and output recorded, and an optional output perturbation
    (frame index over memory + clip frames, added value)."""

    def __init__(self, dit: WorldDiT, perturb: tuple[int, float] | None = None):
        super().__init__()
        self.dit, self.cfg, self.perturb = dit, dit.cfg, perturb
        self.calls: list[dict] = []

    def forward(self, **kw):
        out = self.dit(**kw)
        full = torch.cat(out, dim=2) if isinstance(out, tuple) else out
        self.calls.append({**kw, "out": full.detach().clone()})
        if self.perturb is not None:
            f, value = self.perturb
            full = full.clone()
            full[:, :, f] += value
        if isinstance(out, tuple):
            M = out[0].shape[2]
            return full[:, :, :M], full[:, :, M:]
        return full


def windows(objective: FlowMatchingObjective, clip: ClipLatents, seed: int) -> LatentBatch:
    torch.manual_seed(seed)
    return objective.prepare(clip, TINY.camera_block)


# -------------------------------------------------------------------------------------------------
# ErrorBuffer


def test_error_buffer_ring_uniform_sampling_and_state_round_trip():
    buf = ErrorBuffer(capacity=5)
    buf.add(torch.arange(3.0)[:, None, None, None].expand(3, 2, 1, 1))
    buf.add(torch.arange(3.0, 7.0)[:, None, None, None].expand(4, 2, 1, 1))
    assert len(buf) == 5 and buf.added == 7
    assert sorted(buf.data[:, 0, 0, 0].tolist()) == [2.0, 3.0, 4.0, 5.0, 6.0]  # the 5 most recent
    draws = buf.sample(4000, torch.Generator().manual_seed(0))[:, 0, 0, 0]
    counts = torch.bincount(draws.long(), minlength=7)[2:]
    assert counts.min() > 700 and counts.max() < 900  # uniform over the 5 entries

    raw = io.BytesIO()
    torch.save(buf.state_dict(), raw)
    raw.seek(0)
    again = ErrorBuffer(capacity=5)
    again.load_state_dict(torch.load(raw, weights_only=True))
    assert torch.equal(again.data, buf.data) and (again.next, again.size) == (buf.next, buf.size)
    for b in (buf, again):
        b.add(torch.full((2, 2, 1, 1), 9.0))
    assert torch.equal(again.sample(16, torch.Generator().manual_seed(1)),
                       buf.sample(16, torch.Generator().manual_seed(1)))

    with pytest.raises(ValueError, match=r"do not match the stored \[2, 1, 1\]"):
        buf.add(torch.zeros(1, 3, 1, 1))
    with pytest.raises(ValueError, match="empty"):
        ErrorBuffer(3).sample(1)
    half = ErrorBuffer(4, torch.bfloat16)
    half.add(torch.randn(3, 2, 2, 2))
    assert half.data.dtype == torch.bfloat16 and half.sample(2).dtype == torch.float32


# -------------------------------------------------------------------------------------------------
# windows and conditioning


def test_windows_follow_the_mg3_clip_schedule():
    for k in range(4):
        ref = MG3_SCHEDULE.window(k)
        w = TrainWindow(ref.latent_start, ref.latent_end - ref.latent_start, k == 0)
        assert (w.frame_start, w.frame_end) == (ref.start, ref.end)
        assert w.targets.tolist() == list(ref.targets)
        assert w.num_rows == (57 if k == 0 else 56)
        assert clip_latents_for_rows(w.num_rows, STRIDE) == w.num_latents  # official grouping rule
        assert w.base_frames((1, 9, 17, 25, 33)) == list(ref.base_frames((1, 9, 17, 25, 33)))
    nano = TrainWindowConfig().schedule  # the schedule the nano windows train
    assert (nano.first_clip_frames, nano.clip_frames, nano.new_frames, nano.past_latents) == (25, 24, 16, 2)
    # the window map equals the pipeline's clip map (clip 2 of the nano schedule)
    _, _, _, c2w = out_and_back()
    ref = nano.window(2)
    K = intrinsics_90fov(8, 8)
    w = TrainWindow(ref.latent_start, 6, False)
    np.testing.assert_array_equal(window_plucker(c2w, w, K, 8, 8, 4, 4), plucker_for_clip(c2w, ref, K, 8, 8, 4, 4)[0])


def test_batch_conditioning_shapes_actions_timesteps_and_memory():
    clip = make_clip(B=2, T=33, trajectory=True)
    clip.keyboard[:] = torch.arange(clip.num_frames, dtype=torch.float32)[None, :, None]  # row = frame index
    cfg, mem = TrainWindowConfig(), MemoryWindowConfig()
    wins = [TrainWindow(s, cfg.window_latents, False) for s in (10, 27)]
    wb = build_latent_batch(clip, wins, cfg, TINY.camera_block, memory=mem, rng=np.random.default_rng(0))
    M, F, P = mem.num_memory, cfg.window_latents, cfg.past_latents
    assert wb.latents.shape == (2, 4, F, LAT_H, LAT_W) and wb.num_prefix == P and not wb.first_clip
    assert wb.plucker.shape == (2, 6 * 2 * 2, M + F, LAT_H, LAT_W) and wb.plucker.dtype == torch.float32
    assert wb.keyboard.shape == (2, STRIDE * F, 6) and wb.mouse.shape == (2, STRIDE * F, 2)
    assert wb.loss_mask().tolist() == [False] * (M + P) + [True] * (F - P)
    for b, w in enumerate(wins):
        assert torch.equal(wb.latents[b], clip.latents[b, :, w.start:w.latent_end])
        assert wb.keyboard[b, :, 0].tolist() == list(range(w.frame_start, w.frame_end))  # the window's frames
        assert wb.predict_latent_idx[b].tolist() == [w.start, w.latent_end]
        idx = wb.memory_latent_idx[b]
        assert (idx < w.start).all() and idx[-1] == 1  # from the clip's past; anchor = latent 1 (frame 4)
        assert torch.equal(wb.memory[b], clip.latents[b, :, idx])
        frames = wb.memory_frames[b].tolist()
        assert idx.tolist() == [(f - 1) // STRIDE + 1 for f in frames]
        # memory maps: relative to the reference frames, one per slot (memory first)
        c2w = clip.c2w[b].numpy()
        K = intrinsics_90fov(8, 8)
        for slot, (f, r) in enumerate(zip(frames, w.base_frames(mem.retrieval.base_offsets))):
            want = build_plucker_from_pose(memory_relative_pose(c2w, f, r, cfg.schedule), K, 8, 8, 4, 4)
            np.testing.assert_allclose(wb.plucker[b, :, slot].numpy(), want[0, :, 0], atol=1e-6)
        # the window's first latent is the identity pose: origin 0 (channels 0..3*b*b)
        assert wb.plucker[b, : 3 * 4, M].abs().max() == 0
    assert len(wb.rope_groups()) == 2  # different windows -> one DiT call each
    t = token_timesteps(torch.tensor([0.5, 1.0]), F, P, 4, 1000)
    assert t.shape == (2, F * 4) and (t[:, : P * 4] == 0).all() and (t[1, P * 4:] == 1000).all()

    both = ClipLatents.stack([clip, make_clip(B=1, T=33, trajectory=True)])
    assert len(both) == 3 and torch.equal(both.latents[:2], clip.latents)
    with pytest.raises(ValueError, match="crop the timelines"):
        ClipLatents.stack([clip, make_clip(B=1, T=12)])
    with pytest.raises(ValueError, match="c2w: expected shape"):
        dataclasses.replace(clip, c2w=clip.c2w[:, :-1]).validate(STRIDE)
    with pytest.raises(ValueError, match="needs clips of >= 7 latents"):
        FlowMatchingObjective(FlowMatchingConfig(window=TrainWindowConfig(p_i2v=0.0))).prepare(
            make_clip(T=6), TINY.camera_block)


def test_first_clip_windows_have_the_image_prefix_and_no_memory():
    obj = MemoryObjective(MemoryObjectiveConfig(window=TrainWindowConfig(p_i2v=1.0)))
    wb = windows(obj, make_clip(T=12), seed=0)
    n = TrainWindowConfig().first_clip_latents
    assert wb.first_clip and wb.num_prefix == 1 and wb.memory is None
    assert wb.latents.shape[2] == n and wb.keyboard.shape[1] == STRIDE * (n - 1) + 1
    assert wb.predict_latent_idx.tolist() == [[0, n], [0, n]]


# -------------------------------------------------------------------------------------------------
# error injection, residuals, masked loss


@pytest.mark.parametrize("Objective", [FlowMatchingObjective, MemoryObjective])
def test_injection_shifts_past_and_memory_by_gamma_times_a_buffered_residual(Objective):
    gamma = 0.3
    cfg = (MemoryObjectiveConfig if Objective is MemoryObjective else FlowMatchingConfig)(
        window=TrainWindowConfig(p_i2v=0.0), errors=ErrorBufferConfig(capacity=1, min_entries=1, gamma=gamma))
    obj = Objective(cfg)
    clip = make_clip(B=2, T=33, trajectory=True)
    wb = windows(obj, clip, seed=0)
    residual = torch.randn(1, 4, LAT_H, LAT_W)
    obj.buffer.add(residual)  # the only entry: every draw is this residual
    rec = Recorder(tiny_dit())
    obj(ModelBundle({"model": rec}), wb, 0)
    x = torch.cat([c["x"] for c in rec.calls])  # groups are in batch order here (distinct windows)
    order = [i for g in wb.rope_groups() for i in g]
    P = wb.num_prefix
    torch.testing.assert_close(x[:, :, :P] - wb.latents[order, :, :P], gamma * residual[:, :, None].expand_as(
        x[:, :, :P]), rtol=0, atol=1e-6)
    assert (x[:, :, P:] - wb.latents[order, :, P:]).abs().min() > 0  # the current latents are noised
    if Objective is MemoryObjective:
        xm = torch.cat([c["x_memory"] for c in rec.calls])
        torch.testing.assert_close(xm - wb.memory[order], gamma * residual[:, :, None].expand_as(xm),
                                   rtol=0, atol=1e-6)
        call = rec.calls[0]
        assert (call["timestep_memory"] == 0).all() and (call["mouse_cond_memory"] == 1).all()
        assert (call["keyboard_cond_memory"] == -1).all()
        assert call["memory_latent_idx"] == wb.memory_latent_idx[order[0]].tolist()
    # the first clip's image latent stays clean (it is a real image at inference)
    obj = Objective(dataclasses.replace(cfg, window=TrainWindowConfig(p_i2v=1.0)))
    obj.buffer.add(residual)
    wb = windows(obj, clip, seed=1)
    rec = Recorder(tiny_dit())
    obj(ModelBundle({"model": rec}), wb, 0)
    assert torch.equal(rec.calls[0]["x"][:, :, :1], wb.latents[:, :, :1])


def test_no_injection_until_the_buffer_holds_min_entries():
    obj = FlowMatchingObjective(FlowMatchingConfig(window=TrainWindowConfig(p_i2v=0.0, shared_start=True),
                                                   errors=ErrorBufferConfig(capacity=64, min_entries=20)))
    clip, rec = make_clip(B=2), Recorder(tiny_dit())
    bundle = ModelBundle({"model": rec})
    injected = []
    for step in range(4):  # 2 samples x 4 current latents = 8 residuals per step
        wb = windows(obj, clip, seed=step)
        _, logs = obj(bundle, wb, step)
        P = wb.num_prefix
        injected.append(not torch.equal(rec.calls[-1]["x"][:, :, :P], wb.latents[:, :, :P]))
        assert logs["injecting"] == float(injected[-1]) and logs["dit_calls"] == 1
    assert injected == [False, False, False, True] and len(obj.buffer) == 32


@pytest.mark.parametrize("Objective", [FlowMatchingObjective, MemoryObjective])
def test_residuals_are_the_models_x0_error_on_current_latents(Objective):
    cfg = (MemoryObjectiveConfig if Objective is MemoryObjective else FlowMatchingConfig)(
        window=TrainWindowConfig(p_i2v=0.0))
    obj = Objective(cfg)
    wb = windows(obj, make_clip(B=2, T=33, trajectory=True), seed=3)
    rec = Recorder(tiny_dit())
    obj(ModelBundle({"model": rec}), wb, 0)
    M, P = wb.num_memory, wb.num_prefix
    expected = []
    for call in rec.calls:
        x_t = call["x"][:, :, P:]
        sigma = call["t"][:, -1] / 1000  # the last token is a noisy one
        v = call["out"][:, :, M + P:]
        idx = torch.tensor([wb.predict_latent_idx.tolist().index(list(call["predict_latent_idx"]))])
        x0 = wb.latents[idx, :, P:]
        expected.append(x_t - sigma[:, None, None, None, None] * v - x0)  # (x_t - t * v) - x_clean
    expected = torch.cat(expected).permute(0, 2, 1, 3, 4).reshape(-1, 4, LAT_H, LAT_W)
    stored = obj.buffer.data[: len(obj.buffer)]
    assert len(obj.buffer) == 2 * wb.num_current
    # the groups' order may differ from the batch order: compare as sets of entries
    dist = torch.cdist(expected.flatten(1), stored.flatten(1))
    assert dist.min(dim=1).values.max() < 1e-5


@pytest.mark.parametrize("Objective", [FlowMatchingObjective, MemoryObjective])
def test_loss_ignores_past_and_memory_positions(Objective):
    cfg = (MemoryObjectiveConfig if Objective is MemoryObjective else FlowMatchingConfig)(
        window=TrainWindowConfig(p_i2v=0.0))
    wb = windows(Objective(cfg), make_clip(B=2, T=33, trajectory=True), seed=4)
    M, P, F = wb.num_memory, wb.num_prefix, wb.num_frames
    dit = tiny_dit()

    def loss_with(perturb):
        torch.manual_seed(123)  # same sigmas and noise
        return Objective(cfg)(ModelBundle({"model": Recorder(dit, perturb)}), wb, 0)[0]

    base = loss_with(None)
    ignored = list(range(M + P))  # memory and past frames in the DiT's frame order
    assert ignored and all(torch.equal(loss_with((f, 10.0)), base) for f in ignored)
    assert all(not torch.allclose(loss_with((f, 10.0)), base) for f in range(M + P, M + F))


# -------------------------------------------------------------------------------------------------
# memory retrieval


@pytest.mark.parametrize("retriever", ["sampler", "fov"])
def test_memory_comes_from_the_outgoing_half_facing_the_same_way(retriever):
    _, _, poses, c2w = out_and_back()
    cfg, mem = TrainWindowConfig(), MemoryWindowConfig(retriever=retriever)
    window = TrainWindow(27, cfg.window_latents, False)  # the last 24 frames, walking back facing +X
    assert window.frame_start > 80 and window.frame_end == len(c2w)
    frames, refs = retrieve_memory(c2w, window, mem, cfg.schedule, np.random.default_rng(0))
    assert frames[-1] == 4 and len(frames) == mem.num_memory  # the anchor rule
    yaw = poses[:, 4]
    picks = frames[:-1]
    assert all(1 <= f < 80 for f in picks), picks  # the outgoing half, though return frames are nearer in time
    assert all(abs((yaw[f] + 180) % 360 - 180) < 45 for f in picks), yaw[picks]  # facing +X like the window
    spin_away = [f for f in range(8, 32) if abs((yaw[f] + 180) % 360 - 180) > 90]
    assert spin_away  # (the spin offers same-place frames facing away; they are not chosen)
    # retrieved frames overlap the window's view better than a typical earlier frame
    ratios = overlap_ratios(c2w[refs[:1]], c2w[1:window.frame_start])[0]
    assert all(ratios[f - 1] >= np.median(ratios) for f in picks)
    assert all(ratios[f - 1] > 0.5 for f in picks)


def test_memory_objective_requires_rope_jitter_and_loads_base_weights(tmp_path):
    clip = make_clip(T=12)
    flat = WorldDiT(dataclasses.replace(TINY, sigma_theta=0.0))
    with pytest.raises(ValueError, match="sigma_theta"):
        MemoryObjective()(ModelBundle({"model": flat}), clip, 0)
    base = tiny_dit(seed=1)
    step = tmp_path / "ckpt" / "step_000010"
    step.mkdir(parents=True)
    save_file(base.state_dict(), str(step / "model_ema.safetensors"))
    (tmp_path / "ckpt" / "latest").write_text("step_000010\n")
    (step / "meta.json").write_text("{}")
    fresh = load_base_weights(tiny_dit(seed=2), tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), base.state_dict().values()))


# -------------------------------------------------------------------------------------------------
# learning and exact resume


def test_overfitting_one_batch_lowers_the_loss():
    clip = make_clip(B=2, T=12, seed=5)
    dit = tiny_dit(seed=3, live=False)  # official init
    cfg = MemoryObjectiveConfig(errors=ErrorBufferConfig(capacity=64, min_entries=16, gamma=0.5))
    bundle = ModelBundle({"model": dit})

    def eval_loss() -> float:
        with torch.no_grad():
            losses = []
            for seed in range(4):
                torch.manual_seed(seed)
                losses.append(float(MemoryObjective(cfg)(bundle, clip, 0)[0]))
            return sum(losses) / len(losses)

    before = eval_loss()
    obj = MemoryObjective(cfg)
    opt = torch.optim.AdamW(dit.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for step in range(30):
        loss, logs = obj(bundle, clip, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert logs["injecting"] == 1.0
    after = eval_loss()
    assert after < 0.8 * before, (before, after)


def test_exact_resume_objective_state_round_trips():
    clip = make_clip(B=2, T=33, trajectory=True)
    dit = tiny_dit()
    bundle = ModelBundle({"model": dit})
    cfg = MemoryObjectiveConfig(errors=ErrorBufferConfig(capacity=16, min_entries=4))
    a = MemoryObjective(cfg)
    torch.manual_seed(0)
    for step in range(3):
        a(bundle, clip, step)
    raw = io.BytesIO()
    torch.save(a.state_dict(), raw)
    rng = torch.get_rng_state()
    loss_a, _ = a(bundle, clip, 3)
    b = MemoryObjective(cfg)
    raw.seek(0)
    b.load_state_dict(torch.load(raw, weights_only=True))
    torch.set_rng_state(rng)
    loss_b, _ = b(bundle, clip, 3)
    assert torch.equal(loss_a, loss_b)
    assert torch.equal(a.buffer.data, b.buffer.data) and a.buffer.next == b.buffer.next


def test_trainer_resume_is_exact_with_the_memory_objective(tmp_path):
    """The real trainer: an interrupted-then-resumed run logs the same losses (ErrorBuffer in rank_state)."""
    clip = make_clip(B=2, T=33, trajectory=True)

    def data(cfg, pos):  # the same clip every micro-batch: data order cannot hide a resume mistake
        while True:
            yield clip

    recipe = Recipe("test_memory_tiny", lambda: run_cfg, lambda cfg: ModelBundle({"model": tiny_dit()}), data,
                    MemoryObjective.from_run)
    run_cfg = RunConfig(
        recipe="test_memory_tiny", model=TINY, objective=MemoryObjectiveConfig(
            errors=ErrorBufferConfig(capacity=8, min_entries=4)),
        optim={"model": OptimConfig(lr=1e-3)}, schedule=ScheduleConfig(steps=4),
        logging=LoggingConfig(tensorboard=False, progress=False), checkpoint=CheckpointConfig(every_n_steps=2))
    Trainer(recipe, run_cfg, tmp_path / "full").fit()
    Trainer(recipe, run_cfg, tmp_path / "part").fit(stop_at=2)
    Trainer(recipe, run_cfg, tmp_path / "part", resume=True).fit()
    full, part = (read_csv(tmp_path / d / "train.csv") for d in ("full", "part"))
    keys = ("loss", "error_buffer", "injecting", "memory_age")
    assert [[r[k] for k in keys] for r in full] == [[r[k] for k in keys] for r in part]
    assert [r["injecting"] for r in full] == ["0.0", "1.0", "1.0", "1.0"]  # the resumed buffer was in use


def test_clip_schedule_of_the_window_config_is_valid_for_mg3_numbers():
    mg3 = TrainWindowConfig(past_latents=4, new_latents=10).schedule
    assert mg3 == ClipSchedule()  # the official 57 / 56 / 40 / 4 schedule
