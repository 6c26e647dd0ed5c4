"""WorldSession / rollout_clip on tiny models: shapes, determinism, memory, pose bookkeeping, long sessions."""

from __future__ import annotations

import dataclasses
import gc
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_world import PROMPT, TINY_DIT, TINY_SESSION, TINY_VAE, H, W, tiny_bundle

from worldstream.data.actions import poses_from_actions
from worldstream.geometry.camera import (
    MG3_SCHEDULE,
    ClipSchedule,
    extrinsics_from_poses,
    memory_relative_pose,
    pixel_rays,
    plucker_for_clip,
    rays_to_latent_map,
)
from worldstream.geometry.retrieval import RetrievalConfig
from worldstream.infer import config as session_config
from worldstream.infer.config import SessionConfig
from worldstream.infer.rollout import (
    ClipGeometry,
    LatentStore,
    RayGrid,
    clip_plucker,
    memory_plucker,
    new_state,
    rollout_clip,
    rows_for_next_clip,
)
from worldstream.infer.session import WorldSession, prepare_image
from worldstream.model.dit import WorldDiT
from worldstream.model.vae import VAE, prune_decoder

W_KEY = np.array([1, 0, 0, 0, 0, 0], np.float32)


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle()


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40, 70, 3), dtype=np.uint8)


def actions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    kb = (rng.random((n, 6)) < 0.3).astype(np.float32)
    ms = rng.choice([-0.1, 0.0, 0.1], size=(n, 2)).astype(np.float32)
    return kb, ms


def run(bundle, cfg: SessionConfig, clips: int, seed: int = 1):
    s = WorldSession(bundle, cfg)
    out = [s.reset(image(), PROMPT)]
    for k in range(clips):
        out.append(s.step(*actions(s.next_step_frames, seed + k)))
    return s, out


# ---------------------------------------------------------------------------------------------------
# presets


def test_presets_match_mg3_and_the_training_windows():
    from worldstream.train.conditioning import MemoryWindowConfig, TrainWindowConfig

    mg3 = session_config.MG3_5B
    assert mg3.schedule == MG3_SCHEDULE
    assert (mg3.schedule.first_clip_frames, mg3.schedule.clip_frames, mg3.schedule.new_frames) == (57, 56, 40)
    assert mg3.schedule.past_latents == 4 and mg3.num_memory == 5 and mg3.retrieval.anchor_frame == 4
    assert (mg3.sampler, mg3.steps, mg3.shift) == ("unipc", 3, 5.0)
    assert (mg3.first_step_frames, mg3.step_frames) == (56, 40)
    nano = session_config.NANO
    assert nano.schedule == TrainWindowConfig().schedule  # P = 2 past, F = 4 new, first clip 1 + 6
    assert nano.retrieval.base_offsets == MemoryWindowConfig().retrieval.base_offsets
    assert nano.num_memory == MemoryWindowConfig().num_memory == 4
    assert (nano.first_step_frames, nano.step_frames) == (24, 16)


def test_config_errors():
    with pytest.raises(ValueError, match="sampler"):
        SessionConfig(sampler="ddim")
    with pytest.raises(ValueError, match="few-step"):
        SessionConfig(sampler="few_step", steps=3)
    with pytest.raises(ValueError, match="float16"):
        SessionConfig(dtype="float16")
    with pytest.raises(ValueError, match="base_offsets"):
        SessionConfig(retrieval=RetrievalConfig(base_offsets=(1, 200)))


def test_load_bundle_from_our_checkpoint_folder(tmp_path):
    from worldstream.checkpoint import save_checkpoint
    from worldstream.infer.model_bundle import load_bundle
    from worldstream.model.vae import LightVAE

    dit = WorldDiT(dataclasses.replace(TINY_DIT, rope_overflow="error"))
    vae = VAE(TINY_VAE).init_weights()
    save_checkpoint(tmp_path / "dit", dit, dit.cfg)
    save_checkpoint(tmp_path / "vae", vae, vae.cfg)
    with pytest.raises(FileNotFoundError, match="lightvae"):
        load_bundle(tmp_path, text=False, light_vae=True)
    light = prune_decoder(vae, 0.5)
    save_checkpoint(tmp_path / "lightvae", light, light.cfg)
    b = load_bundle(tmp_path, text=False, light_vae=True)
    assert not b.random_init and b.source == str(tmp_path) and isinstance(b.vae, LightVAE)
    assert b.dit.cfg.rope_overflow == "extend" and b.dtype == torch.bfloat16  # session defaults
    torch.testing.assert_close(b.dit.head.head.weight, dit.head.head.weight.bfloat16(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="text_dim=8"):
        load_bundle(tmp_path)  # our layout pairs the DiT with MiniLM (384 wide)
    with pytest.raises(NotADirectoryError):
        load_bundle(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="neither"):
        load_bundle(tmp_path / "vae")


# ---------------------------------------------------------------------------------------------------
# shapes and action rows


def test_reset_and_step_shapes(bundle):
    s = WorldSession(bundle, TINY_SESSION)
    f0 = s.reset(image(), PROMPT)
    assert f0.shape == (1, H, W, 3) and f0.dtype == np.uint8
    assert s.next_step_frames == 24
    f1 = s.step(*actions(24, 0))
    assert f1.shape == (24, H, W, 3) and f1.dtype == np.uint8
    f2 = s.step(W_KEY, np.array([0.0, 0.1]))  # one row held for the clip (MG3 interactive)
    assert f2.shape == (16, H, W, 3)
    f3 = s.step(W_KEY[None])  # mouse defaults to none
    info = s.info
    assert f3.shape == (16, H, W, 3)
    assert info.clips == 3 and info.frames == 1 + 24 + 16 + 16 == len(info.poses) == len(info.c2ws)
    assert info.latents == 1 + 6 + 4 + 4
    assert np.all(info.keyboard[-32:] == W_KEY)
    assert set(info.timings) >= {"poses", "plucker", "retrieval", "sample", "decode"}
    assert not info.poses.flags.writeable


def test_first_step_accepts_a_row_for_frame_0(bundle):
    kb, ms = actions(24, 3)
    _, a = run_one(bundle, kb, ms)
    _, b = run_one(bundle, np.concatenate([kb[:1], kb]), np.concatenate([ms[:1], ms]))
    np.testing.assert_array_equal(a, b)


def run_one(bundle, kb, ms):
    s = WorldSession(bundle, TINY_SESSION)
    s.reset(image(), PROMPT)
    return s, s.step(kb, ms)


def test_bad_inputs(bundle):
    s = WorldSession(bundle, TINY_SESSION)
    with pytest.raises(RuntimeError, match="reset"):
        s.step(W_KEY)
    s.reset(image(), PROMPT)
    with pytest.raises(ValueError, match="takes 24 action rows"):
        s.step(*actions(16, 0))
    with pytest.raises(ValueError, match=r"keyboard must be \[N, 6\]"):
        s.step(np.zeros((24, 4)), np.zeros((24, 2)))
    with pytest.raises(ValueError, match="24 rows but mouse has 23"):
        s.step(np.zeros((24, 6)), np.zeros((23, 2)))
    with pytest.raises(ValueError, match=r"prompt embedding must be \[L, 8\]"):
        s.reset(image(), torch.zeros(9, 8))
    with pytest.raises(ValueError, match="no text encoder"):
        s.reset(image(), "a snowy village")
    with pytest.raises(ValueError, match="uint8"):
        s.reset(image().astype(np.float32), PROMPT)
    with pytest.raises(ValueError, match="session dtype"):
        WorldSession(bundle, dataclasses.replace(TINY_SESSION, dtype="float32"))
    with pytest.raises(ValueError, match="multiple of the VAE stride"):
        WorldSession(bundle, dataclasses.replace(TINY_SESSION, height=20))


def test_image_conversion_any_size_and_mode():
    wide = np.full((10, 100), 255, np.uint8)
    wide[:, :10] = 0  # dark left border: a centre crop to 2:1 removes it, a stretch keeps it
    crop = prepare_image(wide, H, W, "crop")
    assert crop.shape == (H, W, 3) and crop.min() == 255
    assert prepare_image(wide, H, W, "stretch")[:, 0].max() < 128
    rgba = np.zeros((33, 17, 4), np.uint8)
    rgba[..., 1] = 200
    out = prepare_image(rgba, H, W)
    assert out.shape == (H, W, 3) and (out[..., 1] == 200).all() and not out[..., 0].any()
    assert prepare_image(np.zeros((9, 9, 1), np.uint8), H, W).shape == (H, W, 3)
    assert prepare_image(Image.new("L", (50, 30), 77), H, W).min() == 77
    with pytest.raises(ValueError, match=r"\[H, W, 4\]"):
        prepare_image(np.zeros((9, 9, 2), np.uint8), H, W)


# ---------------------------------------------------------------------------------------------------
# determinism, memory, poses


def test_same_seed_same_frames_other_seed_differs(bundle):
    _, a = run(bundle, TINY_SESSION, clips=3)
    _, b = run(bundle, TINY_SESSION, clips=3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    _, c = run(bundle, dataclasses.replace(TINY_SESSION, seed=6), clips=3)
    assert not np.array_equal(a[2], c[2])
    _, d = run(bundle, TINY_SESSION, clips=3, seed=9)  # other actions, same noise
    assert not np.array_equal(a[2], d[2])


def test_memory_from_clip_1_with_the_anchor(bundle):
    cfg, sched = TINY_SESSION, TINY_SESSION.schedule
    s = WorldSession(bundle, cfg)
    s.reset(image(), PROMPT)
    s.step(*actions(24, 0))
    assert s.info.last.memory is None  # clip 0 has no memory (as MG3)
    for k in (1, 2, 3):
        s.step(*actions(16, k))
        mem, win = s.info.last.memory, sched.window(k)
        assert len(mem.latents) == cfg.num_memory == 4
        assert mem.latents[-1] == 1 and mem.frames[-1] == 4 and mem.anchor  # anchor: frame 4 -> latent 1
        assert all(1 <= lat < win.latent_start for lat in mem.latents)
        assert all(4 * lat == f < win.start for lat, f in zip(mem.latents, mem.frames))
        assert mem.base_frames == tuple(win.end - o for o in cfg.retrieval.base_offsets)
        assert all(0.0 <= c <= 1.0 for c in mem.confidences)


def test_memory_reaches_the_model_and_can_be_switched_off(bundle):
    _, with_mem = run(bundle, TINY_SESSION, clips=2)
    s, without = run(bundle, dataclasses.replace(TINY_SESSION, use_memory=False), clips=2)
    np.testing.assert_array_equal(with_mem[1], without[1])  # clip 0: no memory either way
    assert not np.array_equal(with_mem[2], without[2])
    assert s.info.last.memory is None and s.state.bank is None


def test_pose_bookkeeping_equals_poses_from_actions(bundle):
    s = WorldSession(bundle, TINY_SESSION)
    s.reset(image(), PROMPT)
    rows = [actions(25, 0)] + [actions(16, k) for k in (1, 2, 3)]  # clip 0 with frame 0's row
    for kb, ms in rows:
        s.step(kb, ms)
    kb = np.concatenate([r[0] for r in rows])
    ms = np.concatenate([r[1] for r in rows])
    poses, last = poses_from_actions(kb, ms)
    info = s.info
    np.testing.assert_array_equal(info.poses, poses)  # bit-exact: MG3 kinematics across clip boundaries
    np.testing.assert_array_equal(info.c2ws, extrinsics_from_poses(poses))
    np.testing.assert_array_equal(s.state.trajectory.last_pose, last)
    np.testing.assert_array_equal(info.keyboard, kb)


@pytest.mark.parametrize("sampler, steps", [("euler", 1), ("few_step", 4)])
def test_other_samplers(bundle, sampler, steps):
    cfg = dataclasses.replace(TINY_SESSION, sampler=sampler, steps=steps)
    _, a = run(bundle, cfg, clips=2)
    _, b = run(bundle, cfg, clips=2)
    assert a[2].shape == (16, H, W, 3)
    np.testing.assert_array_equal(a[2], b[2])  # few-step re-noising draws from the session generator


def test_int8_and_light_vae_bundles():
    for b in (tiny_bundle(int8=True), tiny_bundle(light=True)):
        _, out = run(b, TINY_SESSION, clips=2)
        assert out[2].shape == (16, H, W, 3)


def test_prompt_truncation_warns():
    from worldstream.model.text import MiniLMEncoder

    enc = MiniLMEncoder(text_len=4)
    b = tiny_bundle(dataclasses.replace(TINY_DIT, text_dim=384), text=enc)
    s = WorldSession(b, TINY_SESSION)
    with pytest.warns(UserWarning, match="truncated"):
        s.reset(image(), "a snowy village of red-roofed houses at dusk with a tall stone tower")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.reset(image(), "snow")


# ---------------------------------------------------------------------------------------------------
# rollout_clip, Plücker maps and the latent store


@pytest.mark.parametrize("name", ["nano", "mg3_5b"])
def test_plucker_maps_equal_the_geometry_reference(name):
    cfg = session_config.preset(name)
    sched = cfg.schedule
    poses, _ = poses_from_actions(*actions(sched.num_frames(3), 4))
    c2ws = extrinsics_from_poses(poses)
    stride = 8 if name == "nano" else 16
    lat_h, lat_w = cfg.height // stride // 4, cfg.width // stride // 4  # a quarter-size grid keeps it fast
    geo = ClipGeometry(cfg.height // 4, cfg.width // 4, lat_h, lat_w, 1, lat_h * stride, lat_w * stride)
    rays = RayGrid(geo)
    win = sched.window(2)
    ref = plucker_for_clip(c2ws, win, geo.intrinsics, geo.plucker_h, geo.plucker_w, lat_h, lat_w)
    got = clip_plucker(c2ws, win, rays)
    assert got.shape == ref.shape == (1, 6 * stride**2, win.latent_end - win.latent_start, lat_h, lat_w)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)  # float32, summation order only
    frames, bases = [8, 4, 12], [win.end - 1, win.end - 9, win.end - 17]
    rel = np.stack([memory_relative_pose(c2ws, m, r, sched) for m, r in zip(frames, bases)])
    ref = rays_to_latent_map(pixel_rays(rel, geo.intrinsics, geo.plucker_h, geo.plucker_w), lat_h, lat_w)
    np.testing.assert_allclose(memory_plucker(c2ws, frames, bases, cfg, rays), ref, rtol=0, atol=1e-12)


def test_rollout_clip_without_decoding(bundle):
    cfg = TINY_SESSION
    z0 = torch.zeros(1, 8, 1, 2, 4, dtype=torch.bfloat16)
    state = new_state(bundle, cfg, z0, PROMPT)
    assert rows_for_next_clip(state, cfg) == 25
    with pytest.raises(ValueError, match="needs 25 action rows"):
        rollout_clip(bundle, state, actions(24, 0), cfg)
    new, info = rollout_clip(bundle, state, actions(25, 0), cfg)
    assert new.shape == (1, 8, 6, 2, 4) and new.dtype == torch.bfloat16
    assert info.new_latents == (1, 7) and info.new_frames == (0, 25) and state.clip == 1
    assert rows_for_next_clip(state, cfg) == 16
    new, info = rollout_clip(bundle, state, actions(16, 1), cfg)
    assert new.shape == (1, 8, 4, 2, 4) and info.new_latents == (7, 11) and info.memory is not None
    torch.testing.assert_close(state.latents.get([7, 8, 9, 10]), new, rtol=0, atol=0)


def test_a_failed_clip_leaves_the_state_unchanged():
    # a RoPE table of 8 positions, overflow = error: clip 1 (latents 5..10) fails inside the DiT
    b = tiny_bundle(dataclasses.replace(TINY_DIT, rope_max_positions=8, rope_overflow="error"))
    s = WorldSession(b, TINY_SESSION)
    s.reset(image(), PROMPT)
    s.step(*actions(24, 0))
    before = (s.state.trajectory.n, s.state.trajectory.last_pose.copy(), s.state.generator.get_state(),
              s.state.latents.num_latents, s.clip)
    with pytest.raises(ValueError, match="rope_overflow='extend'"):
        s.step(*actions(16, 1))
    after = (s.state.trajectory.n, s.state.trajectory.last_pose, s.state.generator.get_state(),
             s.state.latents.num_latents, s.clip)
    assert before[0] == after[0] and before[3:] == after[3:]
    np.testing.assert_array_equal(before[1], after[1])
    assert torch.equal(before[2], after[2])


def test_latent_store_keeps_only_what_is_retained():
    store = LatentStore((2, 1, 1), torch.bfloat16, capacity=2)
    store.append(torch.arange(10.0).reshape(1, 2, 5, 1, 1))  # grows past its capacity
    assert store.num_latents == 5 and len(store) == 5
    store.retain([0, 3])
    assert store.stored == [0, 3]
    got = store.get([3, 0, 3])
    assert got.shape == (1, 2, 3, 1, 1) and got[0, :, 0, 0, 0].tolist() == [3.0, 8.0]
    with pytest.raises(KeyError, match=r"\[1\] are not stored"):
        store.get([1])
    before = store.nbytes
    store.append(torch.zeros(1, 2, 3, 1, 1))  # reuses the freed slots
    assert store.nbytes == before and store.stored == [0, 3, 5, 6, 7]


# ---------------------------------------------------------------------------------------------------
# long sessions: past the 2048-latent RoPE table, bounded memory


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.slow
def test_3000_latents_past_the_rope_table_with_bounded_memory(bundle):
    # 16 x 16 pixels (one DiT token per latent), 2 past + 60 new latents per clip (50 clips), 1 Euler step,
    # one decoder call per clip, bank capped at 64 latents
    sched = ClipSchedule(first_clip_frames=249, clip_frames=248, new_frames=240, past_latents=2)
    cfg = dataclasses.replace(TINY_SESSION, schedule=sched, sampler="euler", steps=1, memory_max_entries=64,
                              width=16, decode_segment_size=60)
    s = WorldSession(bundle, cfg)
    s.reset(image(), PROMPT)
    kb, ms = W_KEY, np.array([0.0, 0.1], np.float32)  # walk in circles: revisits all the time
    rss = None
    while s.info.latents < 3000:
        s.step(kb, ms)
        if s.clip == 5:
            gc.collect()
            rss = _rss_mb()
    gc.collect()
    growth = _rss_mb() - rss
    info = s.info
    assert info.latents >= 3000 and info.last.window.latent_end > 2048  # RoPE positions past the table
    assert info.last.memory.latents[-1] == 1  # the anchor is still there
    assert info.stored_latents <= 64 + 2 + 1  # bank entries + clean prefix + latent 0
    assert len(s.state.bank) <= 64
    assert growth < 20, f"RSS grew by {growth:.1f} MB over {info.latents} latents"
