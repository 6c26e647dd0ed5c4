"""`worldstream bench action` end to end: a nano bundle (random init unless a trained one ships), a tiny IDM,
one held-out world, 25 frames, 1 denoising step; and `--train-idm` on two tiny shard sets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from worldstream import cli
from worldstream.eval import idm
from worldstream.eval.benchmarks import action

TINY = idm.IDMConfig(height=96, width=160, window=4, downsample=4, channels=(8,), hidden=16, dropout=0.0)


def test_bench_runs_end_to_end_and_writes_reports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    idm.save_idm(tmp_path / "idm", idm.build_idm(TINY), {"val": None})
    out, js = tmp_path / "res" / "action.md", tmp_path / "res" / "action.json"
    argv = ["bench", "action", "--idm", str(tmp_path / "idm"), "--world-seeds", "900", "--trajectory", "bench",
            "--frames", "25", "--steps", "1", "--sampler", "euler", "--out", str(out), "--json", str(js)]
    assert cli.main(argv) == 0
    res = json.loads(js.read_text())
    assert res["world_seeds"] == [900] and res["frames"] == 25 and len(res["clips"]) == 1
    for video in ("gt", "generated", "frozen"):
        acc = res["pooled"][video]
        assert acc["n_frames"] == 25 - 3  # window 4: transitions 1..21 of 25 frames
        assert 0.0 <= acc["keyboard_exact"] <= 1.0 and 0.0 <= acc["mouse_direction"] <= 1.0
        assert sum(map(sum, acc["move_confusion"])) == 22
    r = res["ratio"]["keyboard_exact"]
    g = res["pooled"]
    assert r is None or r == pytest.approx(g["generated"]["keyboard_exact"] / g["gt"]["keyboard_exact"])
    md = out.read_text()
    assert "| keyboard_exact |" in md and "frozen" in md and "![action](action.png)" in md
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_refuses_bad_input(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    from worldstream.eval.harness import training_world_seeds

    train_seed = sorted(training_world_seeds())[0]
    base = ["bench", "action", "--out", str(tmp_path / "a.md")]
    assert cli.main([*base, "--idm", str(tmp_path / "none")]) == 2
    assert "IDM checkpoint folder not found" in capsys.readouterr().err
    idm.save_idm(tmp_path / "idm", idm.build_idm(TINY))
    assert cli.main([*base, "--idm", str(tmp_path / "idm"), "--world-seeds", str(train_seed)]) == 2
    assert "training worlds" in capsys.readouterr().err
    small = idm.IDMConfig(height=48, width=80, downsample=2, channels=(8,), hidden=16)
    idm.save_idm(tmp_path / "small", idm.build_idm(small))
    assert cli.main([*base, "--idm", str(tmp_path / "small"), "--world-seeds", "900", "--frames", "25",
                     "--sampler", "unipc", "--steps", "1"]) == 2
    assert "reads 48x80 frames" in capsys.readouterr().err


def _shards(root, world_seeds, clip_seeds, frames=12):
    from worldstream.data.engine import EngineConfig, render_clip
    from worldstream.data.shards import ShardInfo, record_shard, shard_name, write_shard

    cfg = EngineConfig(num_frames=frames, trajectories=("explore",), trajectory_weights=(1.0,))
    root.mkdir()
    clips = [render_clip(w, c, cfg) for w in world_seeds for c in clip_seeds]
    info: ShardInfo = write_shard(root / shard_name(0), clips)
    record_shard(root, shard_name(0), info, {"clips_per_world": len(clip_seeds)})
    return clips


def test_train_idm_command_saves_a_loadable_checkpoint(tmp_path):
    _shards(tmp_path / "train", [5, 6], [1, 2])
    _shards(tmp_path / "val", [907], [1])
    argv = ["bench", "action", "--train-idm", "--train-data", str(tmp_path / "train"), "--val-data",
            str(tmp_path / "val"), "--idm-out", str(tmp_path / "idm"), "--train-steps", "4", "--train-clips", "3",
            "--json", str(tmp_path / "train.json")]
    cfg = action.ActionBenchConfig(idm=TINY)  # the tiny net through the real command path
    assert action.train(cli.build_parser().parse_args(argv), cfg) == 0
    model, meta = idm.load_idm(tmp_path / "idm")
    assert model.cfg == TINY and meta["train_clips"] == 3 and meta["val_clips"] == 1
    assert meta["val"]["n_frames"] == 12 - 3 and json.loads((tmp_path / "train.json").read_text())["steps"] == 4
    assert np.isfinite(meta["loss_last"])
    # validation worlds must not be training worlds
    argv[argv.index("--val-data") + 1] = str(tmp_path / "train")
    with pytest.raises(ValueError, match="held-out worlds"):
        action.train(cli.build_parser().parse_args(argv), cfg)
