"""Action script language: tokens -> per-frame rows, units through MG3 kinematics, errors with columns."""

from __future__ import annotations

import random

import numpy as np
import pytest

from worldstream.data.actions import poses_from_actions
from worldstream.data.engine import bench_actions
from worldstream.infer.actions_script import DEFAULT_SCRIPT, ScriptConfig, describe_row, parse_script


def test_tokens_rows_and_counts():
    rows = parse_script("w*3 w+d*2 mouse:right*2 look:up idle*2 S A+Space")
    assert len(rows) == 3 + 2 + 2 + 1 + 2 + 1 + 1
    kb, ms = rows.keyboard, rows.mouse
    assert kb.dtype == np.float32 and kb.shape == (12, 6) and ms.shape == (12, 2)
    np.testing.assert_array_equal(kb[:3], [[1, 0, 0, 0, 0, 0]] * 3)
    np.testing.assert_array_equal(kb[3:5], [[1, 0, 0, 1, 0, 0]] * 2)
    np.testing.assert_allclose(ms[5:7], [[0, 0.1]] * 2)  # right = +yaw
    np.testing.assert_allclose(ms[7], [-0.1, 0])  # up = -pitch (positive pitch looks down)
    assert not kb[5:10].any() and not ms[8:10].any()
    np.testing.assert_array_equal(kb[10], [0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(kb[11], [0, 0, 1, 0, 1, 0])


def test_magnitude_and_combined_key_and_mouse():
    rows = parse_script("w+mouse:left@0.2*4 mouse:down@0.05+mouse:right")
    np.testing.assert_allclose(rows.mouse[:4], [[0, -0.2]] * 4)
    np.testing.assert_array_equal(rows.keyboard[:4, 0], 1)
    np.testing.assert_allclose(rows.mouse[4], [0.05, 0.1])
    assert describe_row(rows.keyboard[0], rows.mouse[0]) == "w+mouse:left@0.2"
    assert describe_row(np.zeros(6), np.zeros(2)) == "idle"


def test_units_through_mg3_kinematics():
    poses, _ = poses_from_actions(*_rows("w*10"))
    np.testing.assert_allclose(poses[-1, :2], [9 * 12.35, 0], atol=1e-3)  # 12.35 units (cm) per frame
    poses, _ = poses_from_actions(*_rows("w+d*5"))
    np.testing.assert_allclose(poses[-1, :2], [4 * 8.73, 4 * 8.73], atol=1e-3)  # diagonal: 8.73 per axis
    poses, _ = poses_from_actions(*_rows("mouse:right*11"))
    assert poses[-1, 4] == pytest.approx(10 * 1.5)  # 0.1 mouse = 1.5 deg per frame
    poses, _ = poses_from_actions(*_rows("mouse:left@0.2*3"))
    assert poses[-1, 4] == pytest.approx(-2 * 3.0)  # 15 deg per mouse unit


def _rows(script):
    r = parse_script(script)
    return r.keyboard, r.mouse


def test_bench_is_the_official_random_sequence():
    rows = parse_script("bench:42")
    kb, ms = bench_actions(ScriptConfig().bench_frames, random.Random(42))
    np.testing.assert_array_equal(rows.keyboard, kb)
    np.testing.assert_array_equal(rows.mouse, ms)
    rows = parse_script("idle*2 bench:7*20")
    kb, ms = bench_actions(20, random.Random(7))
    assert len(rows) == 22
    np.testing.assert_array_equal(rows.keyboard[2:], kb)
    np.testing.assert_array_equal(rows.mouse[2:], ms)


def test_pad_to_adds_idle_rows():
    rows = parse_script("w*3").pad_to(5)
    assert len(rows) == 5 and not rows.keyboard[3:].any() and not rows.mouse[3:].any()
    assert len(parse_script(DEFAULT_SCRIPT)) == 88


@pytest.mark.parametrize("script, column, words", [
    ("w*3 x*2", 5, "unknown key 'x'"),
    ("w*3 w+q", 5, "unknown key 'q'"),
    ("w*0", 1, "positive integer"),
    ("  w*abc", 3, "positive integer"),
    ("idle mouse:sideways", 6, "unknown mouse direction 'sideways'"),
    ("mouse:left@-1", 1, "must be > 0"),
    ("mouse:left@abc", 1, "must be a number"),
    ("w++d", 1, "empty part"),
    ("mouse:left+look:right", 1, "yaw twice"),
    ("bench:abc", 1, "bench seed"),
    ("jump:up", 1, "unknown action 'jump'"),
    ("*4", 1, "empty action"),
])
def test_errors_name_the_column(script, column, words):
    with pytest.raises(ValueError, match=f"column {column}:.*{words}"):
        parse_script(script)


def test_empty_and_too_long_scripts():
    with pytest.raises(ValueError, match="empty"):
        parse_script("   ")
    with pytest.raises(ValueError, match="longer than 10 frames"):
        parse_script("w*6 s*6", ScriptConfig(max_frames=10))
    with pytest.raises(TypeError):
        parse_script(None)
