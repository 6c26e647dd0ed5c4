"""VAE: golden conformance, streaming == one-shot, cache, LightVAE pruning, official .pth loading, nano."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from worldstream.model.vae import (
    MG3_WAN22,
    NANO,
    VAE,
    DecodeCache,
    LightVAE,
    VAEConfig,
    load_official_vae,
    preset,
    prune_decoder,
)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
GOLDEN = ASSETS / "golden"
MANIFESTS = ASSETS / "manifests"
TOL = 1e-5  # golden README section 3


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope="module")
def golden():
    meta = json.loads((GOLDEN / "vae_tiny_config.json").read_text())
    cfg = VAEConfig.from_official(meta["constructor_kwargs"])
    vae = VAE(cfg).eval()
    vae.load_state_dict({k: v.float() for k, v in load_file(GOLDEN / "vae_tiny_weights.safetensors").items()})
    io = load_file(GOLDEN / "vae_tiny_io.safetensors")
    return meta, vae, io


def random_vae(cfg: VAEConfig, seed: int = 0) -> VAE:
    """A VAE with every weight random (incl. the zero-initialised attention proj), gains near 1."""
    torch.manual_seed(seed)
    vae = VAE(cfg)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith("weight"):
                p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)
            else:
                p.copy_(0.05 * torch.randn_like(p))
    return vae.eval()


TINY = VAEConfig(
    dim=4, dec_dim=6, z_dim=8, dim_mult=(1, 2, 2), temporal_downsample=(True, True)
)  # stride 4x8x8


# ---------------------------------------------------------------------------------------------------
# golden


def test_golden_encode_decode(golden):
    _, vae, io = golden
    with torch.no_grad():
        assert maxdiff(vae.encode(io["video"].float(), normalise=False), io["encode_mean_raw"]) <= TOL
        assert maxdiff(vae.encode(io["video"].float()), io["encode_mean_normalised"]) <= TOL
        assert maxdiff(vae.decode(io["encode_mean_normalised"], segment_size=1), io["decode_full"]) <= TOL
        assert maxdiff(vae.decode(io["encode_mean_normalised"], segment_size=4), io["decode_full"]) <= TOL


def test_golden_stream_two_calls(golden):
    meta, vae, io = golden
    spec, lat = meta["stream_decode"], io["stream_latents"].float()
    cache = vae.new_decode_cache()
    assert len(cache) == 32  # official: 34 causal convs in the decoder, 2 are 1x1x1 shortcuts
    with torch.no_grad():
        out1 = vae.stream_decode(lat[:, :, 0:3], cache, first_chunk=True, segment_size=spec["segment_size"])
        out2 = vae.stream_decode(lat[:, :, 3:5], cache, first_chunk=False, segment_size=spec["segment_size"])
    assert maxdiff(out1, io["stream_out_call1"]) <= TOL
    assert maxdiff(out2, io["stream_out_call2"]) <= TOL
    assert [list(s) for s in cache.shapes()] == spec["cache_slot_shapes_after_call2"]


def test_golden_lightvae(golden):
    meta, vae, io = golden
    student = VAE(dataclasses.replace(vae.cfg, pruning_rate=meta["lightvae"]["pruning_rate"])).eval()
    assert student.cfg.enc_width == meta["lightvae"]["effective_dim"]
    assert student.cfg.dec_width == meta["lightvae"]["effective_dec_dim"]
    res = student.load_state_dict(
        {k: v.float() for k, v in load_file(GOLDEN / "vae_tiny_lightvae_p050_weights.safetensors").items()},
        strict=False,
    )
    assert not res.unexpected_keys and all(k.startswith(("encoder.", "conv1.")) for k in res.missing_keys)
    light = LightVAE(vae, student)
    with torch.no_grad():
        assert maxdiff(light.decode(io["encode_mean_normalised"]), io["light_decode_full"]) <= TOL
        assert maxdiff(light.encode(io["video"].float()), io["encode_mean_normalised"]) <= TOL
    with pytest.raises(RuntimeError, match="pruned"):
        student.encode(io["video"].float())


def test_conformance_groups_pass():
    from worldstream.conformance import run

    results = run(GOLDEN, ["vae"]) + run(MANIFESTS, ["manifest_vae"])
    assert len(results) >= 10 + 3
    assert all(r.passed for r in results), [r for r in results if not r.passed]


# ---------------------------------------------------------------------------------------------------
# structure: presets vs manifests


@pytest.mark.parametrize(
    "name, manifest, dec_params",
    [
        ("mg3_wan22", "mg3_wan22_vae_state_dict.json", 555_049_228),
        ("mg3_lightvae_p050", "mg3_lightvae_p050_state_dict.json", 139_128_972),
        ("mg3_lightvae_v2_p075", "mg3_lightvae_v2_p075_state_dict.json", 34_965_580),
    ],
)
def test_presets_match_manifests(name, manifest, dec_params):
    want = json.loads((MANIFESTS / manifest).read_text())
    with torch.device("meta"):
        vae = VAE(preset(name))
    got = {k: list(v.shape) for k, v in vae.state_dict().items()}
    assert list(got) == list(want) and got == want
    assert sum(p.numel() for p in vae.decoder.parameters()) == dec_params  # facts 6.1 / 6.2
    assert len(vae.new_decode_cache()) == 32
    assert vae.cfg.stride == (4, 16, 16)


# ---------------------------------------------------------------------------------------------------
# streaming


def test_stream_equals_one_shot_decode():
    vae = random_vae(TINY)
    z = torch.randn(1, TINY.z_dim, 6, 3, 4)
    with torch.no_grad():
        full = vae.decode(z, segment_size=1)
        cache = vae.new_decode_cache()
        parts = [
            vae.stream_decode(z[:, :, :2], cache, first_chunk=True, segment_size=1),
            vae.stream_decode(z[:, :, 2:5], cache, first_chunk=False, segment_size=2),
            vae.stream_decode(z[:, :, 5:], cache, first_chunk=False, segment_size=4),
        ]
    assert [p.shape[2] for p in parts] == [4 * 2 - 3, 4 * 3, 4 * 1]
    assert full.shape == (1, 3, 4 * 6 - 3, 24, 32)
    assert maxdiff(torch.cat(parts, 2), full) <= 1e-5
    # the cache matters: the same latents without history decode differently
    with torch.no_grad():
        fresh = vae.stream_decode(z[:, :, 5:], vae.new_decode_cache(), first_chunk=False)
    assert maxdiff(fresh, parts[2]) > 1e-3


def test_cache_reset_and_misuse():
    vae = random_vae(TINY)
    z = torch.randn(1, TINY.z_dim, 3, 2, 2)
    cache = vae.new_decode_cache()
    with torch.no_grad():
        a = vae.stream_decode(z, cache, first_chunk=True)
        assert not cache.empty
        with pytest.raises(ValueError, match="reset"):
            vae.stream_decode(z, cache, first_chunk=True)
        with pytest.raises(ValueError, match="batch"):
            vae.stream_decode(z.repeat(2, 1, 1, 1, 1), cache, first_chunk=False)
        cache.reset()
        assert cache.empty
        b = vae.stream_decode(z, cache, first_chunk=True)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="DecodeCache"):
        vae.stream_decode(z, DecodeCache(3), first_chunk=True)


def test_stream_encode_equals_encode():
    vae = random_vae(TINY)
    video = torch.rand(1, 3, 13, 16, 24) * 2 - 1
    with torch.no_grad():
        full = vae.encode(video)
        one_pass = vae.encode(video, chunk_latents=None)
        cache = vae.new_encode_cache()
        parts = [
            vae.stream_encode(video[:, :, :5], cache, first_chunk=True),
            vae.stream_encode(video[:, :, 5:13], cache, first_chunk=False),
        ]
    assert full.shape == (1, TINY.z_dim, 4, 2, 3)
    assert maxdiff(one_pass, full) <= 1e-5
    assert maxdiff(torch.cat(parts, 2), full) <= 1e-5


def test_bad_shapes_name_the_tensor():
    vae = random_vae(TINY)
    with pytest.raises(ValueError, match="video"):
        vae.encode(torch.zeros(1, 4, 5, 16, 16))  # 4 channels
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        vae.encode(torch.zeros(1, 3, 8, 16, 16))
    with pytest.raises(ValueError, match="multiples of the spatial stride 8"):
        vae.encode(torch.zeros(1, 3, 5, 20, 16))
    with pytest.raises(ValueError, match="z must be"):
        vae.decode(torch.zeros(1, TINY.z_dim + 1, 2, 2, 2))
    with pytest.raises(ValueError, match="z must be"):
        vae.decode(torch.zeros(TINY.z_dim, 2, 2, 2))


@pytest.mark.parametrize(
    "in_dim, out_dim, ft, fs", [(8, 8, 2, 2), (8, 4, 2, 2), (8, 4, 1, 2), (16, 4, 2, 2), (8, 3, 2, 2)]
)
def test_dupup3d_matches_official_two_steps(in_dim, out_dim, ft, fs):
    from einops import rearrange

    from worldstream.model.vae import DupUp3D

    x = torch.randn(2, in_dim, 3, 4, 5)
    reps = out_dim * ft * fs * fs // in_dim
    ref = rearrange(
        x.repeat_interleave(reps, dim=1), "b (c i j k) t h w -> b c (t i) (h j) (w k)", i=ft, j=fs, k=fs
    )
    layer = DupUp3D(in_dim, out_dim, ft, fs)
    assert torch.equal(layer(x), ref)
    assert torch.equal(layer(x, first_chunk=True), ref[:, :, ft - 1 :])
    assert torch.equal(layer(x.contiguous(memory_format=torch.channels_last_3d)), ref)


# ---------------------------------------------------------------------------------------------------
# LightVAE pruning


@pytest.mark.parametrize("rate", [0.5, 0.75])
def test_prune_decoder_shapes(rate):
    cfg = dataclasses.replace(TINY, dim=8, dec_dim=8)
    vae = random_vae(cfg)
    student = prune_decoder(vae, rate)
    ref = VAE(dataclasses.replace(cfg, pruning_rate=rate))
    assert {k: v.shape for k, v in student.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }
    assert torch.equal(student.conv2.weight, vae.conv2.weight)
    z = torch.randn(1, cfg.z_dim, 2, 2, 2)
    with torch.no_grad():
        out = LightVAE(vae, student).decode(z)
    assert out.shape == (1, 3, 5, 16, 16) and torch.isfinite(out).all()


def test_prune_keeps_important_channels_and_is_exact_at_zero():
    cfg = dataclasses.replace(TINY, dim=8, dec_dim=8)
    vae = random_vae(cfg)
    z = torch.randn(1, cfg.z_dim, 2, 2, 2)
    with torch.no_grad():
        assert maxdiff(prune_decoder(vae, 0.0).decode(z), vae.decode(z)) == 0.0
        # make channel 5 of the last level's inner stream dominant: it must survive p = 0.75 (8 -> 2)
        res = vae.decoder.upsamples[-1].upsamples[1].residual
        res[2].weight[5] *= 50
        student = prune_decoder(vae, 0.75)
        kept = student.decoder.upsamples[-1].upsamples[1].residual[2]
        assert kept.bias.shape == (2,) and res[2].bias[5] in kept.bias  # output channel 5 survived


# ---------------------------------------------------------------------------------------------------
# official .pth loading

_RESNET_TO_DIFFUSERS = {
    "residual.0": "norm1",
    "residual.2": "conv1",
    "residual.3": "norm2",
    "residual.6": "conv2",
    "shortcut": "conv_shortcut",
}


def to_diffusers_name(key: str) -> str:
    """Official Wan name -> diffusers-style name (inverse of facts 6.2, written independently of vae.py)."""
    key = re.sub(r"^conv1\.", "quant_conv.", key)
    key = re.sub(r"^conv2\.", "post_quant_conv.", key)
    key = re.sub(r"^(encoder|decoder)\.conv1\.", r"\1.conv_in.", key)
    key = re.sub(r"^(encoder|decoder)\.head\.0\.", r"\1.norm_out.", key)
    key = re.sub(r"^(encoder|decoder)\.head\.2\.", r"\1.conv_out.", key)
    resnet = None
    for pat, rep in [
        (r"^(\w+)\.middle\.0\.", r"\1.mid_block.resnets.0."),
        (r"^(\w+)\.middle\.1\.", r"\1.mid_block.attentions.0."),
        (r"^(\w+)\.middle\.2\.", r"\1.mid_block.resnets.1."),
        (r"^encoder\.downsamples\.(\d+)\.downsamples\.2\.", r"encoder.down_blocks.\1.downsampler."),
        (r"^encoder\.downsamples\.(\d+)\.downsamples\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2."),
        (r"^decoder\.upsamples\.(\d+)\.upsamples\.3\.", r"decoder.up_blocks.\1.upsampler."),
        (r"^decoder\.upsamples\.(\d+)\.upsamples\.(\d+)\.", r"decoder.up_blocks.\1.resnets.\2."),
    ]:
        new = re.sub(pat, rep, key)
        if new != key:
            key, resnet = new, "resnets" in rep
            break
    if resnet:
        for ours, theirs in _RESNET_TO_DIFFUSERS.items():
            key = key.replace(f".{ours}.", f".{theirs}.")
    return key


@pytest.fixture(scope="module")
def golden_state():
    return {k: v.float() for k, v in load_file(GOLDEN / "vae_tiny_weights.safetensors").items()}


@pytest.fixture(scope="module")
def golden_cfg():
    return VAEConfig.from_official(
        json.loads((GOLDEN / "vae_tiny_config.json").read_text())["constructor_kwargs"]
    )


def test_load_pth_official_and_diffusers_names(tmp_path, golden_state, golden_cfg, golden):
    _, ref, io = golden
    diff_state = {to_diffusers_name(k): v for k, v in golden_state.items()}
    assert "decoder.up_blocks.0.resnets.1.conv_shortcut.weight" not in diff_state  # sanity of the helper
    assert "decoder.up_blocks.2.resnets.0.conv_shortcut.weight" in diff_state
    assert "encoder.down_blocks.1.downsampler.time_conv.weight" in diff_state
    assert "quant_conv.weight" in diff_state and "decoder.mid_block.attentions.0.to_qkv.weight" in diff_state
    variants = {
        "official.pth": golden_state,
        "wrapped.pth": {"generator": golden_state, "step": torch.tensor(3)},
        "diffusers.pth": {
            "state_dict": {**diff_state, "dynamic_feature_projection_heads.0.weight": torch.zeros(2)}
        },
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
        vae = load_official_vae(tmp_path / name, golden_cfg)
        for k, v in ref.state_dict().items():
            assert torch.equal(vae.state_dict()[k], v), (name, k)
    with torch.no_grad():
        assert maxdiff(vae.eval().decode(io["encode_mean_normalised"]), io["decode_full"]) <= TOL


def test_load_pth_errors(tmp_path, golden_state, golden_cfg):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_official_vae(tmp_path / "nope.pth", golden_cfg)
    good = tmp_path / "good.pth"
    torch.save(golden_state, good)
    data = good.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.pth"):
        load_official_vae(tmp_path / "cut.pth", golden_cfg)
    wrong = dataclasses.replace(golden_cfg, dec_dim=8)
    with pytest.raises(ValueError, match=r"good.pth.*shape mismatches: decoder\.conv1\.weight"):
        load_official_vae(good, wrong)
    partial = {k: v for k, v in golden_state.items() if k != "decoder.head.2.bias"}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"1 missing keys: decoder\.head\.2\.bias"):
        load_official_vae(tmp_path / "partial.pth", golden_cfg)


def test_load_lightvae_pth_without_encoder(tmp_path, golden_cfg, golden):
    _, teacher, io = golden
    light_state = load_file(GOLDEN / "vae_tiny_lightvae_p050_weights.safetensors")
    torch.save({"gen_model": light_state}, tmp_path / "light.pth")
    student = load_official_vae(tmp_path / "light.pth", dataclasses.replace(golden_cfg, pruning_rate=0.5))
    with torch.no_grad():
        out = LightVAE(teacher, student.eval()).decode(io["encode_mean_normalised"])
    assert maxdiff(out, io["light_decode_full"]) <= TOL
    # the pair from two official files
    torch.save(load_file(GOLDEN / "vae_tiny_weights.safetensors"), tmp_path / "wan.pth")
    pair = LightVAE.from_official(tmp_path / "wan.pth", tmp_path / "light.pth", student.cfg).eval()
    with torch.no_grad():
        assert maxdiff(pair.encode(io["video"].float()), io["encode_mean_normalised"]) <= TOL
        assert maxdiff(pair.decode(io["encode_mean_normalised"]), io["light_decode_full"]) <= TOL
    with pytest.raises(ValueError, match="light.pth does not fit"):  # the tiny files are not the 5B layout
        LightVAE.from_official(tmp_path / "wan.pth", tmp_path / "light.pth", "mg3_lightvae_p050")


# ---------------------------------------------------------------------------------------------------
# nano and config


def test_nano_forward_backward():
    assert NANO.stride == (4, 8, 8) and NANO.z_dim == 16
    torch.manual_seed(0)
    vae = VAE(NANO).train()
    video = torch.rand(1, 3, 5, 16, 24) * 2 - 1
    recon, mu, logvar = vae(video)
    assert recon.shape == video.shape and mu.shape == (1, 16, 2, 2, 3)
    loss = (recon - video).pow(2).mean() + 1e-3 * (mu.pow(2) + logvar.exp() - 1 - logvar).mean()
    loss.backward()
    grads = {n: p.grad for n, p in vae.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["decoder.middle.1.proj.weight"].abs().sum() > 0
    assert grads["encoder.conv1.weight"].abs().sum() > 0


def test_nano_bf16_stream_shapes():
    vae = VAE(NANO).eval().to(torch.bfloat16).to_channels_last()
    cache = vae.new_decode_cache()
    with torch.no_grad():
        first = vae.stream_decode(torch.randn(1, 16, 1, 2, 3), cache, first_chunk=True)
        later = vae.stream_decode(torch.randn(1, 16, 4, 2, 3), cache, first_chunk=False)
    assert first.shape == (1, 3, 1, 16, 24) and later.shape == (1, 3, 16, 16, 24)
    assert first.dtype == torch.float32 and later.abs().max() <= 1


def test_config_roundtrip_and_latent_stats():
    cfg = dataclasses.replace(NANO, pruning_rate=0.5)
    assert VAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert MG3_WAN22.dec_dims == (1024, 1024, 1024, 512, 256) and MG3_WAN22.enc_dims == (
        160,
        160,
        320,
        640,
        640,
    )
    mu = torch.randn(50, 16, 3, 2, 2) * 2 + 0.5
    stats = NANO.with_latent_stats(mu)
    vae = VAE(stats)
    z = vae.normalise(mu)
    assert abs(z.mean().item()) < 1e-5 and abs(z.transpose(0, 1).flatten(1).std(1) - 1).max() < 1e-4
    assert maxdiff(vae.denormalise(z), mu) < 1e-5
    with pytest.raises(ValueError, match="temporal_downsample"):
        VAEConfig(dim_mult=(1, 2, 4), temporal_downsample=(True, True, True))
    with pytest.raises(KeyError, match="unknown VAE preset"):
        preset("huge")


def test_forward_modes_train_and_decode_only():
    vae = random_vae(TINY).train()
    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    recon, mu, _ = vae(video, sample=False)
    torch.testing.assert_close(vae(z=mu), recon, rtol=0, atol=0)  # the decoder half of the video pass
    assert torch.equal(vae(z=mu), vae.decode_raw(mu)) and recon.shape == video.shape
    # decode-only is the unclamped, un-normalised counterpart of decode(): equal where decode() is inside (-1, 1)
    with torch.no_grad():
        shown = vae.decode(vae.normalise(mu), segment_size=mu.shape[2])
    inside = shown.abs() < 1
    assert maxdiff(shown[inside], vae(z=mu).detach()[inside]) < 1e-5
    with pytest.raises(ValueError, match="either a video"):
        vae(video, z=mu)
    with pytest.raises(ValueError, match="either a video"):
        vae()
    with pytest.raises(ValueError, match=r"z must be \[B, z_dim, T, h, w\]"):
        vae(z=torch.zeros(1, 3, 2, 2, 2))


def test_save_load_folder_and_the_flat_layout(tmp_path):
    from safetensors.torch import save_file

    from worldstream.checkpoint import load_config_json, load_meta

    cfg = TINY.with_latent_stats(torch.randn(4, TINY.z_dim, 3, 2, 2))
    vae = random_vae(cfg).to(torch.bfloat16)
    vae.save(tmp_path / "vae", preset="tiny", meta={"source": "test"})
    assert load_config_json(tmp_path / "vae")["type"] == "worldstream.model.vae.VAEConfig"
    assert load_meta(tmp_path / "vae")["source"] == "test"
    back = VAE.load(tmp_path / "vae")
    assert back.cfg == cfg and not back.training and back.dtype == torch.float32  # stored float32
    for k, v in vae.state_dict().items():
        assert torch.equal(back.state_dict()[k], v.float()), k
    assert VAE.load(tmp_path / "vae", dtype=torch.bfloat16).dtype == torch.bfloat16
    # the flat layout the first latent caches wrote (config.json = VAEConfig fields) still loads
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "config.json").write_text(json.dumps(cfg.to_dict()))
    save_file({k: v.float().contiguous() for k, v in vae.state_dict().items()}, flat / "model.safetensors")
    old = VAE.load(flat)
    assert old.cfg == cfg and all(torch.equal(old.state_dict()[k], v) for k, v in back.state_dict().items())
    # clear errors: other weights, another config type, no folder
    (flat / "config.json").write_text(json.dumps(dataclasses.replace(cfg, dec_dim=8).to_dict()))
    with pytest.raises(ValueError, match="has shape"):
        VAE.load(flat)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"type": "worldstream.x.Y", "config": {}}))
    with pytest.raises(ValueError, match="expected worldstream.model.vae.VAEConfig"):
        VAE.load(tmp_path / "other")
    with pytest.raises(NotADirectoryError):
        VAE.load(tmp_path / "missing")


def test_bench_vae_small():
    from worldstream.eval.benchmarks.model import bench_vae, vae_markdown

    res = bench_vae("nano", height=16, width=24, frames=4, rates=(0.5,), dtypes=("bf16",), repeats=1)
    assert [r["model"] for r in res["rows"]] == ["full", "lightvae_p050"]
    assert res["rows"][1]["decoder_params"] < res["rows"][0]["decoder_params"] / 3
    md = vae_markdown(res)
    assert "| lightvae_p050 | bf16 |" in md and "Target: p=0.5" in md
    with pytest.raises(ValueError, match="multiple of 4"):
        bench_vae("nano", frames=6)
