"""Camera geometry: golden camera tensors (exact / <= 1e-6), clip schedule, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from worldstream.geometry.camera import (
    MG3_SCHEDULE,
    ClipSchedule,
    build_plucker_from_c2ws,
    build_plucker_from_c2ws_torch,
    build_plucker_from_pose,
    compute_relative_poses,
    extrinsics_from_poses,
    interpolate_poses_handedness,
    intrinsics_90fov,
    memory_relative_pose,
    pixel_rays,
    plucker_for_clip,
    rays_to_latent_map,
)

GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "golden"


@pytest.fixture(scope="module")
def cam():
    return load_file(str(GOLDEN / "camera_vectors.safetensors")), json.loads((GOLDEN / "camera_vectors.json").read_text())


@pytest.fixture(scope="module")
def ret():
    return load_file(str(GOLDEN / "retrieval_vectors.safetensors")), json.loads(
        (GOLDEN / "retrieval_vectors.json").read_text())


# ----------------------------------------------------------------------------------------- golden
@pytest.mark.parametrize("framewise", [0, 1])
@pytest.mark.parametrize("norm", [0, 1])
def test_relative_poses_float32_golden(cam, framewise, norm):
    g, _ = cam
    out = compute_relative_poses(g["relative.input_c2ws_float32"], bool(framewise), bool(norm))
    assert out.dtype == np.float32
    assert np.abs(out - g[f"relative.framewise{framewise}_norm{norm}"]).max() <= 2e-7


@pytest.mark.parametrize("framewise", [0, 1])
def test_relative_poses_float64_golden(cam, framewise):
    g, _ = cam
    out = compute_relative_poses(g["relative64.input_c2ws_float64"], bool(framewise), True)
    assert out.dtype == np.float64
    assert np.abs(out - g[f"relative64.framewise{framewise}_norm1"]).max() <= 1e-12


def test_relative_pose_structure():
    rng = np.random.default_rng(0)
    poses = np.concatenate([rng.normal(size=(6, 3)) * 100, rng.uniform(-60, 60, size=(6, 2))], axis=1)
    c2ws = extrinsics_from_poses(poses)
    rel = compute_relative_poses(c2ws, framewise=False, normalize_trans=True)
    assert np.allclose(rel[0], np.eye(4))
    assert np.isclose(np.linalg.norm(rel[:, :3, 3], axis=1).max(), 1.0)
    # products of two reflections are proper rotations
    assert np.allclose(np.linalg.det(rel[:, :3, :3]), 1.0)
    fw = compute_relative_poses(c2ws, framewise=True, normalize_trans=False)
    assert np.allclose(fw[3], np.linalg.inv(c2ws[2]) @ c2ws[3])


@pytest.mark.parametrize("case", ["exact", "fractional"])
def test_interpolation_golden(cam, case):
    g, _ = cam
    src, c2ws = g["interp.src_indices"], g["interp.src_c2ws"]
    out = interpolate_poses_handedness(src, c2ws[:, :3, :3], c2ws[:, :3, 3], g[f"interp.{case}.tgt_indices"])
    assert out.dtype == np.float32
    assert np.abs(out - g[f"interp.{case}.out"]).max() <= 1e-6


def test_interpolation_selector_extrapolation_and_handedness():
    c2ws = extrinsics_from_poses(np.array([[0, 0, 0, 0, 0], [100, 0, 0, 0, 30], [200, 50, 0, 10, 60]], float))
    src = np.array([10.0, 11.0, 12.0])
    R, t = c2ws[:, :3, :3], c2ws[:, :3, 3]
    sel = interpolate_poses_handedness(src, R, t, [11.0])
    assert np.allclose(sel[0], c2ws[1], atol=1e-6)
    mid = interpolate_poses_handedness(src, R, t, [10.5])[0]
    assert np.isclose(np.linalg.det(mid[:3, :3]), -1.0, atol=1e-5)  # still a reflection (flip undone)
    assert np.allclose(mid[:3, 3], (t[0] + t[1]) / 2, atol=1e-6)
    # translation extrapolates linearly, rotation holds the end pose
    ext = interpolate_poses_handedness(src, R, t, [13.0])[0]
    assert np.allclose(ext[:3, 3], t[2] + (t[2] - t[1]), atol=1e-5)
    assert np.allclose(ext[:3, :3], R[2], atol=1e-6)


@pytest.mark.parametrize("hw", ["704x1280", "720x1280", "64x128", "64x96"])
def test_intrinsics_golden(cam, hw):
    g, _ = cam
    H, W = (int(v) for v in hw.split("x"))
    assert np.array_equal(intrinsics_90fov(H, W), g[f"intrinsics.{hw}"])


def test_plucker_clip_golden(cam):
    g, meta = cam
    pj = meta["plucker"]
    (H, W), (lh, lw), clip = pj["pixels_hw"], pj["latents_hw"], pj["clip"]
    out = build_plucker_from_c2ws(g["plucker.clip.input_c2ws"], clip["src_indices"], clip["tgt_indices"],
                                  clip["framewise"], intrinsics_90fov(H, W), H, W, lh, lw)
    assert out.shape == (1, 1536, 3, lh, lw) and out.dtype == np.float32
    assert np.abs(out - g["plucker.clip.out"]).max() <= 1e-6
    t = build_plucker_from_c2ws_torch(g["plucker.clip.input_c2ws"], clip["src_indices"], clip["tgt_indices"],
                                      clip["framewise"], intrinsics_90fov(H, W), H, W, lh, lw)
    assert tuple(t.shape) == out.shape and np.array_equal(t.numpy(), out)


def test_plucker_pose_golden(cam):
    g, meta = cam
    pj = meta["plucker"]
    (H, W), (lh, lw) = pj["pixels_hw"], pj["latents_hw"]
    out = build_plucker_from_pose(g["plucker.pose.input_c2w"], intrinsics_90fov(H, W), H, W, lh, lw)
    assert out.dtype == np.float64  # memory maps are computed in float64
    assert np.abs(out - g["plucker.pose.out"]).max() <= 1e-6


def test_plucker_layout_is_origin_then_unit_direction():
    c2w = extrinsics_from_poses(np.array([[120.0, -40.0, 5.0, 10.0, 30.0]]))
    K = intrinsics_90fov(32, 48)
    rays = pixel_rays(c2w, K, 32, 48)  # (1, 32, 48, 6)
    assert np.allclose(rays[..., :3], c2w[0, :3, 3])  # the origin itself, not o x d
    assert np.allclose(np.linalg.norm(rays[..., 3:], axis=-1), 1.0)
    m = rays_to_latent_map(rays, 2, 3)  # c1 = c2 = 16
    assert m.shape == (1, 6 * 256, 1, 2, 3)
    ch, row, col, h, w = 4, 5, 7, 1, 2  # d_y of pixel (16h + row, 16w + col)
    assert m[0, ch * 256 + row * 16 + col, 0, h, w] == rays[0, 16 * h + row, 16 * w + col, ch]


def test_memory_relative_pose_golden(ret):
    g, meta = ret
    for name, traj in meta["trajectories"].items():
        E = g[f"{name}.extrinsics"]
        for clip in traj["clips"][:3]:
            rel = np.stack([memory_relative_pose(E, m, b) for m, b in
                            zip(clip["selected_index_pipeline"], clip["selected_index_base"])])
            assert np.abs(rel - g[f"{name}.clip{clip['clip_idx']}.memory_rel_poses"]).max() <= 1e-9


# --------------------------------------------------------------------------------------- schedule
def test_frame_to_latent_golden(ret):
    _, meta = ret
    for f, row in meta["frame_to_latent"].items():
        assert MG3_SCHEDULE.latent_of(int(f)) == row["latent"]
        assert MG3_SCHEDULE.aligned(int(f)) == row["aligned_block_start"]
    assert list(MG3_SCHEDULE.latent_of(np.array([0, 1, 4, 5, 56]))) == [0, 1, 1, 2, 14]


def test_clip_schedule_mg3_numbers():
    w0, w1, w6 = MG3_SCHEDULE.window(0), MG3_SCHEDULE.window(1), MG3_SCHEDULE.window(6)
    assert (w0.start, w0.end, w0.targets[:3], w0.targets[-1], len(w0.targets)) == (0, 57, (0, 4, 8), 56, 15)
    assert (w0.latent_start, w0.latent_end, w0.new_latent_start, w0.candidate_end) == (0, 15, 0, 0)
    assert (w1.start, w1.end, w1.targets[0], w1.targets[-1], len(w1.targets)) == (41, 97, 44, 96, 14)
    assert (w1.latent_start, w1.latent_end, w1.new_latent_start) == (11, 25, 15)
    assert w1.base_frames((1, 9, 17, 25, 33)) == (96, 88, 80, 72, 64)
    assert (w6.start, w6.end, w6.latent_start, w6.latent_end) == (241, 297, 61, 75)
    assert MG3_SCHEDULE.num_frames(11) == 457
    # the global timeline: clip k's new latents follow clip k-1's without gaps
    assert MG3_SCHEDULE.window(2).new_latent_start == w1.latent_end
    # every target is the last frame of its latent
    assert all(MG3_SCHEDULE.latent_of(f) == i + w1.latent_start for i, f in enumerate(w1.targets))


def test_clip_schedule_small_preset_and_validation():
    nano = ClipSchedule(first_clip_frames=25, clip_frames=24, new_frames=16, past_latents=2)
    w = nano.window(2)
    assert (w.start, w.end, w.latent_end - w.latent_start, w.latent_end - w.new_latent_start) == (33, 57, 6, 4)
    with pytest.raises(ValueError, match="past_latents"):
        ClipSchedule(first_clip_frames=25, clip_frames=24, new_frames=12, past_latents=2)
    with pytest.raises(ValueError, match="multiples"):
        ClipSchedule(first_clip_frames=24)


def test_plucker_for_clip_uses_window_targets():
    poses = np.zeros((97, 5), np.float32)
    poses[:, 0] = np.arange(97) * 12.35
    E = extrinsics_from_poses(poses)
    m = plucker_for_clip(E, MG3_SCHEDULE.window(1), intrinsics_90fov(32, 32), 32, 32, 2, 2)
    assert m.shape == (1, 1536, 14, 2, 2)
    # framewise + normalised: every step after the first is the same unit forward move (camera +z)
    origins = m[0, [0, 256, 512], :, 0, 0]  # o_x, o_y, o_z at pixel (0, 0)
    assert np.allclose(origins[:, 0], 0) and np.allclose(origins[:, 1:], [[0], [0], [1]], atol=1e-6)


# -------------------------------------------------------------------------------------- bad input
def test_nan_pose_is_named():
    c2ws = extrinsics_from_poses(np.zeros((4, 5)))
    c2ws[2, 0, 3] = np.nan
    with pytest.raises(ValueError, match=r"non-finite.*\[2\]"):
        compute_relative_poses(c2ws)
    with pytest.raises(ValueError, match="NaN"):
        build_plucker_from_c2ws(c2ws, np.arange(4), [0, 3], True, intrinsics_90fov(16, 16), 16, 16, 1, 1)


def test_wrong_shapes_are_reported():
    with pytest.raises(ValueError, match=r"\[N, 4, 4\].*\[3, 3, 3\]"):
        compute_relative_poses(np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match=r"\[T, 5\]"):
        extrinsics_from_poses(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="one c2w per source index"):
        build_plucker_from_c2ws(np.tile(np.eye(4), (3, 1, 1)), np.arange(4), [0], True,
                                intrinsics_90fov(16, 16), 16, 16, 1, 1)
    with pytest.raises(ValueError, match="multiples of the latent grid"):
        rays_to_latent_map(np.zeros((1, 30, 32, 6)), 4, 4)
    with pytest.raises(ValueError, match="strictly increasing"):
        interpolate_poses_handedness([1.0, 1.0], np.tile(np.eye(3), (2, 1, 1)), np.zeros((2, 3)), [1.0])
