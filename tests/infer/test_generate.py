"""`worldstream generate` end to end on nano (random init until the trained weights ship), 2 clips, 1 step."""

from __future__ import annotations

import hashlib
import json
import warnings

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from PIL import Image

from worldstream import cli
from worldstream.infer import generate_cmd, model_bundle
from worldstream.infer.model_bundle import RandomInitWarning, default_checkpoint

SCRIPT = "w*10 mouse:right*20"  # 30 rows -> 2 nano clips (25 + 16 = 41 frames)


def parse(*argv: str):
    return cli.build_parser().parse_args(["generate", *argv])


@pytest.fixture()
def shipped_root():
    """The repository root whose checkpoints/nano the default lookup finds (read before any redirect)."""
    return model_bundle.REPO_ROOT


@pytest.fixture(autouse=True)
def _no_trained_nano(monkeypatch, tmp_path, shipped_root):
    # these tests pin the random-init path: the default checkpoint is looked up under the working directory
    # and the repository, so both point at an empty tmp dir (test_generate_on_the_shipped_nano undoes it)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(model_bundle, "REPO_ROOT", tmp_path)
    assert default_checkpoint("nano") is None


def test_generate_on_the_shipped_nano(monkeypatch, shipped_root, tmp_path):
    monkeypatch.setattr(model_bundle, "REPO_ROOT", shipped_root)
    shipped = default_checkpoint("nano")
    assert shipped is not None, "checkpoints/nano is part of the repository"
    res = generate_cmd.run(parse("--actions", "w*8", "--world-seed", "905", "--out", str(tmp_path / "s.mp4")))
    r = res.record
    assert not r["random_init"] and r["num_frames"] == 25
    assert r["session"]["sampler"] == "few_step" and r["session"]["steps"] == 4  # from dit/meta.json
    assert res.frames.shape == (25, 96, 160, 3) and res.frames.std() > 5  # a picture, not a flat frame


def test_generate_writes_video_and_record_and_is_deterministic(tmp_path, capsys):
    out = tmp_path / "walk.mp4"
    argv = ("--actions", SCRIPT, "--steps", "1", "--seed", "3", "--out", str(out))
    assert cli.main(["generate", *argv]) == 0
    assert "random" in capsys.readouterr().out  # the random-init warning reaches the user
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["num_frames"] == 41 and record["random_init"] and record["fps"] == 16
    assert [c["frames"] for c in record["clips"]] == [[1, 25], [25, 41]]
    c0, c1 = record["clips"]
    assert c0["memory"] is None and len(c0["poses"]) == 24
    assert c1["memory"]["latents"][-1] == 1 and len(c1["memory"]["latents"]) == 4  # anchor last
    assert c1["memory"]["reference_frames"] == [40, 32, 24, 16]
    assert c1["poses"][-1][4] == pytest.approx(1.5 * 20)  # 20 frames of mouse:right -> 30 degrees of yaw
    video = np.stack([f for f in imageio.get_reader(out)])  # NOTE list() would trust its infinite len()
    assert video.shape[0] == 41 and video.shape[1] % 96 == 0  # upscaled for viewing, HUD drawn
    # same seed -> byte-identical decoded frames (the mp4 container is not compared), also when clip 1 is
    # sampled while clip 0 decodes in the worker process
    assert not record["session"]["async_decode"] and record["session"]["dit_threads"] == 1
    threads = torch.get_num_threads()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomInitWarning)
        again = generate_cmd.run(parse(*argv, "--async-decode"))
    assert again.record["session"]["async_decode"]
    assert again.frames.shape == (41, 96, 160, 3)
    assert hashlib.sha256(again.frames.tobytes()).hexdigest() == record["frames_sha256"]
    assert torch.get_num_threads() == threads  # restored


def test_generate_from_an_image_without_memory(tmp_path):
    path = tmp_path / "start.png"
    rgba = np.random.default_rng(0).integers(0, 256, (61, 45, 4), dtype=np.uint8)  # odd size, RGBA
    Image.fromarray(rgba, "RGBA").save(path)
    args = parse("--image", str(path), "--prompt", "a red cube", "--actions", "s*4", "--steps", "1",
                 "--no-memory", "--sampler", "euler", "--out", str(tmp_path / "x.mp4"))
    with pytest.warns(RandomInitWarning):
        result = generate_cmd.run(args)
    assert result.frames.shape == (25, 96, 160, 3)  # 4 rows round up to one whole first clip
    assert result.record["image"] == str(path) and result.record["prompt"] == "a red cube"
    assert result.record["session"]["use_memory"] is False and result.record["session"]["sampler"] == "euler"
    assert len(result.keyboard) == 25 and result.keyboard[:4, 1].all() and not result.keyboard[4:].any()


def test_generate_errors(tmp_path, capsys):
    assert cli.main(["generate", "--actions", "w*3 jump*2", "--out", str(tmp_path / "a.mp4")]) == 2
    assert "column 5" in capsys.readouterr().err
    assert cli.main(["generate", "--out", str(tmp_path / "a.gif")]) == 2
    assert ".mp4" in capsys.readouterr().err
    assert cli.main(["generate", "--image", str(tmp_path / "missing.png"), "--out", str(tmp_path / "b.mp4")]) == 2
    assert "not found" in capsys.readouterr().err
