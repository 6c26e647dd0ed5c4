"""Data engine: worlds, renderer camera conventions, agents, prompts, render_clip (tiny sizes, seconds)."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from worldstream.data.actions import poses_from_actions
from worldstream.data.engine import (
    BIOMES,
    TRAJECTORIES,
    EngineConfig,
    Renderer,
    World,
    bench_actions,
    plan_trajectory,
    render_clip,
    render_frames,
)
from worldstream.data.engine.clips import revisit_pairs
from worldstream.data.engine.mesh import MeshBuilder
from worldstream.data.engine.prompts import clip_prompt, world_prompt
from worldstream.data.engine.world import biome_for_seed
from worldstream.geometry.camera import extrinsics_from_poses

GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "golden"
SMALL = EngineConfig(height=32, width=48, num_frames=25)


@pytest.fixture(scope="module")
def park() -> World:
    return World.generate(3, biome="green_park")


def _marker_world(
    base: World, boxes: list[tuple[tuple[float, float, float], tuple[float, float, float]]]
) -> World:
    """`base` with all geometry replaced by emissive (unlit) boxes: [(centre xyz, rgb)], 0.6 m cubes."""
    m = MeshBuilder()
    plain = base.layer_names.index("plain")
    for (x, y, z), rgb in boxes:
        m.box((x, y), (0.6, 0.6, 0.6), z - 0.3, 0.0, rgb, plain, emit=1.0, bottom=True)
    lighting = dataclasses.replace(base.lighting, fog_density=0.0)
    return dataclasses.replace(base, vertices=m.build(), lighting=lighting)


def _centroid(frame: np.ndarray, rgb: tuple[int, int, int]) -> tuple[float, float] | None:
    """(u, v) mean pixel position of pixels close to rgb, None if absent."""
    d = np.abs(frame.astype(int) - np.array(rgb)).sum(-1)
    vv, uu = np.nonzero(d < 60)
    return None if len(uu) == 0 else (float(uu.mean() + 0.5), float(vv.mean() + 0.5))


# ---- worlds --------------------------------------------------------------------------------------


def test_world_is_deterministic_and_seed_dependent():
    a, b, c = World.generate(5), World.generate(5), World.generate(6)
    assert a.vertices.tobytes() == b.vertices.tobytes() and a.textures.tobytes() == b.textures.tobytes()
    assert a.descriptor == b.descriptor
    assert a.vertices.shape != c.vertices.shape or a.vertices.tobytes() != c.vertices.tobytes()


def test_biome_coverage_and_descriptors():
    biomes = {biome_for_seed(s) for s in range(24)}
    assert len(biomes) >= 4, biomes
    assert World.generate(11).biome == biome_for_seed(11)
    for biome in BIOMES:
        w = World.generate(2, biome=biome)
        names = w.descriptor["landmarks"]
        assert len(names) >= 3 and len(set(names)) == len(names), names
        colours = [lm.colour for lm in w.landmarks]
        assert len(set(colours)) == len(colours), "landmark colours must be unique within a world"
        assert 500 < w.num_triangles < 12000, w.num_triangles
        assert w.textures.dtype == np.uint8 and w.textures.ndim == 4
        assert world_prompt(w.descriptor).endswith(".")


def test_world_bad_input():
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        World.generate(-1)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        World.generate("3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown biome"):
        World.generate(1, biome="moon")


# ---- renderer: MG3 camera conventions ----------------------------------------------------------


def test_camera_convention_forward_right_yaw_pitch(park):
    H, W = 48, 80
    red, blue = (255, 0, 0), (0, 0, 255)
    world = _marker_world(park, [((10.0, 0.0, 1.7), (1.0, 0.0, 0.0)), ((10.0, 10.0, 1.7), (0.0, 0.0, 1.0))])
    r = Renderer(world, H, W)
    try:
        fx, fy, cx, cy = r.intrinsics
        assert (fx, fy, cx, cy) == (W / 2, W / 2, W / 2, H / 2)
        # yaw +45 deg through MG3 actions: 30 frames of mouse yaw +0.1 (1.5 deg each)
        T = 31
        kb = np.zeros((T, 6), np.float32)
        mouse = np.zeros((T, 2), np.float32)
        mouse[:30, 1] = 0.1
        poses, _ = poses_from_actions(kb, mouse, np.array([0, 0, 170, 0, 0], np.float32))
        assert poses[-1, 4] == pytest.approx(45.0)
        pitched = np.array([[0, 0, 170, 15.0, 0]], np.float32)  # positive pitch looks down
        frames = r.render(extrinsics_from_poses(np.concatenate([poses[[0, -1]], pitched])))
    finally:
        r.release()
    # 1. straight ahead (+X) is the image centre; +Y (45 deg right) is right of centre
    u, v = _centroid(frames[0], red)
    assert abs(u - cx) < 1.5 and abs(v - cy) < 1.5
    ub, vb = _centroid(frames[0], blue)
    assert ub > cx + 0.8 * fx * np.tan(np.deg2rad(40)) and abs(vb - cy) < 1.5
    # 2. after a positive yaw of 45 deg the +X+Y marker is centred and the +X marker moved left
    ub, vb = _centroid(frames[1], blue)
    assert abs(ub - cx) < 1.5 and abs(vb - cy) < 1.5
    u, _ = _centroid(frames[1], red)
    assert u < cx - 0.8 * fx * np.tan(np.deg2rad(40))
    # 3. positive pitch tilts the view down, so the marker ahead moves up (smaller v), by fy*tan(15)
    u, v = _centroid(frames[2], red)
    assert abs(u - cx) < 1.5 and v == pytest.approx(cy - fy * np.tan(np.deg2rad(15)), abs=1.5)


def test_render_frames_shapes_and_bad_input(park):
    poses = np.array([[0, 0, 170, 0, a] for a in (0, 90, 180)], np.float32)
    frames = render_frames(park, extrinsics_from_poses(poses), 24, 40)
    assert frames.shape == (3, 24, 40, 3) and frames.dtype == np.uint8
    assert frames.std() > 5, "frames should not be blank"
    with pytest.raises(ValueError, match="height must be a positive int"):
        render_frames(park, extrinsics_from_poses(poses), -4, 40)
    with pytest.raises(ValueError, match=r"c2w must be \[T, 4, 4\]"):
        render_frames(park, np.zeros((3, 3, 4)), 24, 40)


def test_batching_and_chunk_culling_do_not_change_frames(park, monkeypatch):
    import worldstream.data.engine.renderer as renderer_mod

    traj = plan_trajectory(park, "explore", 40, seed=3)
    poses = traj.poses.copy()
    poses[37] = poses[0]  # same pose in another batch (batch size 32) and another slot
    c2w = extrinsics_from_poses(poses)
    r = Renderer(park, 24, 40)
    try:
        assert r.batch < 40
        frames = r.render(c2w)
        np.testing.assert_array_equal(frames[37], frames[0])
        np.testing.assert_array_equal(r.render(c2w[5:6])[0], frames[5])
        monkeypatch.setattr(renderer_mod, "visible_chunks", lambda m, a: np.ones((len(m), len(a)), bool))
        np.testing.assert_array_equal(r.render(c2w), frames)
    finally:
        r.release()


def test_chunk_geometry_keeps_every_triangle(park):
    from worldstream.data.engine.renderer import chunk_geometry

    verts, idx, ranges, aabb = chunk_geometry(park.vertices, park.cfg.arena_size / 2)
    assert len(verts) < len(park.vertices) and len(idx) == len(park.vertices)
    assert ranges[:, 1].sum() == len(idx) and (aabb[:, 0] <= aabb[:, 1]).all()
    rebuilt = verts[idx].reshape(-1, 3 * verts.shape[1])
    original = park.vertices.reshape(-1, 3 * verts.shape[1])
    key = lambda a: a[np.lexsort(a.T[::-1])]
    np.testing.assert_array_equal(key(rebuilt), key(original))


# ---- agents ---------------------------------------------------------------------------------------


def test_bench_actions_match_golden():
    cam = load_file(str(GOLDEN / "camera_vectors.safetensors"))
    kb, mouse = bench_actions(57, random.Random(42))
    np.testing.assert_array_equal(kb, cam["bench_57_seed42.keyboard"])
    np.testing.assert_array_equal(mouse, cam["bench_57_seed42.mouse"])
    ret = load_file(str(GOLDEN / "retrieval_vectors.safetensors"))
    kb, mouse = bench_actions(ret["bench_random.keyboard"].shape[0], random.Random(101))
    np.testing.assert_array_equal(kb, ret["bench_random.keyboard"])
    np.testing.assert_array_equal(mouse, ret["bench_random.mouse"])


@pytest.mark.parametrize("biome", ["neon_city", "autumn_town"])
def test_agents_stay_clear_and_use_mg3_kinematics(biome):
    world = World.generate(4, biome=biome)
    for i, name in enumerate(TRAJECTORIES):
        traj = plan_trajectory(world, name, 57, seed=100 + i)
        a = plan_trajectory(world, name, 57, seed=100 + i)
        assert a.keyboard.tobytes() == traj.keyboard.tobytes() and a.poses.tobytes() == traj.poses.tobytes()
        x, y = traj.poses[:, 0] / 100.0, traj.poses[:, 1] / 100.0
        assert not world.is_solid(x, y).any(), f"{name}: a pose is inside an obstacle"
        assert (world.clearance(x, y) >= 0.4).all(), f"{name}: too close to an obstacle"
        # poses are exactly MG3's kinematics applied to the emitted actions
        again, _ = poses_from_actions(traj.keyboard, traj.mouse, traj.poses[0])
        np.testing.assert_array_equal(again, traj.poses)
        assert np.all(traj.poses[:, 2] == 170.0)
        assert np.abs(traj.poses[:, 3]).max() <= 6.0 + 1e-6, "pitch must stay small"
        assert set(np.unique(traj.keyboard)) <= {0.0, 1.0} and np.all(traj.keyboard[:, 4:] == 0)


def test_revisit_frames_match(park):
    r = Renderer(park, 32, 48)
    try:
        for name in ("out_and_back", "loop_strafe", "retreat"):
            traj = plan_trajectory(park, name, 97, seed=9)
            assert traj.kind == name
            j = traj.info["return_frame"]
            i = 0 if name != "retreat" else 0
            np.testing.assert_allclose(traj.poses[j, :2], traj.poses[i, :2], atol=0.05)  # cm
            assert traj.poses[j, 4] == traj.poses[i, 4]
            frames = r.render(extrinsics_from_poses(traj.poses[[i, j]]))
            diff = np.abs(frames[0].astype(int) - frames[1].astype(int))
            assert diff.mean() < 0.5 and diff.max() < 64, (name, diff.mean(), diff.max())
            assert [j, i] in revisit_pairs(traj.poses) or any(p[0] == j for p in revisit_pairs(traj.poses))
    finally:
        r.release()


# ---- render_clip -----------------------------------------------------------------------------------


def test_render_clip_deterministic_and_valid():
    a = render_clip(1, 2, SMALL)
    render_clip(8, 0, SMALL)  # switch the cached world in between
    b = render_clip(1, 2, SMALL)
    c = render_clip(1, 3, SMALL)
    assert a.video.tobytes() == b.video.tobytes() and a.prompt == b.prompt
    assert a.c2w.tobytes() == b.c2w.tobytes() and a.meta == b.meta
    assert c.video.tobytes() != a.video.tobytes()
    a.validate()
    T, H, W = SMALL.num_frames, SMALL.height, SMALL.width
    assert a.key == "w000001_c000002" and a.source == "render" and a.world_seed == 1
    assert a.video.shape == (T, H, W, 3) and a.c2w.shape == (T, 4, 4) and a.c2w.dtype == np.float64
    assert a.keyboard.shape == (T, 6) and a.mouse.shape == (T, 2) and a.poses.shape == (T, 5)
    np.testing.assert_array_equal(a.intrinsics, [W / 2, W / 2, W / 2, H / 2])
    np.testing.assert_array_equal(a.c2w, extrinsics_from_poses(a.poses))
    assert a.meta["biome"] in BIOMES and a.meta["trajectory"] in TRAJECTORIES
    assert isinstance(a.prompt, str) and a.meta["world"]["time_of_day"] in a.prompt
    assert json.loads(json.dumps(a.meta)) == a.meta, "meta must be JSON-serialisable"
    d = render_clip(2, 2, SMALL)
    assert d.video.tobytes() != a.video.tobytes()


def test_render_clip_bad_input():
    with pytest.raises(ValueError, match="world_seed must be a non-negative int"):
        render_clip(1.5, 0, SMALL)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clip_seed must be a non-negative int"):
        render_clip(1, -2, SMALL)
    with pytest.raises(ValueError, match="height must be a positive int"):
        EngineConfig(height=-96)
    with pytest.raises(ValueError, match="unknown names"):
        EngineConfig(trajectories=("moonwalk",), trajectory_weights=(1.0,))
    with pytest.raises(ValueError, match="equal length"):
        EngineConfig(trajectories=("spin",), trajectory_weights=(1.0, 2.0))


def test_prompt_mentions_visible_landmarks():
    desc = {
        "place": "a snowy village",
        "buildings": "red-roofed wooden houses",
        "props": "snowy pine trees",
        "time_of_day": "at dusk",
        "ground": "snow-covered ground",
    }
    p = clip_prompt(desc, ["blue tower", "orange arch"])
    assert p == (
        "A snowy village of red-roofed wooden houses and snowy pine trees at dusk, "
        "with a blue tower and an orange arch."
    )


def test_rendering_works_from_a_second_thread_after_the_first_rendered():
    """EGL contexts are current in one thread only: a worker thread that renders first (the play
    server's start images) must not break rendering in the main thread, and vice versa."""
    import threading

    from worldstream.data.engine import EngineConfig, render_clip

    cfg = EngineConfig(height=32, width=48, num_frames=5)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("thread", render_clip(3, 1, cfg)))
    t.start()
    t.join()
    main = render_clip(3, 1, cfg)
    assert np.array_equal(out["thread"].video, main.video)
