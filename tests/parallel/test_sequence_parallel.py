"""Ulysses sequence parallelism: N gloo processes on CPU == 1 process (outputs and gradients), head padding.

Real processes (torch.multiprocessing spawn, gloo, tcp rendezvous on a free port) run the golden tiny DiT
(non-zero weights everywhere, head-wise RoPE jitter switched on) with memory, caller padding, actions and
camera. Each rank computes the single-device reference itself before `apply_sequence_parallel`, so the
comparison is in-process; the parent asserts on the numbers the ranks write.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from worldstream.model.dit import DiTConfig, WorldDiT
from worldstream.parallel.dist import all_to_all, gather_along, slice_along
from worldstream.parallel.sequence import apply_sequence_parallel, reduce_sequence_parallel_grads

GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "golden"
TOL = 1e-4  # float32 max |diff| (golden README tolerance for the DiT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_dit() -> WorldDiT:
    """Golden tiny config (2 heads, 3 blocks, action modules in blocks 0-1) + golden weights, jitter on."""
    cfg = dataclasses.replace(DiTConfig.from_json(GOLDEN / "dit_tiny_config.json"), sigma_theta=0.8)
    model = WorldDiT(cfg)
    model.load_state_dict(load_file(str(GOLDEN / "dit_tiny_weights.safetensors")), strict=True)
    return model


def call_kwargs(cfg: DiTConfig, F: int, M: int, H: int, W: int, seq_len: int | None, seed: int,
                batch: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    h, w = H // cfg.patch_size[1], W // cfg.patch_size[2]
    rows = 4 * F  # a later clip: 4 pixel-frame action rows per latent
    kw = dict(
        x=torch.randn(batch, cfg.in_dim, F, H, W, generator=g),
        t=torch.rand(batch, F * h * w, generator=g) * 1000,
        context=[torch.randn(5 + i, cfg.text_dim, generator=g) for i in range(batch)],
        seq_len=seq_len,
        plucker_emb=torch.randn(batch, cfg.plucker_channels, M + F, H, W, generator=g) * 0.5,
        mouse_cond=(torch.randint(-1, 2, (batch, rows, 2), generator=g) * 0.1).float(),
        keyboard_cond=torch.randint(0, 2, (batch, rows, 6), generator=g).float(),
        predict_latent_idx=(7, 7 + F),
    )
    if M:
        kw.update(x_memory=torch.randn(batch, cfg.in_dim, M, H, W, generator=g),
                  memory_latent_idx=[1 + 2 * i for i in range(M)])
    return kw


# (F, M, H, W, seq_len, batch): with 2 ranks case "a" needs no extra SP padding and "b" does; with 3 ranks,
# the other way round. Both have memory, actions and camera; "a" also pads the sequence itself (30 -> 34).
CASES = {"a": (3, 2, 4, 6, 34, 1), "b": (2, 1, 2, 6, None, 2)}


def _sp_worker(rank: int, world: int, port: int, out_dir: Path, backward: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = tiny_dit()
        inputs = {name: call_kwargs(model.cfg, *case[:5], seed=i, batch=case[5])
                  for i, (name, case) in enumerate(CASES.items())}
        # 1. single-device reference on this rank (outputs; gradients of a fixed linear loss for case "a")
        with torch.no_grad():
            ref = {name: model(**kw) for name, kw in inputs.items()}
        bf16 = copy.deepcopy(model).to(torch.bfloat16)  # the CPU inference dtype: gloo carries bf16 too
        with torch.no_grad():
            ref_bf16 = bf16(**inputs["a"])
        weight = torch.randn(ref["a"].shape, generator=torch.Generator().manual_seed(5))
        if backward:
            x = inputs["a"]["x"].clone().requires_grad_(True)
            (model(**{**inputs["a"], "x": x}) * weight).sum().backward()
            # NOTE the action q/k norm weights get no gradient (the snapshot's weightless RMSNorm)
            ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            ref_xgrad = x.grad.clone()
            model.zero_grad(set_to_none=True)

        # 2. the same calls with Ulysses sequence parallelism over all ranks
        apply_sequence_parallel(model)
        result: dict = {"shards": model.blocks[0].self_attn.attn_fn.__self__.size}
        apply_sequence_parallel(bf16)
        with torch.no_grad():
            out = bf16(**inputs["a"])
        scale = ref["a"].abs().max()
        result["bf16_err_sp"] = float((out.float() - ref["a"]).abs().max() / scale)  # vs float32
        result["bf16_err_one"] = float((ref_bf16.float() - ref["a"]).abs().max() / scale)
        with torch.no_grad():
            for name, kw in inputs.items():
                out = model(**kw)
                result[f"diff_{name}"] = float((out - ref[name]).abs().max())
                result[f"shape_{name}"] = tuple(out.shape) == tuple(ref[name].shape)
        if backward:
            x = inputs["a"]["x"].clone().requires_grad_(True)
            (model(**{**inputs["a"], "x": x}) * weight).sum().backward()
            reduce_sequence_parallel_grads(model)
            dist.all_reduce(x.grad)  # an input's gradient is also shared out over the ranks
            grads = dict(model.named_parameters())
            result["grad_rel"] = max(float((grads[n].grad - g).abs().max() / g.abs().max().clamp_min(1e-12))
                                     for n, g in ref_grads.items())
            result["grad_missing"] = [n for n, p in grads.items() if (p.grad is None) != (n not in ref_grads)]
            result["grads_compared"] = len(ref_grads)
            result["xgrad_diff"] = float((x.grad - ref_xgrad).abs().max() / ref_xgrad.abs().max())
        torch.save(result, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(tmp_path: Path, world: int, backward: bool) -> list[dict]:
    torch.multiprocessing.spawn(_sp_worker, args=(world, free_port(), tmp_path, backward), nprocs=world,
                                join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]


def test_two_ranks_match_one_forward_and_backward(tmp_path):
    for r, res in enumerate(run_ranks(tmp_path, 2, backward=True)):
        assert res["shards"] == 2
        for name in CASES:
            assert res[f"shape_{name}"], (r, name)
            assert res[f"diff_{name}"] <= TOL, (r, name, res[f"diff_{name}"])
        assert res["bf16_err_sp"] <= 2 * res["bf16_err_one"], res  # bf16 rounding, not SP, dominates
        assert not res["grad_missing"] and res["grads_compared"] > 50, res["grad_missing"]
        assert res["grad_rel"] <= 1e-4, (r, res["grad_rel"])
        assert res["xgrad_diff"] <= 1e-4, (r, res["xgrad_diff"])


def test_three_ranks_pad_heads(tmp_path):
    # the tiny DiT has 2 heads: on 3 ranks one zero head is appended and trimmed after attention
    assert DiTConfig.from_json(GOLDEN / "dit_tiny_config.json").num_heads % 3
    for r, res in enumerate(run_ranks(tmp_path, 3, backward=False)):
        assert res["shards"] == 3
        for name in CASES:
            assert res[f"diff_{name}"] <= TOL, (r, name, res[f"diff_{name}"])
        assert res["bf16_err_sp"] <= 2 * res["bf16_err_one"], res  # bf16 rounding, not SP, dominates


# ---------------------------------------------------------------------------------------------------
# the collectives' adjoints, checked against their definitions (3 ranks)


def _collectives_worker(rank: int, world: int, port: int, out_dir: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        full = torch.arange(2 * 6 * 3 * 4, dtype=torch.float32).reshape(2, 6, 3, 4)  # [B, L, H, D], same everywhere
        local = slice_along(full, None, 1).clone().requires_grad_(True)  # [B, 2, 3, 4]
        heads = all_to_all(local, None, scatter_dim=2, gather_dim=1)  # [B, 6, 1, 4]
        res = {"a2a": torch.equal(heads, full[:, :, rank : rank + 1])}
        back = all_to_all(heads, None, scatter_dim=1, gather_dim=2)
        res["a2a_inverse"] = torch.equal(back, local)
        (heads * (rank + 1)).sum().backward()  # d/d local of sum_r (r + 1) * local[:, :, r]
        res["a2a_grad"] = torch.equal(local.grad, torch.arange(1.0, world + 1)[None, None, :, None].expand_as(local))
        x = torch.full((1, 2, 1), float(rank), requires_grad=True)
        gathered = gather_along(x, None, dim=1, grad="sum")  # [1, 2 * world, 1]
        res["gather"] = gathered.flatten().tolist() == [float(r) for r in range(world) for _ in range(2)]
        (gathered * (rank + 1)).sum().backward()  # every rank weights all of it: grad = sum_r (r + 1)
        res["gather_sum_grad"] = torch.equal(x.grad, torch.full_like(x, world * (world + 1) / 2))
        y = torch.ones(1, 2, 1, requires_grad=True)
        (gather_along(y, None, dim=1, grad="slice") * torch.arange(2.0 * world)[None, :, None]).sum().backward()
        res["gather_slice_grad"] = y.grad.flatten().tolist() == [2.0 * rank, 2.0 * rank + 1]
        with pytest.raises(ValueError, match="not divisible by the world size 3"):
            all_to_all(torch.zeros(1, 4, 2, 1), None, scatter_dim=1, gather_dim=2)
        torch.save(res, out_dir / f"coll{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_collectives_and_their_adjoints(tmp_path):
    world = 3
    torch.multiprocessing.spawn(_collectives_worker, args=(world, free_port(), tmp_path), nprocs=world, join=True)
    for r in range(world):
        res = torch.load(tmp_path / f"coll{r}.pt", weights_only=True)
        assert all(res.values()), (r, res)


def test_single_process_is_a_no_op():
    model = tiny_dit()
    assert apply_sequence_parallel(model) is model  # no process group: one rank, nothing to split
    assert model.blocks[0].self_attn.attn_fn.__module__ == "worldstream.model.attention"
    with pytest.raises(TypeError, match="expects a WorldDiT"):
        apply_sequence_parallel(torch.nn.Linear(2, 2))
