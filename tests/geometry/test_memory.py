"""MemoryBank: agreement with the full scan, orbits, cap/eviction, bad input.

Agreement is measured at the level the bank works: candidates are latents, each represented by its
last frame (4L, the frame MG3's memory Plücker pose uses). "Agree" = the cascade returns the same
latent as `method="full"`, which scores every eligible latent with the exact MG3 sampled-frustum
ratio (first maximum in latent order), for each of the 4 scored slots of a clip (slot 5 = anchor).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from worldstream.data.actions import poses_from_actions
from worldstream.eval.benchmarks.retrieval import revisit_session
from worldstream.geometry.camera import MG3_SCHEDULE, extrinsics_from_poses
from worldstream.geometry.memory import MemoryBank, MemoryBankConfig, _topk_earliest
from worldstream.geometry.retrieval import MG3_RETRIEVAL

GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "golden"
S, RC = MG3_SCHEDULE, MG3_RETRIEVAL


def filled_bank(c2ws: np.ndarray, cfg: MemoryBankConfig | None = None) -> MemoryBank:
    bank = MemoryBank(cfg or MemoryBankConfig(max_entries=None))
    lat = np.arange((len(c2ws) - 1) // S.temporal_stride + 1)
    bank.add_many(lat, c2ws[S.last_frame(lat)])
    return bank


def agreement(bank: MemoryBank, c2ws: np.ndarray, clips) -> tuple[int, int, list]:
    same, total, confs = 0, 0, []
    for k in clips:
        w = S.window(k)
        bases = c2ws[list(w.base_frames(RC.base_offsets))]
        got = bank.retrieve(bases, before_frame=w.start)
        ref = bank.retrieve(bases, before_frame=w.start, method="full")
        assert got.latents[-1] == ref.latents[-1] == 1  # anchor slot
        same += int((got.latents[:-1] == ref.latents[:-1]).sum())
        total += len(ref.latents) - 1
        confs += ref.confidences[:-1].tolist()
    return same, total, confs


def test_agreement_on_golden_trajectories():
    g = load_file(str(GOLDEN / "retrieval_vectors.safetensors"))
    meta = json.loads((GOLDEN / "retrieval_vectors.json").read_text())
    same = total = mapped = 0
    for name, traj in meta["trajectories"].items():
        E = g[f"{name}.extrinsics"]
        bank = filled_bank(E)
        clips = [c["clip_idx"] for c in traj["clips"]]
        s, t, _ = agreement(bank, E, clips)
        same, total = same + s, total + t
        # MG3 scans every pixel frame; its pick's latent vs the per-latent scan (informational bound)
        for c in traj["clips"]:
            w = S.window(c["clip_idx"])
            ref = bank.retrieve(E[list(w.base_frames(RC.base_offsets))], before_frame=w.start, method="full")
            mg3 = [S.latent_of(f) for f in c["selected_index_raw"][:-1]]
            mapped += int((np.array(mg3) == ref.latents[:-1]).sum())
            # per-latent candidates are a subset of MG3's frames: never a higher ratio than MG3's
            assert (ref.confidences[:-1] <= np.array(c["confidence_raw"][:-1], np.float32) + 0.0105).all()
    assert same / total >= 0.99, (same, total)
    assert mapped / total >= 0.85, (mapped, total)  # measured 136/152


def test_agreement_on_long_revisiting_sessions():
    same = total = 0
    revisit = []
    for seed in (1, 2):
        kb, ms, poses = revisit_session(20_000, seed)
        assert np.array_equal(poses, poses_from_actions(kb, ms)[0])  # one walk from the MG3 kinematics
        E = extrinsics_from_poses(poses)
        bank = filled_bank(E)
        n_clips = (len(E) - S.first_clip_frames) // S.new_frames
        s, t, confs = agreement(bank, E, range(5, n_clips, n_clips // 30))
        same, total = same + s, total + t
        revisit += confs
    assert total >= 200
    assert same / total >= 0.99, (same, total)
    assert np.mean(np.array(revisit) >= 0.75) > 0.3  # the sessions do come back to seen views


def test_spin_orbit_retrieves_the_same_heading():
    poses = np.zeros((720, 5))
    poses[:, 4] = (np.arange(720) * 1.5 + 180.0) % 360.0 - 180.0  # 240 frames per turn
    E = extrinsics_from_poses(poses)
    bank = filled_bank(E[:480])
    got = bank.retrieve(E[[600, 640, 700]], k=3, before_frame=480, anchor=False)
    # frame 600 faces like 360 and 120: the earliest latent whose last frame faces that way is 120 / 4
    assert list(got.latents) == [30, 40, 55]
    assert (got.confidences >= 0.75).all()
    assert np.array_equal(got.frames, 4 * got.latents)


def test_anchor_slot_and_empty_bank():
    E = extrinsics_from_poses(np.zeros((200, 5)))
    empty = MemoryBank()
    r = empty.retrieve(E[:5])
    assert list(r.latents) == [0, 0, 0, 0, 1] and (r.confidences == 0).all()
    bank = filled_bank(E)
    r = bank.retrieve(E[[150, 140, 130, 120, 110]], before_frame=100)
    assert r.latents[-1] == 1 and r.frames[-1] == 4 and r.confidences[-1] > 0.7
    assert (r.frames[:-1] < 100).all() and (r.frames >= 1).all()  # latent 0 (the image) is never a candidate


def test_cap_evicts_the_most_crowded_cell_and_keeps_the_anchor():
    # 150 latents standing on one spot facing one way, then 30 latents in 30 distinct places
    still = np.zeros((150, 5))
    spread = np.zeros((30, 5))
    spread[:, 0] = 1000.0 + np.arange(30) * 500.0  # 5 units apart: different position cells
    E = extrinsics_from_poses(np.concatenate([still, spread]))
    bank = MemoryBank(MemoryBankConfig(max_entries=60, initial_capacity=8))
    bank.add_many(np.arange(1, 181), E)
    lat = bank.latents
    assert len(bank) == 60 and 1 in lat
    assert set(range(151, 181)) <= set(lat)  # every distinct place survives
    assert (np.diff(lat) > 0).all()
    # the crowded spot keeps the anchor and its most recent entries (oldest evicted first)
    assert list(lat[:30]) == [1] + list(range(122, 151))


def test_evicted_bank_equals_a_bank_of_its_survivors():
    kb, ms, poses = revisit_session(4000, 5)
    E = extrinsics_from_poses(poses)
    lat = np.arange(1, 1000)
    capped = MemoryBank(MemoryBankConfig(max_entries=300, initial_capacity=16))
    capped.add_many(lat, E[S.last_frame(lat)])
    assert len(capped) == 300
    fresh = MemoryBank(MemoryBankConfig(max_entries=None))
    fresh.add_many(capped.latents, capped.c2ws, capped.frames)
    for k in (60, 80, 97):
        w = S.window(k)
        bases = E[list(w.base_frames(RC.base_offsets))]
        a, b = capped.retrieve(bases, before_frame=w.start), fresh.retrieve(bases, before_frame=w.start)
        assert np.array_equal(a.latents, b.latents) and np.array_equal(a.confidences, b.confidences)
        assert set(a.latents) <= set(capped.latents)


def test_streaming_add_window_matches_bulk_fill():
    kb, ms, poses = revisit_session(S.num_frames(12), 7)
    E = extrinsics_from_poses(poses)
    streamed = MemoryBank(MemoryBankConfig(max_entries=None))
    for k in range(12):  # the pipeline: retrieve for clip k from the clips before it, then store clip k
        w = S.window(k)
        if k:
            bases = E[list(w.base_frames(RC.base_offsets))]
            assert streamed.latents[-1] == w.new_latent_start - 1  # everything before the clip is stored
            got = streamed.retrieve(bases, before_frame=w.start)
            assert (got.frames < w.start).all()
        streamed.add_window(E, w)
    assert np.array_equal(streamed.latents, np.arange(S.window(11).latent_end))
    assert np.array_equal(streamed.c2ws, E[S.last_frame(streamed.latents)])


def test_topk_prefers_earlier_ties():
    s = np.array([1.0, 3.0, 2.0, 3.0, 2.0, 2.0])
    assert list(_topk_earliest(s, 3)) == [1, 2, 3]
    assert list(_topk_earliest(s, 10)) == list(range(6))


def test_bad_input():
    bank = MemoryBank()
    c2w = extrinsics_from_poses(np.zeros((1, 5)))[0]
    bad = c2w.copy()
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match="MemoryBank.add c2w has non-finite"):
        bank.add(1, bad)
    bank.add(1, c2w)
    with pytest.raises(ValueError, match="strictly increasing"):
        bank.add(1, c2w)
    with pytest.raises(ValueError, match=r"\[N, 4, 4\]"):
        bank.add_many([2, 3], np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"latent\(s\) \[2\] is not orthonormal"):
        bank.add(2, np.diag([2.0, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="k=5 slots need k base frames"):
        bank.retrieve(np.tile(c2w, (3, 1, 1)))
    with pytest.raises(ValueError, match="base_c2ws has non-finite"):
        bank.retrieve(np.tile(bad, (5, 1, 1)))
    with pytest.raises(ValueError, match="fine_keep"):
        MemoryBankConfig(fine_keep=500)
    with pytest.raises(ValueError, match="lattice indices"):
        MemoryBankConfig(fine_probe=((1, 12), (1,), (1,)))
