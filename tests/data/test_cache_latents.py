"""Latent caching: round trip == direct encoding, storage dtypes, resume, settings check, corrupt shards."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch

from worldstream import cli
from worldstream.data.cache_latents import (
    CacheConfig,
    LatentSample,
    LatentShardReader,
    cache_latents,
    collate_latents,
    compute_vae,
    encode_video,
    iter_latent_shard,
    latents_from_storage,
    latents_to_storage,
    load_vae,
    save_vae,
    write_latent_shard,
)
from worldstream.data.schema import Clip
from worldstream.data.shards import (
    CorruptShardWarning,
    ShardError,
    ShardReader,
    load_index,
    record_shard,
    shard_name,
    write_shard,
)
from worldstream.model.vae import VAE, VAEConfig

TINY = VAEConfig(dim=4, dec_dim=8, z_dim=8, dim_mult=(1, 2, 2), temporal_downsample=(True, True))  # 4x8x8


def clip(i: int, T: int = 9, H: int = 16, W: int = 24) -> Clip:
    rng = np.random.default_rng(i)
    poses = rng.normal(size=(T, 5)).astype(np.float32)
    c2w = np.tile(np.eye(4), (T, 1, 1))
    c2w[:, :3, 3] = rng.normal(size=(T, 3))
    return Clip(key=f"w{i:04d}_c0000", c2w=c2w, intrinsics=np.array([12.0, 12.0, 12.0, 8.0]),
                keyboard=(rng.random((T, 6)) < 0.3).astype(np.float32),
                mouse=rng.normal(size=(T, 2)).astype(np.float32), prompt=f"a red village number {i}",
                source="test", video=rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8), poses=poses,
                world_seed=500 + i)


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    src = root / "clips"
    src.mkdir()
    for s in range(2):
        info = write_shard(src / shard_name(s), [clip(2 * s), clip(2 * s + 1)])
        record_shard(src, shard_name(s), info)
    torch.manual_seed(0)
    save_vae(VAE(TINY).init_weights(), root / "trained_vae")
    out = root / "latents"
    rc = cli.main(["data", "cache-latents", "--data", str(src), "--vae", str(root / "trained_vae"),
                   "--out", str(out), "--storage", "float32", "--chunk-latents", "1", "--stats-clips", "2",
                   "--quiet"])
    assert rc == 0
    return src, out


def test_round_trip_equals_direct_encoding(cached):
    from worldstream.model.text import MiniLMEncoder

    src, out = cached
    reader = LatentShardReader(out)
    samples = {s.key: s for s in reader}
    clips = {c.key: c for c in ShardReader(src)}
    assert sorted(samples) == sorted(clips) and reader.stats.samples_ok == 4
    vae = compute_vae(load_vae(out / "vae"), "bfloat16")
    text = MiniLMEncoder(32)
    for key, c in clips.items():
        s = samples[key]
        assert torch.equal(s.latents, encode_video(vae, c.video, chunk_latents=1))  # [C, T, h, w]
        assert s.latents.shape == (TINY.z_dim, 3, 2, 3)
        for name in ("c2w", "intrinsics", "keyboard", "mouse", "poses"):
            np.testing.assert_array_equal(getattr(s, name), getattr(c, name))
        emb, lengths = text.encode([c.prompt])
        assert torch.equal(s.text, emb[0]) and s.text_length == int(lengths[0])
        assert (s.world_seed, s.prompt, s.height, s.width) == (c.world_seed, c.prompt, 16, 24)


def test_latent_stats_normalise_the_stats_clips(cached):
    _, out = cached
    cfg = load_vae(out / "vae").cfg
    assert cfg.latent_mean is not None and cfg.latent_std is not None
    samples = {s.key: s for s in LatentShardReader(out)}
    # the stats came from the first clip of each shard (all 9 frames): normalised, they are ~N(0, 1)
    z = torch.cat([samples[k].latents.flatten(1) for k in ("w0000_c0000", "w0002_c0000")], dim=1)
    assert z.mean(1).abs().max() < 0.02
    assert (z.std(1) - 1).abs().max() < 0.02


def test_collate_to_clip_latents(cached):
    _, out = cached
    samples = list(LatentShardReader(out))
    batch = collate_latents(samples)
    assert batch.latents.shape == (4, TINY.z_dim, 3, 2, 3)
    assert batch.c2w.shape == (4, 9, 4, 4) and batch.keyboard.shape == (4, 9, 6)
    assert batch.text.shape == (4, 32, 384) and batch.intrinsics.shape == (4, 4)
    prefix = samples[0].to_clip_latents(num_latents=2)
    assert prefix.latents.shape[2] == 2 and prefix.c2w.shape[1] == 5  # 4(n-1)+1 frames
    with pytest.raises(ValueError, match="num_latents=4"):
        samples[0].to_clip_latents(num_latents=4)


def test_resume_skips_done_and_reencodes_missing(cached):
    src, out = cached
    cfg = CacheConfig(storage="float32", chunk_latents=1, stats_clips=2)
    s = cache_latents(src, out, out / "vae", cfg=cfg, progress=False)
    assert (s["skipped_done"], s["encoded"]) == (2, 0)
    before = load_index(out)["shards"][shard_name(1)]["sha256"]
    (out / shard_name(1)).unlink()
    s = cache_latents(src, out, out / "vae", cfg=cfg, progress=False)
    assert (s["skipped_done"], s["encoded"], s["samples"]) == (1, 1, 2)
    assert load_index(out)["shards"][shard_name(1)]["sha256"] == before  # deterministic bytes
    s = cache_latents(src, out, src.parent / "trained_vae", cfg=cfg, progress=False)  # the same weights
    assert s["skipped_done"] == 2
    torch.manual_seed(1)
    save_vae(VAE(TINY).init_weights(), src.parent / "other_vae")
    with pytest.raises(ValueError, match="another VAE"):
        cache_latents(src, out, src.parent / "other_vae", cfg=cfg, progress=False)
    with pytest.raises(ValueError, match="other settings \\(cache differ"):
        cache_latents(src, out, out / "vae", cfg=CacheConfig(storage="bfloat16", chunk_latents=1,
                                                              stats_clips=2), progress=False)


def test_vae_folder_is_a_checkpoint_and_the_flat_layout_resumes(cached, tmp_path):
    import json

    from safetensors.torch import save_file

    from worldstream.checkpoint import load_config_json, load_meta

    src, out = cached
    assert load_config_json(out / "vae")["type"] == "worldstream.model.vae.VAEConfig"  # VAE.save layout
    assert load_meta(out / "vae")["source"] == str(src.parent / "trained_vae")
    vae = VAE.load(out / "vae")
    # a cache written before (flat config.json + model.safetensors) reads and resumes unchanged
    old = tmp_path / "latents"
    shutil.copytree(out, old)
    shutil.rmtree(old / "vae")
    (old / "vae").mkdir()
    (old / "vae" / "config.json").write_text(json.dumps(vae.cfg.to_dict()))
    save_file(vae.state_dict(), old / "vae" / "model.safetensors")
    assert load_vae(old / "vae").cfg == vae.cfg
    cfg = CacheConfig(storage="float32", chunk_latents=1, stats_clips=2)
    for given in (old / "vae", src.parent / "trained_vae"):
        assert cache_latents(src, old, given, cfg=cfg, progress=False)["skipped_done"] == 2


def test_bf16_storage_round_trip(tmp_path):
    x = torch.randn(4, 3, 2, 3) * 3
    arr = latents_to_storage(x, "bfloat16")
    assert arr.dtype == np.uint16
    assert torch.equal(latents_from_storage(arr, "bfloat16"), x.bfloat16().float())
    with pytest.raises(ValueError, match="does not match latent_dtype"):
        latents_from_storage(arr, "float32")
    s = LatentSample(key="a", latents=x, c2w=np.tile(np.eye(4), (9, 1, 1)), intrinsics=np.ones(4),
                     keyboard=np.zeros((9, 6), np.float32), mouse=np.zeros((9, 2), np.float32),
                     text=torch.zeros(8, 16), text_length=3, prompt="p", source="test", world_seed=None,
                     height=16, width=24)
    write_latent_shard(tmp_path / shard_name(0), iter([s]), "bfloat16")
    (back,) = iter_latent_shard(tmp_path / shard_name(0), strict=True)
    assert torch.equal(back.latents, x.bfloat16().float()) and back.poses is None


def test_corrupt_shard_skipped_with_warning_and_counted(cached, tmp_path):
    _, out = cached
    bad = tmp_path / "latents"
    shutil.copytree(out, bad)
    path = bad / shard_name(0)
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 256] = b"\x00" * 256
    path.write_bytes(bytes(data))
    reader = LatentShardReader(bad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keys = [s.key for s in reader]
    assert any(issubclass(w.category, CorruptShardWarning) for w in caught)
    assert reader.stats.shards_failed + reader.stats.samples_skipped >= 1 and reader.stats.errors
    assert {"w0002_c0000", "w0003_c0000"} <= set(keys)  # the intact shard is read in full
    assert reader.stats.shards_ok == 1
    with pytest.raises(ShardError, match=shard_name(0)):
        list(LatentShardReader(bad, strict=True))
