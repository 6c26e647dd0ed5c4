"""Memory retrieval: golden picks, synthetic orbits, batching invariance, exact variant, sampler."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from worldstream.geometry.camera import MG3_SCHEDULE, extrinsics_from_poses
from worldstream.geometry.retrieval import (
    MG3_RETRIEVAL,
    RetrievalConfig,
    apply_anchor,
    exact_overlap_ratio,
    overlap_counts,
    overlap_ratios,
    select_clip_memory,
    select_memory_idx,
    select_memory_idx_exact,
    select_memory_idx_fov,
)

GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "golden"


@pytest.fixture(scope="module")
def ret():
    return load_file(str(GOLDEN / "retrieval_vectors.safetensors")), json.loads(
        (GOLDEN / "retrieval_vectors.json").read_text())


def spin(n: int, step_deg: float = 1.5) -> np.ndarray:
    """A camera turning in place (yaw step_deg per frame) -> c2w [n,4,4]."""
    poses = np.zeros((n, 5))
    poses[:, 4] = (np.arange(n) * step_deg + 180.0) % 360.0 - 180.0
    return extrinsics_from_poses(poses)


def test_golden_picks(ret):
    g, meta = ret
    n_robust = 0
    for name, traj in meta["trajectories"].items():
        E = g[f"{name}.extrinsics"]
        for clip in traj["clips"]:
            mem = select_clip_memory(E, clip["clip_idx"])
            assert list(mem.base_frames) == clip["selected_index_base"]
            assert [mem.window.latent_start, mem.window.latent_end] == clip["predict_latent_idx"]
            for i, slot in enumerate(clip["slots"]):
                pick, conf = mem.raw_frames[i], np.float32(mem.confidences[i])
                if slot["robust"]:
                    n_robust += 1
                    assert (pick, conf) == (slot["pick"], np.float32(slot["confidence"])), (name, clip["clip_idx"], i)
                else:  # identical-pose revisits: the README tolerance
                    near = next(v for k, v in slot.items() if k.startswith("near_best_within"))
                    assert str(pick) in near and abs(conf - slot["confidence"]) <= 0.1
            assert list(mem.frames) == apply_anchor(mem.raw_frames)
            assert list(mem.latents) == [MG3_SCHEDULE.latent_of(f) for f in mem.frames]
    assert n_robust >= 100


def test_anchor_rule():
    assert apply_anchor([16, 35, 27, 19, 38]) == [16, 35, 27, 19, 4]
    assert apply_anchor([7, 9], RetrievalConfig(anchor_frame=8)) == [7, 8]


def test_spin_retrieves_the_frame_facing_the_same_way():
    E = spin(480)  # 1.5 deg/frame: frame f + 240 faces exactly like frame f
    for base in (300, 333, 417):
        picks, confs = select_memory_idx_fov(E, 241, [base])
        assert picks[0] == base - 240 and confs[0] >= 0.75
    # a view never seen before (no candidate within 90 deg) scores far lower
    _, low = select_memory_idx_fov(E, 41, [180])
    assert low[0] < 0.3


def test_identical_pose_and_disjoint_views():
    E = spin(121)  # frame 120 faces opposite to frame 0
    r = overlap_ratios(E[[0, 0]], E[[0, 120]])
    assert 0.75 <= r[0, 0] <= 0.9  # near/far grid planes are excluded, borders included
    assert r[0, 1] == 0.0
    assert r.dtype == np.float32


def test_batching_and_chunking_do_not_change_counts():
    rng = np.random.default_rng(0)
    poses = np.concatenate([rng.normal(size=(300, 3)) * 800, rng.uniform(-180, 180, size=(300, 2))], axis=1)
    poses[:, 3] /= 6
    E = extrinsics_from_poses(poses)
    full = overlap_counts(E[:3], E)
    chunked = overlap_counts(E[:3], E, RetrievalConfig(chunk_candidates=7))
    subset = overlap_counts(E[1:2], E[::13], origin=E[0, :3, 3])  # same frame of reference as `full`
    assert np.array_equal(full, chunked)
    assert np.array_equal(subset[0], full[1, ::13])
    assert full.max() > 0


def test_select_no_candidates_returns_zeros():
    E = spin(60)
    assert select_memory_idx_fov(E, 1, [50, 40]) == ([0, 0], [0.0, 0.0])


def test_exact_variant_and_official_off_by_one():
    E = spin(60, step_deg=3.0)
    assert exact_overlap_ratio(E[10], E[10]) == pytest.approx(1.0)
    assert exact_overlap_ratio(E[0], E[30]) == 0.0  # facing opposite ways from the same point: apex only
    a, b = exact_overlap_ratio(E[10], E[12]), exact_overlap_ratio(E[10], E[20])
    assert 1.0 > a > b > 0.0
    frames, confs = select_memory_idx_exact(E, 15, [50])  # 50 faces like frame 50 - 60 * ... candidates 1..14
    positions, _ = select_memory_idx_exact(E, 15, [50], index_mode="candidate_position")
    assert positions[0] == frames[0] - 1
    sampled, _ = select_memory_idx_fov(E, 15, [50])
    assert abs(frames[0] - sampled[0]) <= 1
    with pytest.raises(ValueError, match="index_mode"):
        select_memory_idx_exact(E, 15, [50], index_mode="position")


def test_training_sampler_is_deterministic_and_masks_blocks():
    poses = np.zeros((200, 5))
    poses[:, 0] = np.arange(200) * 12.35  # walk forward, then the chunk looks back over the path
    poses[150:, 4] = 180.0
    E = extrinsics_from_poses(poses)
    a = select_memory_idx(E, 150, 200, 149, 5, np.random.default_rng(3))
    b = select_memory_idx(E, 150, 200, 149, 5, np.random.default_rng(3))
    assert a == b and len(a) == 5
    assert all(f % 4 == 1 and 0 < f < 149 for f in a) and len(set(a)) == 5
    # bad alignment or too little history: all zeros, as officially
    assert select_memory_idx(E, 150, 200, 148, 5, np.random.default_rng(0)) == [0] * 5
    assert select_memory_idx(E, 10, 60, 9, 5, np.random.default_rng(0)) == [0] * 5


def test_bad_input():
    E = spin(60)
    E[5, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*\[5\]"):
        select_memory_idx_fov(E, 20, [50])
    with pytest.raises(ValueError, match="outside the trajectory"):
        select_memory_idx_fov(spin(60), 20, [70])
    with pytest.raises(ValueError, match=r"base_c2ws must be \[N, 4, 4\]"):
        overlap_counts(np.eye(4), spin(3))
    with pytest.raises(ValueError, match="clip 0 has no memory"):
        select_clip_memory(spin(60), 0)
    assert MG3_RETRIEVAL.num_memory == 5
