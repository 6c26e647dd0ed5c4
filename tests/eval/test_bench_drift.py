"""`bench drift` on a tiny random model: a few seconds end to end, per-second curve and the drop."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from tiny_world import PROMPT, TINY_SESSION, H, W, tiny_bundle

from worldstream.eval import harness
from worldstream.eval.benchmarks import drift

SHORT = dataclasses.replace(drift.BENCH, window_seconds=1.0)  # 1 s windows: a 3 s session suffices


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle()


def test_end_to_end_on_a_few_seconds(bundle, tmp_path):
    res = drift.run(bundle, TINY_SESSION, [900, 901], "explore", 3.0, SHORT, prompt=PROMPT)
    fps = TINY_SESSION.fps
    assert res["settings"]["frames"] == 3 * fps and res["settings"]["session_frames"] == 57
    assert len(res["psnr_per_second"]) == 3 and len(res["worlds"]) == 2
    for w in res["worlds"]:
        assert w["frames"] == 3 * fps and w["fps"] > 0 and w["produced"] == "explore"
        assert w["drop_db"] == pytest.approx(w["psnr_first_window"] - w["psnr_last_window"])
    np.testing.assert_allclose(res["psnr_per_second"],
                               np.mean([w["psnr_per_second"] for w in res["worlds"]], axis=0))
    assert res["targets"]["drop_db"]["met"] == (res["summary"]["drop_db"] <= SHORT.target_drop_db)
    md_path, json_path = tmp_path / "drift.md", tmp_path / "drift.json"
    md = drift.write(res, md_path, json_path, "tiny random")
    assert "## PSNR per second" in md and (tmp_path / "drift.png").stat().st_size > 0
    data = json.loads(json_path.read_text())
    assert {"machine", "settings", "targets", "summary", "psnr_per_second", "ssim_per_second", "worlds",
            "checkpoint"} <= set(data)
    assert {"psnr_first_window", "psnr_last_window", "drop_db", "fps"} <= set(data["summary"])


def test_measure_world_of_a_perfect_then_drifting_model():
    gt = harness.ground_truth(902, "explore", 48, H, W)
    fps = 16
    same = drift.measure_world(gt.video, gt.video, fps, SHORT)
    assert same["drop_db"] == 0 and same["psnr_mean"] == SHORT.psnr_cap_db
    video = gt.video.copy()
    video[32:] = 255 - video[32:]  # the last second goes wrong
    m = drift.measure_world(gt.video, video, fps, SHORT)
    assert m["psnr_first_window"] == SHORT.psnr_cap_db and m["psnr_last_window"] < 20 and m["drop_db"] > 50
    assert m["psnr_per_second"][:2] == [SHORT.psnr_cap_db] * 2
    assert m["ssim_per_second"][0] == pytest.approx(1.0) and m["ssim_per_second"][2] < 0.5


def test_per_second_skips_frame_0_and_keeps_a_partial_last_second():
    v = np.arange(40, dtype=np.float64)
    v[0] = np.nan
    out = drift.per_second(v, 16)
    np.testing.assert_allclose(out, [np.mean(np.arange(1, 16)), np.mean(np.arange(16, 32)), np.mean(np.arange(32, 40))])


def test_too_short_sessions_are_refused(bundle):
    with pytest.raises(ValueError, match="--seconds"):
        drift.run(bundle, TINY_SESSION, [900], "explore", 1.5, SHORT, prompt=PROMPT)


def test_cli_options_parse():
    from worldstream.cli import build_parser

    args = build_parser().parse_args(["bench", "drift", "--seconds", "30", "--world-seeds", "900"])
    assert args.seconds == 30 and args.trajectory == "explore" and args.threads == 1 and not args.quick
    assert args.out == drift.DEFAULT_OUT
