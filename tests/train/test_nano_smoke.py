"""nano_smoke: every stage end to end on tiny sizes, as the real recipes run them (data -> ship -> play).

render 2 clips (data engine, 32x32 px, 41 frames) -> clip shards -> nano_vae (2 steps) -> cache-latents ->
nano_base (2) -> nano_memory (2) -> nano_dmd (3: cold start, critic-only, both) -> nano_vae_decoder (1)
-> export_nano ->
load_bundle + WorldSession.reset + one step. Only sizes and step counts are overridden (`--set`), as a user
would; every recipe, objective, data reader, checkpoint and loader is the real one.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from worldstream.train.config import apply_overrides
from worldstream.train.recipes import get_recipe
from worldstream.train.trainer import Trainer, latest_checkpoint

QUIET = ["logging.progress=false", "logging.every_n_steps=1", "logging.tensorboard=false", "checkpoint.every_n_steps=0"]
# a tiny DiT (the nano preset's knobs; latents 8 channels = the tiny VAE's z_dim)
TINY_DIT = ["model.dim=32", "model.ffn_dim=64", "model.num_heads=2", "model.num_layers=2", "model.in_dim=8"]
STAGE_BUDGET_S = 180.0  # the whole pipeline must stay under 3 minutes


def train(name: str, out: Path, overrides: list[str]) -> list[dict[str, str]]:
    recipe = get_recipe(name)
    cfg = apply_overrides(recipe.config(), QUIET + overrides)
    result = Trainer(recipe, cfg, out).fit()
    assert result.step == cfg.schedule.steps and latest_checkpoint(out) is not None
    with open(out / "train.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == cfg.schedule.steps
    assert all(math.isfinite(float(r["loss"])) and r["nonfinite"] == "0.0" for r in rows), rows
    return rows


def test_nano_smoke(tmp_path):
    from worldstream.data.cache_latents import VAE_DIR, CacheConfig, cache_latents, load_vae
    from worldstream.data.render_cmd import RenderPlan, render_dataset
    from worldstream.infer.config import NANO
    from worldstream.infer.model_bundle import load_bundle
    from worldstream.infer.session import WorldSession
    from worldstream.train.recipes.nano import _with_decoder_of, export_nano
    from worldstream.train.recipes.nano_vae import load_run_vae

    t0 = time.perf_counter()
    # 1. data: two clips of one world, long enough for memory windows and a 2-segment DMD rollout
    shards = tmp_path / "clips"
    plan = RenderPlan(seed=3, worlds=1, clips_per_world=2, shards=1, frames=41, height=32, width=32)
    assert render_dataset(shards, plan, progress=False, log=lambda m: None)["clips_rendered"] == 2

    # 2. VAE (stride 4x8x8, 8 latent channels) and the latent cache (with estimated latent statistics)
    vae_run, latents = tmp_path / "vae", tmp_path / "latents"
    train("nano_vae", vae_run, ["schedule.steps=2", f"data.root={shards}", "data.eval_root=none",
                                "data.frames=9", "data.batch_size=1", "model.dim=8", "model.dec_dim=8",
                                "model.z_dim=8"])
    summary = cache_latents(shards, latents, vae_run, cfg=CacheConfig(chunk_latents=4, stats_clips=2,
                                                                      stats_frames=9), progress=False)
    assert summary["samples"] == 2

    # 3. base -> memory -> DMD on the cached latents
    data = [f"data.path={latents}", "data.batch_size=1"]
    base, memory, dmd = tmp_path / "base", tmp_path / "memory", tmp_path / "dmd"
    train("nano_base", base, ["schedule.steps=2", *data, *TINY_DIT])
    train("nano_memory", memory, ["schedule.steps=2", *data, *TINY_DIT, f"model.init_run={base}"])
    rows = train("nano_dmd", dmd, ["schedule.steps=3", *data, *TINY_DIT, f"model.init_run={memory}",
                                   "objective.max_segments=2", "objective.cold_start_steps=1",
                                   "optim.student.update_every=2"])
    assert [float(r["cold_start"]) for r in rows] == [1.0, 0.0, 0.0]
    assert rows[1]["loss/student"] == "" and rows[2]["loss/student"] != ""  # student every 2nd step
    assert all(r["loss/critic"] != "" for r in rows)

    # 4. a decoder fine-tune (encoder frozen) and the shipped folder with its decoder; a session on it
    vae_dec = tmp_path / "vae_dec"
    train("nano_vae_decoder", vae_dec, ["schedule.steps=1", f"model.init_run={vae_run}", f"data.root={shards}",
                                        "data.eval_root=none", "data.frames=9", "data.batch_size=1"])
    folder = export_nano(tmp_path / "checkpoints" / "nano", dmd, latents, vae_run=vae_dec)
    shipped = load_file(folder / "dit" / "model.safetensors")
    student = load_file(latest_checkpoint(dmd) / "student_ema.safetensors")
    assert shipped.keys() == student.keys() and all(shipped[k].dtype == torch.bfloat16 for k in shipped)
    assert all(torch.equal(shipped[k], student[k].to(torch.bfloat16)) for k in shipped)
    cached, tuned = load_vae(latents / VAE_DIR), load_run_vae(vae_dec)
    got = load_file(folder / "vae" / "model.safetensors")
    assert all(torch.equal(got[k], cached.state_dict()[k]) for k in got if k.startswith("encoder."))
    assert all(torch.equal(got[k], tuned.state_dict()[k]) for k in got)  # frozen encoder + tuned decoder
    assert not all(torch.equal(got[k], cached.state_dict()[k]) for k in got if k.startswith("decoder."))
    with pytest.raises(ValueError, match="encoder weights differ"):  # raw encoder != the cached (EMA) one
        _with_decoder_of(load_vae(latents / VAE_DIR), vae_run, "raw")
    assert json.loads((folder / "dit" / "meta.json").read_text())["sampler"] == "few_step"
    bundle = load_bundle(folder)
    assert not bundle.random_init and bundle.dit.cfg.dim == 32 and bundle.vae_config.latent_std is not None
    session = WorldSession(bundle, NANO.replace(height=32, width=32, sampler="few_step", steps=4))
    frame0 = session.reset(np.full((32, 32, 3), 128, np.uint8), "a snowy village")
    frames = session.step(np.array([1, 0, 0, 0, 0, 0], np.float32))  # W held for the first clip
    assert frame0.shape == (1, 32, 32, 3) and frames.shape == (24, 32, 32, 3) and frames.dtype == np.uint8
    elapsed = time.perf_counter() - t0
    assert elapsed < STAGE_BUDGET_S, f"nano_smoke took {elapsed:.0f} s"
