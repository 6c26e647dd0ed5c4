"""FSDP2 (+ activation checkpointing) from parallelize.py: 2 gloo processes == 1 process on the same global batch.

* Tiny DiT (golden weights, memory, padding, actions, camera) + MSE on its output: loss, full (gathered)
  gradients, an AdamW step and the gathered weights / optimizer state match one process holding the whole
  batch (rtol 1e-4), with activation checkpointing on in the sharded run.
* The trainer with `parallel.mode=fsdp2` on the toy recipe (EMA on): the log rows, a checkpoint written at
  step 2, a resume from it (sharded optimizer state loaded back) and the final weights match one process.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file
from test_sequence_parallel import CASES, call_kwargs, free_port, tiny_dit

from worldstream.parallel.parallelize import (
    full_state_dict,
    is_sharded,
    optimizer_state_dict,
    parallelize,
    resolve_mode,
)
from worldstream.train.config import ParallelConfig, apply_overrides
from worldstream.train.objectives import ModelBundle
from worldstream.train.recipes import get_recipe
from worldstream.train.trainer import Trainer

RTOL = 1e-4


def rank_slice(kw: dict, r: int) -> dict:
    """Sample r of a batched DiT call (per-sample tensors and context; shared geometry kept)."""
    per_sample = ("x", "t", "plucker_emb", "mouse_cond", "keyboard_cond", "x_memory")
    return {k: (v[r : r + 1] if k in per_sample else [v[r]] if k == "context" else v) for k, v in kw.items()}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def mse_grads(model, kw, target):
    """MSE on the DiT output and its backward; returns (loss, grads by name)."""
    loss = F.mse_loss(model(**kw), target)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def adamw(model):
    # NOTE a large eps: Adam's first step is ~lr * sign(g), so a near-zero gradient's rounding noise would
    # move a weight by up to lr; with eps 1e-3 the update is smooth in g and comparable across layouts
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, eps=1e-3)


def _dit_worker(rank: int, world: int, port: int, out_dir: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        base = tiny_dit().train()
        kw = call_kwargs(base.cfg, *CASES["a"][:5], seed=3, batch=world)  # the global batch: one sample/rank
        target = torch.randn(world, base.cfg.out_dim, *kw["x"].shape[2:], generator=torch.Generator().manual_seed(4))

        # 1. one process, whole batch
        ref = copy.deepcopy(base)
        ref_loss, ref_grads = mse_grads(ref, kw, target)
        ref_grads = {n: g.clone() for n, g in ref_grads.items()}
        ref_opt = adamw(ref)
        ref_opt.step()

        # 2. FSDP2 + AC over the ranks, one sample each (gradients are averaged like DDP)
        bundle = ModelBundle({"model": base})
        bundle.trained = ("model",)
        mode = parallelize(bundle, ParallelConfig(mode="fsdp2", activation_checkpointing=True), world,
                           torch.device("cpu"))
        model = bundle["model"]
        local = sum(p.to_local().numel() for p in model.parameters())
        loss, grads = mse_grads(model, rank_slice(kw, rank), target[rank : rank + 1])
        mean_loss = loss.clone()
        dist.all_reduce(mean_loss)
        full_grads = {n: g.full_tensor() for n, g in grads.items()}  # a collective: every rank
        opt = adamw(model)  # over the sharded parameters, as the trainer builds it
        opt.step()
        weights = full_state_dict(model)  # collectives: rank 0 gets the full tensors
        optim = optimizer_state_dict(model, opt)
        res = {
            "mode": mode, "sharded": is_sharded(model), "local_fraction": local / ref.num_parameters,
            "block_type": type(model.blocks[0]).__name__,
            "loss_rel": abs(float(mean_loss) / world - float(ref_loss)) / float(ref_loss),
            "grad_names": sorted(full_grads) == sorted(ref_grads),
            "grad_rel": max(rel_err(full_grads[n], g) for n, g in ref_grads.items()),
        }
        if rank == 0:
            ref_state = ref.state_dict()
            res["weights_keys"] = list(weights) == list(ref_state)
            res["weight_diff"] = max(float((weights[k] - v).abs().max()) for k, v in ref_state.items())
            ref_optim = ref_opt.state_dict()
            res["optim_format"] = (sorted(optim["state"]) == sorted(ref_optim["state"])
                                   and optim["param_groups"][0]["params"] == ref_optim["param_groups"][0]["params"])
            res["exp_avg_rel"] = max(rel_err(optim["state"][i]["exp_avg"], s["exp_avg"])
                                     for i, s in ref_optim["state"].items())
        torch.save(res, out_dir / f"dit{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_fsdp2_with_ac_matches_one_process_on_the_dit(tmp_path):
    world = 2
    torch.multiprocessing.spawn(_dit_worker, args=(world, free_port(), tmp_path), nprocs=world, join=True)
    for r in range(world):
        res = torch.load(tmp_path / f"dit{r}.pt", weights_only=True)
        assert res["mode"] == "fsdp2" and res["sharded"] and res["block_type"] == "FSDPDiTBlock"
        assert 0.4 < res["local_fraction"] < 0.6, res  # each rank stores about half the parameters
        assert res["loss_rel"] <= RTOL and res["grad_names"] and res["grad_rel"] <= RTOL, res
        if r == 0:
            assert res["weights_keys"] and res["optim_format"], res
            assert res["weight_diff"] <= 1e-5 and res["exp_avg_rel"] <= RTOL, res


def test_activation_checkpointing_keeps_gradients_and_names():
    torch.manual_seed(0)
    base = tiny_dit().train()
    kw = call_kwargs(base.cfg, *CASES["b"][:5], seed=1, batch=CASES["b"][5])
    with torch.no_grad():
        ref_out = base(**kw)
    target = torch.randn_like(ref_out)
    _, ref_grads = mse_grads(copy.deepcopy(base), kw, target)
    bundle = ModelBundle({"model": base})
    bundle.trained = ("model",)
    names = [n for n, _ in base.named_parameters()]
    assert parallelize(bundle, ParallelConfig(mode="none", activation_checkpointing=True), 1,
                       torch.device("cpu")) == "none"
    assert [n for n, _ in base.named_parameters()] == names  # hooks, no wrapper: same names and keys
    _, grads = mse_grads(base, kw, target)
    assert sorted(grads) == sorted(ref_grads)
    for n, g in ref_grads.items():
        torch.testing.assert_close(grads[n], g, rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # AC is transparent without autograd too
        torch.testing.assert_close(base(**kw), ref_out, rtol=0, atol=0)


def test_mode_resolution_and_errors():
    assert resolve_mode(ParallelConfig(mode="fsdp2"), 2) == "fsdp2"
    assert resolve_mode(ParallelConfig(), 2) == "ddp" and resolve_mode(ParallelConfig(), 1) == "none"
    with pytest.raises(ValueError, match="parallel.mode='none'"):
        resolve_mode(ParallelConfig(mode="none"), 2)
    bundle = ModelBundle({"model": torch.nn.Linear(2, 2)})
    bundle.trained = ("model",)
    with pytest.raises(ValueError, match="no `blocks` ModuleList"):
        parallelize(bundle, ParallelConfig(activation_checkpointing=True), 1, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="initialised process group"):
        parallelize(bundle, ParallelConfig(mode="fsdp2"), 2, torch.device("cpu"))
    multi = ModelBundle({"a": torch.nn.Linear(2, 2), "b": torch.nn.Linear(2, 2)})
    multi.trained = ("a", "b")
    with pytest.raises(ValueError, match="one module per stage"):
        parallelize(multi, ParallelConfig(mode="fsdp2"), 2, torch.device("cpu"))


# ---------------------------------------------------------------------------------------------------
# the trainer: parallel.mode=fsdp2 on the toy recipe


FAST = ["logging.progress=false", "logging.tensorboard=false", "schedule.steps=3", "objective.input_noise=0",
        "model.dropout=0", "grad_accum=2", "checkpoint.every_n_steps=0", "optim.model.ema_decay=0.5"]


def make_trainer(out: Path, sets: list[str], resume: bool = False) -> Trainer:
    recipe = get_recipe("toy")
    return Trainer(recipe, apply_overrides(recipe.config(), [*FAST, *sets]), out, resume=resume)


def _trainer_worker(rank: int, world: int, port: int, out: Path, result: Path) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    sets = ["data.batch_size=4", "parallel.mode=fsdp2"]
    first = make_trainer(out, sets)
    rows = first.fit(stop_at=2).rows  # checkpoint at step 2 (gathered from the shards)
    dist.barrier()  # rank 0 writes the checkpoint; a real resume is a new launch
    second = make_trainer(out, sets, resume=True)  # sharded optimizer state loaded back
    rows += second.fit().rows
    if rank == 0:
        torch.save({"mode": second.mode, "rows": [(r["loss"], r["grad_norm"]) for r in rows],
                    "type": second.bundle.raw("model").__class__.__name__}, result)
    if dist.is_initialized():
        dist.destroy_process_group()


def test_trainer_fsdp2_with_resume_matches_one_process(tmp_path):
    one = make_trainer(tmp_path / "one", ["data.batch_size=8"])
    res1 = one.fit()
    result = tmp_path / "fsdp.pt"
    torch.multiprocessing.spawn(_trainer_worker, args=(2, free_port(), tmp_path / "two", result), nprocs=2,
                                join=True)
    two = torch.load(result, weights_only=True)
    assert two["mode"] == "fsdp2" and two["type"] == "FSDPToyMLP"
    assert len(two["rows"]) == 3
    for (l2, g2), r in zip(two["rows"], res1.rows):
        assert l2 == pytest.approx(r["loss"], rel=1e-5) and g2 == pytest.approx(r["grad_norm"], rel=1e-5)
    a, b = res1.checkpoint, tmp_path / "two/ckpt/step_000003"
    for name in ("model.safetensors", "model_ema.safetensors"):
        wa, wb = load_file(a / name), load_file(b / name)
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6)
    oa, ob = (torch.load(p / "model_optim.pt", weights_only=True) for p in (a, b))
    assert oa["param_groups"][0]["params"] == ob["param_groups"][0]["params"]
    for i, s in oa["state"].items():
        torch.testing.assert_close(ob["state"][i]["exp_avg_sq"], s["exp_avg_sq"], rtol=1e-4, atol=1e-10)
    meta = (b / "meta.json").read_text()
    assert "worldstream.train.recipes.toy.ToyMLP" in meta and "FSDP" not in meta  # resumable type names
