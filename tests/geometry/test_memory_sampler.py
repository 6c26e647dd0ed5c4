"""The training sampler `select_memory_idx` (facts 4.11) after its speed pass: same picks, same random stream.

The oracle below is the straightforward formulation the fast code replaced (one einsum R^T (X - t) over an
[N, P, 3] array, the union over every chunk frame, every candidate tested on every point). The fast code
must reproduce every visibility bit, so the picks and the generator's state after the call are identical.
"""

from __future__ import annotations

import numpy as np
import pytest

from worldstream.data.actions import poses_from_actions
from worldstream.geometry.camera import extrinsics_from_poses
from worldstream.geometry.retrieval import (
    RetrievalConfig,
    fov_visible,
    fov_visible_any,
    select_memory_idx,
)
from worldstream.train.conditioning import MemoryWindowConfig, TrainWindow, TrainWindowConfig

NANO_FRAMES = 129  # a nano clip: 33 latents


def reference_fov_visible(points, c2ws, cfg):
    ta, te = (np.tan(np.deg2rad(a)) for a in cfg.sampler_half_fov_deg)
    R, t = c2ws[:, :3, :3], c2ws[:, :3, 3]
    p = np.einsum("nji,npj->npi", R, points[None] - t[:, None])
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    return (z > 0) & (np.abs(x) <= ta * z) & (np.abs(y) <= te * z)


def reference_select(c2ws, chunk_start, chunk_end, memory_end_idx, memory_num, rng, cfg, stride=4):
    if memory_end_idx % stride != 1 or memory_end_idx < memory_num * stride:
        return [0] * memory_num
    n, radius = cfg.sampler_points_train, cfg.sampler_radius_train
    centres = [chunk_end - o for o in cfg.base_offsets if chunk_start <= chunk_end - o]
    dirs = rng.standard_normal((len(centres), n, 3))
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    r = radius * rng.random((len(centres), n, 1)) ** (1.0 / 3.0)
    points = (c2ws[centres, None, :3, 3] + dirs * r).reshape(-1, 3)
    chunk_vis = reference_fov_visible(points, c2ws[chunk_start:chunk_end], cfg).any(axis=0)
    cands = np.arange(1, memory_end_idx, stride)
    overlap = (reference_fov_visible(points, c2ws[cands], cfg) & chunk_vis).sum(axis=1) / max(
        int(chunk_vis.sum()), 1)
    masked = np.zeros(memory_end_idx, dtype=bool)
    masked[0] = True
    selected = []
    for _ in range(memory_num):
        free = ~masked[cands]
        if not free.any():
            break
        score = np.where(free, overlap, -np.inf)
        j = int(score.argmax())
        if score[j] <= 0:
            j = int(np.flatnonzero(free)[-1])
        selected.append(int(cands[j]))
        masked[cands[j]:cands[j] + stride] = True
    return selected + [0] * (memory_num - len(selected))


def trajectory(seed: int, frames: int = NANO_FRAMES) -> np.ndarray:
    """MG3 kinematics under random held actions (walks, turns, look up/down) -> c2w [frames, 4, 4] f64."""
    rng = np.random.default_rng(seed)
    keyboard = np.zeros((frames, 6), np.float32)
    mouse = np.zeros((frames, 2), np.float32)
    for s in range(0, frames, 16):  # a new held action every 16 frames
        keyboard[s:s + 16, rng.integers(0, 4)] = 1.0
        mouse[s:s + 16] = rng.choice([-0.1, 0.0, 0.1], size=2)
    poses, _ = poses_from_actions(keyboard, mouse)
    return extrinsics_from_poses(poses).astype(np.float64)


def test_visibility_bits_equal_the_reference():
    cfg = RetrievalConfig()
    c2ws = trajectory(0)
    rng = np.random.default_rng(1)
    points = c2ws[rng.integers(0, NANO_FRAMES, 4000), :3, 3] + rng.normal(scale=15.0, size=(4000, 3))
    for cams in (c2ws[40:64], c2ws[1:100:4], c2ws[::7].astype(np.float32)):
        ref = reference_fov_visible(points, cams.astype(np.float64), cfg)
        assert 0.02 < ref.mean() < 0.9  # a real mix of visible and hidden points
        np.testing.assert_array_equal(fov_visible(points, cams, cfg), ref)
        np.testing.assert_array_equal(fov_visible_any(points, cams, cfg), ref.any(axis=0))
    # batching (sampler_chunk, frames_per_pass) does not change any bit
    small = RetrievalConfig(sampler_chunk=3000)
    np.testing.assert_array_equal(fov_visible(points, c2ws[::5], small), reference_fov_visible(
        points, c2ws[::5], cfg))
    np.testing.assert_array_equal(fov_visible_any(points, c2ws[::5], small, frames_per_pass=1),
                                  reference_fov_visible(points, c2ws[::5], cfg).any(axis=0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_training_picks_and_random_stream_equal_the_reference(seed):
    """The memory stage's windows (nano: 2 + 4 latents, 3 retrieved slots) at every start of a clip."""
    mem, win = MemoryWindowConfig(), TrainWindowConfig()
    cfg, c2ws = mem.retrieval, trajectory(seed)
    picks = []
    for start in range(mem.num_memory, 33 - win.window_latents + 1, 2):
        w = TrainWindow(start, win.window_latents, False, win.temporal_stride)
        a, b = np.random.default_rng([seed, start]), np.random.default_rng([seed, start])
        got = select_memory_idx(c2ws, w.frame_start, w.frame_end, w.frame_start, mem.retrieved, a,
                                is_train=True, schedule=win.schedule, cfg=cfg)
        want = reference_select(c2ws, w.frame_start, w.frame_end, w.frame_start, mem.retrieved, b, cfg)
        assert got == want, (start, got, want)
        assert a.random() == b.random()  # the same draws were consumed
        picks.append(got)
    assert len({tuple(p) for p in picks}) > 3  # the windows really retrieve different frames
