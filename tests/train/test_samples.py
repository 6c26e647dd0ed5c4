"""Sample videos of the DiT stages (worldstream/train/samples.py): mp4 + scores, every stage, RNG isolation.

A tiny latent directory is written directly (a tiny VAE with latent statistics in DIR/vae, two 41-frame clips
whose cameras follow MG3's kinematics from their own actions), so every test runs in seconds.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from worldstream.data.actions import poses_from_actions
from worldstream.data.cache_latents import VAE_DIR, LatentSample, load_vae, save_vae, write_latent_shard
from worldstream.data.shards import record_shard
from worldstream.geometry.camera import extrinsics_from_poses, intrinsics_90fov
from worldstream.model.dit import WorldDiT
from worldstream.model.vae import NANO as NANO_VAE
from worldstream.model.vae import VAE
from worldstream.train.config import apply_overrides
from worldstream.train.objectives import ModelBundle
from worldstream.train.recipes import get_recipe
from worldstream.train.samples import dit_sample_hooks, sample_path
from worldstream.train.trainer import HookContext, Trainer

SIZE, FRAMES, Z = 32, 41, 8  # 32x32 px, 41 frames = 11 latents = the first clip + one later clip
TINY_DIT = ["model.dim=32", "model.ffn_dim=64", "model.num_heads=2", "model.num_layers=2", f"model.in_dim={Z}"]
QUIET = ["logging.progress=false", "logging.every_n_steps=1", "logging.tensorboard=false",
         "checkpoint.every_n_steps=0", "checkpoint.save_final=false"]


def latent_dir(root: Path, vae_seed: int = 0, clips: int = 2) -> Path:
    """DIR/vae (tiny VAE with latent statistics) + one shard of `clips` synthetic clips + index.json."""
    torch.manual_seed(vae_seed)
    cfg = dataclasses.replace(NANO_VAE, dim=8, dec_dim=8, z_dim=Z, latent_mean=(0.1,) * Z, latent_std=(0.5,) * Z)
    root.mkdir(parents=True)
    save_vae(VAE(cfg).init_weights().eval(), root / VAE_DIR)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(clips):
        keyboard = np.zeros((FRAMES, 6), np.float32)
        keyboard[:, i % 4] = 1.0  # walk, each clip another direction
        mouse = np.tile(np.float32([0.0, 0.1]), (FRAMES, 1))  # and turn
        poses, _ = poses_from_actions(keyboard, mouse)
        T = (FRAMES - 1) // 4 + 1
        samples.append(LatentSample(
            key=f"clip{i}", latents=torch.from_numpy(rng.standard_normal((Z, T, SIZE // 8, SIZE // 8))).float(),
            c2w=extrinsics_from_poses(poses), intrinsics=intrinsics_90fov(SIZE, SIZE), keyboard=keyboard,
            mouse=mouse, text=torch.from_numpy(rng.standard_normal((4, 384))).float(), text_length=3,
            prompt="a test world", source="test", world_seed=i, height=SIZE, width=SIZE, poses=poses))
    name = "shard-000000.tar"
    record_shard(root, name, write_latent_shard(root / name, iter(samples), "float32"))
    return root


@pytest.fixture(scope="module")
def latents(tmp_path_factory) -> Path:
    return latent_dir(tmp_path_factory.mktemp("samples") / "latents")


def config(name: str, latents: Path, *extra: str):
    return apply_overrides(get_recipe(name).config(), [*QUIET, *TINY_DIT, f"data.path={latents}",
                                                       "data.batch_size=1", "data.samples.clips=2", *extra])


def frame_count(path: Path) -> tuple[int, tuple[int, ...]]:
    with imageio.get_reader(path) as reader:  # NOTE not list(reader): its length hint is inf
        frames = [f for f in reader]
    return len(frames), frames[0].shape


def test_recipes_sample_every_250_and_100():
    for name, every in (("nano_base", 250), ("nano_memory", 250), ("nano_dmd", 100)):
        cfg = get_recipe(name).config()
        assert cfg.logging.sample_every_n_steps == every and cfg.data.eval_path is None
        assert get_recipe(name).hooks is dit_sample_hooks


def test_base_run_writes_videos_without_touching_the_training_stream(latents, tmp_path):
    """nano_base under the trainer: a video per step; the losses equal those of a run without videos."""
    rows = {}
    for every in (0, 1):
        cfg = config("nano_base", latents, "schedule.steps=2", f"logging.sample_every_n_steps={every}")
        out = tmp_path / f"every{every}"
        Trainer(get_recipe("nano_base"), cfg, out).fit()
        with open(out / "train.csv") as f:
            rows[every] = list(csv.DictReader(f))
    assert [r["loss"] for r in rows[0]] == [r["loss"] for r in rows[1]]  # RNGs untouched by the hook
    assert "sample/psnr" not in rows[0][0]
    for step, row in enumerate(rows[1], start=1):
        n, shape = frame_count(sample_path(tmp_path / "every1", step))
        assert (n, shape) == (4 * 11 - 3, (2 * SIZE, SIZE, 3))  # 11 latents; truth on top, generated below
        for k in ("sample/psnr", "sample/psnr_first_clip", "sample/psnr_later", "sample/latent_rmse"):
            assert math.isfinite(float(row[k])), (k, row)
        assert "sample/failed" not in row
    assert not list((tmp_path / "every1" / "samples").glob(".*"))  # no temp files left


@pytest.mark.parametrize("name, module", [("nano_memory", "model"), ("nano_dmd", "student")])
def test_memory_and_student_videos(latents, tmp_path, name, module):
    cfg = config(name, latents, "logging.sample_every_n_steps=5")
    (hook,) = dit_sample_hooks(cfg)
    assert hook.every_n_steps == 5 and hook.rank0_only
    torch.manual_seed(0)
    dit = WorldDiT(cfg.model.dit_config())
    dit.init_weights()
    logs = hook.fn(HookContext(5, ModelBundle({module: dit}), cfg, tmp_path, 0))
    assert logs is not None and all(math.isfinite(v) for v in logs.values()) and "sample/failed" not in logs
    assert frame_count(sample_path(tmp_path, 5))[0] == 41
    session = hook.fn.bundle  # the prepared bf16 DiT + VAE, reused by the next call
    assert session.dtype == torch.bfloat16 and session.dit is not dit
    state = hook.fn.last_session
    assert state.use_memory and state.sampler == ("few_step" if name == "nano_dmd" else "unipc")
    assert state.steps == (4 if name == "nano_dmd" else 3)


def test_eval_path_must_share_the_vae(latents, tmp_path):
    same = tmp_path / "same"
    latent_dir(same, vae_seed=0, clips=1)
    vae = load_vae(same / VAE_DIR)  # another decoder (a decoder fine-tune) keeps the latent space
    with torch.no_grad():
        next(vae.decoder.parameters()).add_(1.0)
    save_vae(vae, same / VAE_DIR)
    (hook,) = dit_sample_hooks(config("nano_base", latents, f"data.eval_path={same}"))
    assert hook.fn.source == same
    other = latent_dir(tmp_path / "other", vae_seed=1, clips=1)
    with pytest.raises(ValueError, match="another VAE encoder"):
        dit_sample_hooks(config("nano_base", latents, f"data.eval_path={other}"))
    with pytest.raises(ValueError, match="sample number 5"):
        dit_sample_hooks(config("nano_base", latents, "data.samples.index=5"))
    with pytest.warns(UserWarning, match="holds 2 of the 3 clips"):
        (hook,) = dit_sample_hooks(config("nano_base", latents, "data.samples.clips=3"))
    assert hook.fn.clips == 2
