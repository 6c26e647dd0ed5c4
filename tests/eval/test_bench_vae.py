"""`worldstream bench vae` on a tiny random-init VAE + pruned LightVAE decoders saved like checkpoints/nano."""

import json
import math

import numpy as np
import pytest
import torch

from worldstream.checkpoint import save_checkpoint
from worldstream.cli import main as cli_main
from worldstream.eval.benchmarks.common import psnr
from worldstream.eval.benchmarks.vae import (
    FULL,
    Decoder,
    HeldOutClip,
    VAEBenchConfig,
    evaluate_clip,
    load_clips,
    load_decoders,
    prepare,
)
from worldstream.model.vae import VAE, VAEConfig, prune_decoder

TINY = VAEConfig(dim=4, dec_dim=8, z_dim=8, dim_mult=(1, 2, 2), temporal_downsample=(True, True))
H, W, F = 32, 48, 9  # multiples of the spatial stride 8; 1 + 4 * 2 frames


@pytest.fixture(scope="module")
def tiny_vae() -> VAE:
    torch.manual_seed(0)
    return VAE(TINY).init_weights().eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_vae):
    """checkpoints/nano layout (vae/ + lightvae/ p=0.5) and a nano_lightvae-style run with a p=0.75 student."""
    root = tmp_path_factory.mktemp("bench_vae")
    save_checkpoint(root / "nano" / "vae", tiny_vae, tiny_vae.cfg)
    light = prune_decoder(tiny_vae, 0.5)
    save_checkpoint(root / "nano" / "lightvae", light, light.cfg)
    from safetensors.torch import save_file

    step = root / "run_p075" / "ckpt" / "step_000001"
    step.mkdir(parents=True)
    (step / "meta.json").write_text(json.dumps({"step": 1}))
    (step / "config.json").write_text(json.dumps({"model": {"pruning_rate": 0.75}}))
    save_file({k: v.contiguous() for k, v in prune_decoder(tiny_vae, 0.75).state_dict().items()},
              str(step / "student_ema.safetensors"))
    (root / "run_p075" / "ckpt" / "latest").write_text("step_000001\n")
    return root


def test_cli_end_to_end_rendered_clips(ckpt, tmp_path, capsys):
    md, js = tmp_path / "vae.md", tmp_path / "vae.json"
    rc = cli_main(["bench", "vae", "--checkpoint", str(ckpt / "nano"), "--extra-lightvae", str(ckpt / "run_p075"),
                   "--data", str(tmp_path / "absent"), "--world-seeds", "900", "--size", f"{H}x{W}",
                   "--clips", "1", "--frames", str(F), "--repeats", "1", "--out", str(md), "--json", str(js)])
    assert rc == 0
    res = json.loads(js.read_text())
    assert "rendered" in res["data"] and res["clips"][0]["world_seed"] == 900
    s = res["summary"]["decoders"]
    assert [d["name"] for d in res["decoders"]] == [FULL, "LightVAE p=0.5", "LightVAE p=0.75"]
    assert set(s) == {FULL, "LightVAE p=0.5", "LightVAE p=0.75"}
    for name, v in s.items():
        assert 0 < v["psnr_db"] < 60 and -1 <= v["ssim"] <= 1, name
        assert v["decode_ms_per_step"] > 0 and v["speedup_vs_full"] > 0
        assert len(res["clips"][0]["decoders"][name]["psnr_per_frame"]) == F
    assert s[FULL]["speedup_vs_full"] == 1.0
    assert s["LightVAE p=0.75"]["decoder_params"] < s["LightVAE p=0.5"]["decoder_params"] < s[FULL]["decoder_params"]
    assert res["summary"]["encode_ms_clip"] > 0 and "cpu" in res["machine"]
    text = md.read_text()
    assert "| decoder | pruning p |" in text and "| LightVAE p=0.75 | 0.75 |" in text and "## Per clip" in text
    assert (tmp_path / "vae.png").read_bytes()[:4] == b"\x89PNG"


def test_quality_numbers_behave(tiny_vae):
    """A decoder that outputs mid-grey: exact PSNR (inf on a mid-grey video, the hand formula on noise);
    the random-init full VAE: a flat video reconstructs better than noise; streamed == whole-video decode."""
    cfg = VAEBenchConfig(frames=F, repeats=1, dtype="float32")
    grey = VAE(TINY)
    grey.load_state_dict(tiny_vae.state_dict())
    with torch.no_grad():
        for name, p in grey.named_parameters():
            if name.startswith(("decoder.", "conv2.")):
                p.zero_()  # decoder output 0 -> (0 + 1) * 127.5 -> uint8 128 everywhere
    full = prepare(tiny_vae, torch.float32)
    decoders = [Decoder(FULL, full, 0.0, "tiny"), Decoder("grey", prepare(grey, torch.float32), 0.0, "zeroed")]
    rng = np.random.default_rng(0)
    flat = HeldOutClip("flat", None, np.full((F, H, W, 3), 128, np.uint8))
    noise = HeldOutClip("noise", None, rng.integers(0, 256, (F, H, W, 3), dtype=np.uint8))
    r_flat = evaluate_clip(full, decoders, flat, cfg)["decoders"]
    r_noise = evaluate_clip(full, decoders, noise, cfg)["decoders"]
    assert math.isinf(r_flat["grey"]["psnr_db"]) and r_flat["grey"]["ssim"] == 1.0
    mse = ((noise.video.astype(np.float64) - 128.0) ** 2).mean(axis=(1, 2, 3))
    assert np.allclose(r_noise["grey"]["psnr_per_frame"], 10 * np.log10(255.0**2 / mse), atol=1e-9)
    assert r_flat[FULL]["psnr_db"] > r_noise[FULL]["psnr_db"] + 3
    assert r_noise[FULL]["psnr_db"] < 12  # uniform noise is not reconstructable: ~ variance bound 10.8 dB
    # the bench's streaming decode (latent 0 alone, then chunks) equals decoding the whole video at once
    from worldstream.infer.session import frames_to_uint8

    with torch.inference_mode():
        x = torch.from_numpy(noise.video).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]
        whole = frames_to_uint8(full.decode(full.encode(x)))
    assert np.allclose(r_noise[FULL]["psnr_per_frame"], psnr(noise.video, whole), atol=0.05)


def test_shard_data_one_clip_per_world_first(tmp_path):
    from dataclasses import replace

    from worldstream.data.engine import EngineConfig, render_clip
    from worldstream.data.shards import write_shard

    ecfg = replace(EngineConfig(), height=H, width=W, num_frames=F)
    clips = [render_clip(901, 0, ecfg), render_clip(901, 1, ecfg), render_clip(902, 0, ecfg)]
    for i, c in enumerate(clips):
        c.key = f"c{i}"
    (tmp_path / "data").mkdir()
    write_shard(tmp_path / "data" / "shard-000000.tar", clips)
    got, source = load_clips(VAEBenchConfig(data=str(tmp_path / "data"), clips=2, frames=5))
    assert [c.world_seed for c in got] == [901, 902] and got[0].video.shape == (5, H, W, 3)
    assert str(tmp_path / "data") in source
    with pytest.raises(ValueError, match="fewer than --frames 13"):
        load_clips(VAEBenchConfig(data=str(tmp_path / "data"), clips=1, frames=13))


def test_bad_inputs(ckpt, tmp_path, capsys):
    rc = cli_main(["bench", "vae", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "x.md")])
    assert rc == 2 and "nope: folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    rc = cli_main(["bench", "vae", "--checkpoint", str(tmp_path / "empty"), "--out", str(tmp_path / "x.md")])
    assert rc == 2 and "no vae/ checkpoint" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="--extra-lightvae .*missing"):
        load_decoders(ckpt / "nano", [str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        VAEBenchConfig(frames=8)
    assert not (tmp_path / "x.md").exists()
