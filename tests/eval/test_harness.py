"""eval/harness.py: held-out seeds, deterministic ground truth, generated frames aligned with the GT's actions."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_world import PROMPT, TINY_SESSION, H, W, tiny_bundle

from worldstream.data.render_cmd import derive_seed
from worldstream.eval import harness
from worldstream.infer import config as session_config


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle()


@pytest.fixture(scope="module")
def clip():
    return harness.ground_truth(900, "retreat", 57, H, W)


def test_training_worlds_are_refused_and_defaults_are_held_out():
    assert harness.check_held_out(harness.DEFAULT_WORLD_SEEDS) == list(harness.DEFAULT_WORLD_SEEDS)
    train_seed = derive_seed(1, "world", 7)  # world 7 of `data render --seed 1`
    assert train_seed in harness.training_world_seeds()
    with pytest.raises(ValueError, match="training worlds"):
        harness.check_held_out([900, train_seed])
    with pytest.raises(ValueError, match="at least one"):
        harness.check_held_out([])


def test_ground_truth_is_deterministic_and_of_the_requested_kind(clip):
    again = harness.ground_truth(900, "retreat", 57, H, W)
    assert clip.video.shape == (57, H, W, 3) and clip.meta["trajectory"] == "retreat"
    np.testing.assert_array_equal(clip.video, again.video)
    np.testing.assert_array_equal(clip.keyboard, again.keyboard)
    assert clip.prompt == again.prompt and clip.meta["revisit_pairs"] == again.meta["revisit_pairs"]
    assert len(clip.meta["revisit_pairs"]) > 0  # retreat walks back over its own path
    other = harness.ground_truth(901, "retreat", 57, H, W)
    assert not np.array_equal(other.video, clip.video)
    with pytest.raises(ValueError, match="unknown trajectory"):
        harness.ground_truth(900, "teleport", 57, H, W)


def test_aligned_frames_follow_the_clip_schedule():
    cfg = TINY_SESSION  # first clip 25 frames incl. the image, then 16
    assert [harness.aligned_frames(cfg, n) for n in (1, 25, 26, 41, 42, 960)] == [25, 25, 41, 41, 57, 969]


@pytest.mark.parametrize("n", [1, 10, 25, 30, 41, 57])
def test_generated_length_matches_the_ground_truth(bundle, clip, n):
    g = harness.run_session(bundle, TINY_SESSION, clip, n, prompt=PROMPT)
    assert g.frames.shape == (n, H, W, 3) and g.frames.dtype == np.uint8


def test_frame_i_is_driven_by_the_clips_action_rows(bundle, clip):
    g = harness.run_session(bundle, TINY_SESSION, clip, 57, prompt=PROMPT)
    np.testing.assert_array_equal(g.keyboard, clip.keyboard[:57])
    # the session starts at the origin: its poses are the GT's relative to frame 0 (rotated by the start yaw)
    yaw0 = np.deg2rad(clip.poses[0, 4])
    rot = np.array([[np.cos(yaw0), -np.sin(yaw0)], [np.sin(yaw0), np.cos(yaw0)]])
    np.testing.assert_allclose(g.poses[:, :2] @ rot.T, clip.poses[:, :2] - clip.poses[0, :2], atol=0.05)
    dyaw = (g.poses[:, 4] - (clip.poses[:, 4] - clip.poses[0, 4]) + 180) % 360 - 180
    np.testing.assert_allclose(dyaw, 0, atol=1e-3)
    # deterministic, and frames of complete clips do not depend on later clips
    again = harness.run_session(bundle, TINY_SESSION, clip, 41, prompt=PROMPT)
    np.testing.assert_array_equal(g.frames[:41], again.frames)
    assert g.memory_latents > 0 and g.fps > 0


def test_memory_off_uses_no_memory(bundle, clip):
    g = harness.run_session(bundle, TINY_SESSION.replace(use_memory=False), clip, 57, prompt=PROMPT)
    assert g.memory and all(m is None for m in g.memory) and g.memory_latents == 0


def test_bad_requests_name_the_problem(bundle, clip):
    with pytest.raises(ValueError, match="num_frames"):
        harness.run_session(bundle, TINY_SESSION, clip, 58, prompt=PROMPT)
    with pytest.raises(ValueError, match="session generates"):
        harness.run_session(bundle, TINY_SESSION.replace(height=32), clip, 10, prompt=PROMPT)
    with pytest.raises(ValueError, match="world-seeds"):
        harness.parse_seeds("900,abc")
    with pytest.raises(ValueError, match="unknown"):
        harness.parse_trajectories("retreat,teleport")
    assert harness.parse_trajectories("out-and-back,spin") == ["out_and_back", "spin"]


def test_session_config_reads_the_checkpoint_sampler(tmp_path):
    (tmp_path / "dit").mkdir()
    (tmp_path / "dit" / "meta.json").write_text('{"sampler": "few_step"}')
    cfg = harness.session_config(tmp_path)
    assert (cfg.sampler, cfg.steps, cfg.use_memory) == ("few_step", 4, True)
    cfg = harness.session_config(tmp_path, sampler="unipc", use_memory=False)
    assert (cfg.sampler, cfg.steps, cfg.use_memory) == ("unipc", session_config.NANO.steps, False)
    assert harness.session_config(tmp_path, sampler="euler", steps=5, seed=3).steps == 5
    (tmp_path / "dit" / "meta.json").write_text('{"sampler": "unipc"}')
    assert (harness.session_config(tmp_path).sampler, harness.session_config(tmp_path).steps) == ("unipc", 3)
    assert harness.session_config(tmp_path, sampler="few_step").steps == 4
