"""Clip filters: each filter removes its defect and keeps clean MG3 clips; report and `worldstream data filter`."""

import json

import numpy as np
import pytest

from worldstream.cli import main as cli_main
from worldstream.data.actions import KEY_INDEX, poses_from_actions
from worldstream.data.filter_cmd import apply_overrides
from worldstream.data.filters import FILTERS, FilterConfig, check_clip, filter_clips
from worldstream.data.inference import exploration_revisit_actions
from worldstream.data.ingest.common import write_clip_shards
from worldstream.data.schema import Clip
from worldstream.data.shards import ShardReader
from worldstream.geometry.camera import extrinsics_from_poses

T = 48


def _clip(key: str, poses: np.ndarray, video: bool = True, seed: int = 0) -> Clip:
    rng = np.random.default_rng(seed)
    vid = rng.integers(40, 220, size=(len(poses), 6, 8, 3), dtype=np.uint8) if video else None
    return Clip(key=key, c2w=extrinsics_from_poses(poses), intrinsics=np.array([4.0, 3, 4, 3]),
                keyboard=np.zeros((len(poses), 6), np.float32), mouse=np.zeros((len(poses), 2), np.float32),
                prompt="", source="test", video=vid, poses=poses.astype(np.float32))


def _walk(keys: str = "W", yaw_mouse: float = 0.0, n: int = T) -> np.ndarray:
    kb = np.zeros((n, 6), np.float32)
    for k in keys:
        kb[:, KEY_INDEX[k]] = 1
    mouse = np.zeros((n, 2), np.float32)
    mouse[:, 1] = yaw_mouse
    return poses_from_actions(kb, mouse)[0].astype(np.float64)


def _defects() -> dict[str, Clip]:
    clips = {}
    poses = np.zeros((T, 5))
    clips["static"] = _clip("static", poses)
    p = _walk()
    p[20:, 0] += 300.0  # teleport
    clips["pose_jump"] = _clip("jump", p)
    p = _walk()
    p[:, :3] *= 3.0  # 37 units/frame: too fast for long, not a single jump
    clips["speed"] = _clip("fast", p)
    c = _clip("frozen", _walk())
    c.video[10:14] = c.video[10]  # stuck frames while walking
    clips["frozen"] = c
    c = _clip("black", _walk("WD", 0.1))
    c.video[30] = 2
    clips["black"] = c
    p = _walk()
    p[:, :3] += np.random.default_rng(3).normal(0, 5.0, size=(T, 3))  # shaky, not MG3-like
    clips["confidence"] = _clip("shaky", p)
    return clips


def test_each_filter_removes_its_defect_only():
    cfg = FilterConfig()
    for name, clip in _defects().items():
        reasons, skipped = check_clip(clip, cfg)
        also = {"speed": {"confidence"}}.get(name, set())  # 3x the MG3 step is no clean MG3 action either
        assert set(reasons) == {name} | also, (name, reasons)
        assert skipped == []


@pytest.mark.parametrize("seed", range(3))
def test_clean_mg3_clips_are_kept(seed):
    kb, mouse = exploration_revisit_actions(seed, 200)
    poses, _ = poses_from_actions(kb, mouse)
    clip = _clip(f"ok{seed}", poses.astype(np.float64), seed=seed)
    reasons, _ = check_clip(clip, FilterConfig())
    assert reasons == {} or (set(reasons) == {"static"} and np.abs(kb).sum() == 0)


def test_thresholds_are_config_fields():
    clip = _defects()["pose_jump"]
    assert "pose_jump" not in check_clip(clip, FilterConfig(jump_max_step=400.0))[0]
    black = _defects()["black"]
    assert "black" not in check_clip(black, FilterConfig(black_max_frames=1))[0]
    for name, (_, _, fields) in FILTERS.items():
        for f in fields:
            assert hasattr(FilterConfig(), f), (name, f)


def test_report_and_poses_only_clips():
    defects = _defects()
    good = _clip("good", _walk("W", 0.1))
    poses_only = _clip("nv", _walk("A"), video=False)
    kept, report = filter_clips([good, poses_only, *defects.values()])
    assert [c.key for c in kept] == ["good", "nv"]
    js = report.to_json()
    assert js["total"] == 8 and js["kept"] == 2 and js["removed"] == 6
    assert js["filters"]["frozen"]["removed"] == 1
    assert js["filters"]["frozen"]["clips"][0]["key"] == "frozen"
    assert "identical frame pairs" in js["filters"]["frozen"]["clips"][0]["why"]
    assert js["filters"]["black"]["not_applicable"] == 1  # the poses-only clip
    assert js["filters"]["pose_jump"]["clips"][0]["why"].startswith("step 312.4 > 49.4 at frame 19->20")
    table = report.table()
    assert "| static |" in table and "6 of 8" in table
    json.dumps(js)  # serialisable


def test_set_overrides():
    cfg = apply_overrides(FilterConfig(), ["jump_max_step=60", "frozen_max_run=3", "inference.sigma_pos=0.5"])
    assert cfg.jump_max_step == 60.0 and cfg.frozen_max_run == 3 and cfg.inference.sigma_pos == 0.5
    with pytest.raises(ValueError, match="unknown field"):
        apply_overrides(FilterConfig(), ["nope=1"])
    with pytest.raises(ValueError, match="expected int"):
        apply_overrides(FilterConfig(), ["frozen_max_run=1.5"])


def test_filter_command_end_to_end(tmp_path, capsys):
    defects = _defects()
    clips = [_clip("good", _walk("W", 0.1)), defects["static"], defects["frozen"], _clip("good2", _walk("SA"))]
    write_clip_shards(tmp_path / "in", clips, clips_per_shard=2)
    rc = cli_main(["data", "filter", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                   "--report", str(tmp_path / "r.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| frozen |" in out and "kept 2 of 4" in out
    kept = list(ShardReader(tmp_path / "out", strict=True))
    assert [c.key for c in kept] == ["good", "good2"]
    np.testing.assert_array_equal(kept[0].video, clips[0].video)
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["filters"]["static"]["clips"][0]["key"] == "static" and rep["written"]["clips"] == 2


def test_rendered_clips_are_kept():
    from worldstream.data.engine.clips import EngineConfig, render_clip

    cfg = EngineConfig(height=24, width=40, num_frames=57)
    kept, report = filter_clips([render_clip(i, 20 + i, cfg) for i in range(4)])
    assert report.kept == 4, report.table()
