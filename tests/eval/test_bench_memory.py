"""`bench memory` on a tiny random model: end to end, the metric bookkeeping, memory on vs off."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_world import PROMPT, TINY_SESSION, H, W, tiny_bundle

from worldstream.eval import harness
from worldstream.eval.benchmarks import memory


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle()


@pytest.fixture(scope="module")
def result(bundle):
    return memory.run(bundle, TINY_SESSION, [900], ["retreat"], 41, prompt=PROMPT)


def test_end_to_end_writes_markdown_json_and_plot(result, tmp_path):
    md_path, json_path = tmp_path / "memory.md", tmp_path / "memory.json"
    md = memory.write(result, md_path, json_path, "tiny random")
    assert md_path.read_text() == md and (tmp_path / "memory.png").stat().st_size > 0
    for section in ("## Targets", "## Memory on vs off", "## By revisit distance", "## By trajectory"):
        assert section in md
    data = json.loads(json_path.read_text())
    assert {"machine", "settings", "targets", "summary", "non_revisit_psnr_gt", "fps", "clips", "pairs",
            "checkpoint"} <= set(data)
    assert set(data["targets"]) == {"gain_db", "self_consistency_db"}
    assert data["settings"]["frames"] == 41 and data["settings"]["world_seeds"] == [900]
    s = data["summary"]["all"]
    assert s["pairs"] == len(data["pairs"]) > 0
    assert s["gain_db"]["psnr_gt"] == pytest.approx(s["on"]["psnr_gt"] - s["off"]["psnr_gt"])
    assert sum(b["pairs"] for b in data["summary"]["by_distance"]) == s["pairs"]
    for r in data["pairs"]:
        assert r["distance"] == r["later"] - r["earlier"] >= 8 and set(r["on"]) == set(memory.METRICS)


def test_memory_off_really_disables_memory(result):
    used = result["clips"][0]["memory_latents_used"]
    assert used["off"] == 0 and used["on"] > 0
    assert result["settings"]["num_memory"] == 4


def test_metrics_of_a_perfect_model():
    gt = harness.ground_truth(901, "retreat", 41, H, W)
    bench = memory.BENCH
    records, non_rev = memory.measure_clip(gt, {"on": gt.video, "off": 255 - gt.video}, bench)
    assert len(records) == len(gt.meta["revisit_pairs"]) > 0
    for r in records:
        assert r["on"]["psnr_gt"] == bench.psnr_cap_db and r["on"]["ssim_gt"] == pytest.approx(1.0)
        assert r["on"]["psnr_self"] == pytest.approx(r["gt_self_psnr"])  # the ceiling of self-consistency
        assert r["off"]["psnr_gt"] < bench.psnr_cap_db
    assert non_rev["on"]["psnr_gt"] == bench.psnr_cap_db
    assert non_rev["on"]["frames"] == 40 - len(records)


def test_distance_buckets():
    edges = (8, 24, 48)
    assert [memory.bucket_label(d, edges) for d in (3, 8, 23, 24, 47, 48, 500)] == \
        ["< 8", "8-23", "8-23", "24-47", "24-47", ">= 48", ">= 48"]
    assert memory.bucket_labels(edges) == ["8-23", "24-47", ">= 48"]


def test_cli_options_parse():
    from worldstream.cli import build_parser

    args = build_parser().parse_args(["bench", "memory", "--quick", "--world-seeds", "900,905", "--trajectory",
                                      "spin", "--frames", "57", "--threads", "1", "--json", "x.json"])
    assert args.quick and args.frames == 57 and harness.parse_seeds(args.world_seeds) == [900, 905]
    assert args.out == memory.DEFAULT_OUT and args.checkpoint is None and args.trajectory == "spin"
    assert np.isfinite(memory.BENCH.target_gain_db)
