"""What a checkpoint suggests and what `generate` / `play` default to: sampler from dit/meta.json, INT8 compute,
LightVAE availability, DiT threads and async decode."""

from __future__ import annotations

import dataclasses
import json

import pytest

from worldstream import cli
from worldstream.infer.config import DEFAULT_CPU_DIT_THREADS, NANO, available_cores, with_cpu_threads
from worldstream.infer.model_bundle import has_light_vae, load_bundle, suggest_session_config
from worldstream.model.dit import ActionConfig, DiTConfig, WorldDiT
from worldstream.model.quant import Int8Linear
from worldstream.model.vae import VAE, VAEConfig, prune_decoder

TINY_VAE = VAEConfig(dim=4, dec_dim=6, z_dim=8, dim_mult=(1, 2, 2), temporal_downsample=(True, True))
TINY_ACTION = ActionConfig(blocks=(0,), heads_num=1, hidden_size=8, img_hidden_size=32, keyboard_hidden_dim=64,
                           mouse_hidden_dim=64)
TINY_DIT = DiTConfig(in_dim=8, out_dim=8, dim=32, ffn_dim=64, num_heads=2, num_layers=2, text_dim=8, text_len=4,
                     action=TINY_ACTION, camera_block=8, sigma_theta=0.8)


def meta_only(folder, **meta):
    """A folder whose dit/meta.json says `meta` (all `suggest_session_config` reads)."""
    (folder / "dit").mkdir(parents=True)
    (folder / "dit" / "meta.json").write_text(json.dumps(meta))
    return folder


def test_suggested_sampler_follows_the_dit_meta(tmp_path):
    student = suggest_session_config(meta_only(tmp_path / "dmd", sampler="few_step", step=520))
    assert (student.sampler, student.steps) == ("few_step", 4)
    assert dataclasses.replace(student, sampler="unipc", steps=3) == NANO  # only the sampler changed
    assert suggest_session_config(meta_only(tmp_path / "base", sampler="unipc")) == NANO
    assert suggest_session_config(meta_only(tmp_path / "old", step=3)) == NANO  # no key: the preset's
    with pytest.raises(ValueError, match="meta.json names sampler 'ddim'"):
        suggest_session_config(meta_only(tmp_path / "bad", sampler="ddim"))
    with pytest.raises(NotADirectoryError):
        suggest_session_config(tmp_path / "missing")


def test_bundle_carries_meta_and_int8_compute(tmp_path):
    from worldstream.checkpoint import save_checkpoint

    dit, vae = WorldDiT(TINY_DIT), VAE(TINY_VAE).init_weights()
    save_checkpoint(tmp_path / "dit", dit, dit.cfg, meta={"sampler": "few_step"})
    save_checkpoint(tmp_path / "vae", vae, vae.cfg)
    assert not has_light_vae(tmp_path)
    b = load_bundle(tmp_path, text=False, int8=True)
    assert b.meta["sampler"] == "few_step" and b.session_config().sampler == "few_step"
    layers = [m for m in b.dit.modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 8 * TINY_DIT.num_layers and {m.compute for m in layers} == {"dequant"}  # CPU: auto
    b8 = load_bundle(tmp_path, text=False, int8=True, int8_compute="int8")
    assert {m.compute for m in b8.dit.modules() if isinstance(m, Int8Linear)} == {"int8"}
    light = prune_decoder(vae, 0.5)
    save_checkpoint(tmp_path / "lightvae", light, light.cfg)
    assert has_light_vae(tmp_path)


def test_cpu_threads():
    sync = with_cpu_threads(NANO)
    assert sync.dit_threads == DEFAULT_CPU_DIT_THREADS == 1 and sync.decode_threads is None
    both = with_cpu_threads(NANO.replace(async_decode=True), 1)
    assert (both.dit_threads, both.decode_threads) == (1, max(1, available_cores() - 1))
    assert with_cpu_threads(NANO.replace(async_decode=True), 64).decode_threads == 1
    with pytest.raises(ValueError, match="threads"):
        with_cpu_threads(NANO, 0)
    with pytest.raises(ValueError, match="int8_compute"):
        NANO.replace(int8_compute="fast")


def test_generate_and_play_defaults(tmp_path):
    from worldstream.infer.generate_cmd import session_config
    from worldstream.serve.play_cmd import describe, play_session_config

    parse = cli.build_parser().parse_args
    dmd = meta_only(tmp_path / "dmd", sampler="few_step")
    cfg = session_config(parse(["generate", "--checkpoint", str(dmd)]))
    assert (cfg.sampler, cfg.steps, cfg.int8, cfg.async_decode, cfg.dit_threads) == ("few_step", 4, False,
                                                                                     False, 1)
    cfg = session_config(parse(["generate", "--checkpoint", str(dmd), "--sampler", "unipc", "--async-decode",
                                "--threads", "2"]))
    assert (cfg.sampler, cfg.steps, cfg.async_decode, cfg.dit_threads) == ("unipc", 3, True, 2)
    with pytest.raises(ValueError, match="fixed steps"):
        session_config(parse(["generate", "--checkpoint", str(dmd), "--steps", "2"]))
    # play: INT8 (dequantised on CPUs), LightVAE only when the checkpoint has one, async decode, 1 DiT thread
    cfg = play_session_config(parse(["play", "--checkpoint", str(dmd)]))
    assert (cfg.sampler, cfg.int8, cfg.light_vae, cfg.async_decode, cfg.dit_threads) == ("few_step", True,
                                                                                        False, True, 1)
    assert "INT8 (dequant)" in describe(cfg) and "async decode (DiT 1 + decoder" in describe(cfg)
    (dmd / "lightvae").mkdir()
    (dmd / "lightvae" / "config.json").write_text("{}")
    assert play_session_config(parse(["play", "--checkpoint", str(dmd)])).light_vae
    cfg = play_session_config(parse(["play", "--checkpoint", str(dmd), "--no-int8", "--no-light-vae",
                                     "--sync-decode", "--threads", "2", "--int8-compute", "int8"]))
    assert (cfg.int8, cfg.light_vae, cfg.async_decode, cfg.dit_threads, cfg.int8_compute) == (False, False,
                                                                                             False, 2, "int8")
