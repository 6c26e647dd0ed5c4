"""Ulysses sequence parallelism for the WorldDiT, applied from outside the model (MG3 facts section 8).

Source: the official SP path (wan/distributed/*, derived from lingbot-world; DeepSpeed-Ulysses), as documented
in the facts; the model stays single-device code and exposes four seams (see worldstream/model/dit.py), which
`apply_sequence_parallel` replaces per instance. N ranks of `group` each call the DiT with the same full
inputs and all get the full output.

What each rank does:
1. Embeddings (patch, time, text, Plücker projection, RoPE) run on the whole padded sequence on every rank
   (small next to the blocks). `shard_tokens` pads the token axis to a multiple of N and keeps rank r's
   contiguous slice of the tokens, their time-embedding rows, camera features and RoPE rotations.
2. Self-attention (`attn_fn`): q, k, v [B, L/N, H, D] (RoPE applied) -> one all-to-all (scatter heads,
   gather tokens) -> [B, L, H/N, D] -> full attention with the padding keys excluded -> all-to-all back.
   When N does not divide H, zero heads are appended (24 heads on 7 ranks -> 28) and trimmed afterwards.
3. Camera injection, cross-attention and the FFN are per token: local, unchanged.
4. Action module (`action_fn`): all-gather the tokens, run it on the valid ones (memory + clip), keep this
   rank's slice (the module attends over time per location, so it needs every frame).
5. Head: local, then all-gathered (`gather_tokens`) before unpatchify.

Padding: the caller's `seq_len` padding and the extra tokens that make the length divisible by N are both
excluded as keys, so valid outputs equal the single-device ones (float32: ~1e-6, summation order only).
The extra tokens are zeros with time row 0, zero camera features and identity RoPE.

Training (autograd runs through every collective): each rank's parameter gradients are its share of the
total (its tokens; replicated work such as the embeddings and the action module contributes through this
rank's slice only), and `reduce_sequence_parallel_grads` sums them over the group. The loss must be the same
function of the gathered output on every rank (the head gather's backward keeps this rank's slice).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed import ProcessGroup

from worldstream.model.attention import attention
from worldstream.model.dit import (
    ActionInputs,
    DiTBlock,
    SelfAttention,
    TimeEmbedding,
    WorldDiT,
    action_on_valid,
)
from worldstream.parallel.dist import all_to_all, gather_along, group_rank_size, slice_along

__all__ = ["UlyssesPlan", "apply_sequence_parallel", "reduce_sequence_parallel_grads"]


class UlyssesPlan:
    """The four seam implementations for one process group (token axis = dim 1 of [B, L, ...])."""

    def __init__(self, group: ProcessGroup | None):
        self.group = group
        self.rank, self.size = group_rank_size(group)

    def __deepcopy__(self, memo):  # a process group cannot be copied; the plan holds no other state
        return self

    def __repr__(self) -> str:
        return f"UlyssesPlan(rank={self.rank}, size={self.size})"

    # WorldDiT.shard_tokens
    def shard_tokens(
        self, tokens: torch.Tensor, temb: TimeEmbedding, cam: torch.Tensor | None, freqs: torch.Tensor
    ) -> tuple[torch.Tensor, TimeEmbedding, torch.Tensor | None, torch.Tensor]:
        """tokens [B, L, C], temb (index [B, L]), cam [B, L, C] | None, freqs [L, H', D/2] -> this rank's
        slices of length ceil(L / N) (after padding L to a multiple of N)."""
        pad = -tokens.shape[1] % self.size
        index = temb.index
        if pad:
            tokens = F.pad(tokens, (0, 0, 0, pad))  # [B, Lp, C]
            index = F.pad(index, (0, pad))  # time row 0: any row will do, these are padding tokens
            cam = None if cam is None else F.pad(cam, (0, 0, 0, pad))
            freqs = torch.cat([freqs, freqs.new_ones(pad, *freqs.shape[1:])])  # identity rotations
        g = self.group
        local_temb = TimeEmbedding(temb.e, temb.e0, slice_along(index, g, 1))
        local_cam = None if cam is None else slice_along(cam, g, 1)
        return slice_along(tokens, g, 1), local_temb, local_cam, slice_along(freqs, g, 0)

    # WorldDiT.gather_tokens
    def gather_tokens(self, out: torch.Tensor) -> torch.Tensor:
        """Head output [B, Lp/N, K] -> [B, Lp, K] on every rank (the caller trims to the valid tokens)."""
        return gather_along(out, self.group, dim=1, grad="slice")

    # SelfAttention.attn_fn
    def attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid_keys: int | torch.Tensor | None
    ) -> torch.Tensor:
        """q, k, v [B, Lp/N, H, D] -> [B, Lp/N, H, D]; `valid_keys` counts keys of the full sequence."""
        H = q.shape[2]
        qkv = torch.stack([q, k, v])  # [3, B, Lp/N, H, D]
        head_pad = -H % self.size
        if head_pad:  # zero heads: attend uniformly over zero values, trimmed below
            qkv = F.pad(qkv, (0, 0, 0, head_pad))  # [3, B, Lp/N, H', D]
        qkv = all_to_all(qkv, self.group, scatter_dim=3, gather_dim=2)  # [3, B, Lp, H'/N, D]
        out = attention(qkv[0], qkv[1], qkv[2], valid_keys)  # [B, Lp, H'/N, D]
        out = all_to_all(out, self.group, scatter_dim=1, gather_dim=2)  # [B, Lp/N, H', D]
        return out[:, :, :H]

    # DiTBlock.action_fn
    def action(
        self, module: nn.Module, x: torch.Tensor, valid: int, actions: ActionInputs
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, Lp/N, C] -> all tokens -> action module on the valid ones -> this rank's slice."""
        full = gather_along(x, self.group, dim=1, grad="sum")  # [B, Lp, C]
        full, a_in, a_out = action_on_valid(module, full, valid, actions)
        return slice_along(full, self.group, 1), a_in, a_out


def apply_sequence_parallel(dit: WorldDiT, group: ProcessGroup | None = None) -> WorldDiT:
    """Ulysses SP over the ranks of `group` (default: the world), in place; returns `dit`.

    A no-op on one rank. Apply before activation checkpointing, compile and FSDP2 (parallelize.py's order);
    every rank must then call the DiT with the same inputs. Parameters are untouched (any dtype/device).
    """
    if not isinstance(dit, WorldDiT):
        raise TypeError(f"apply_sequence_parallel expects a WorldDiT, got {type(dit).__name__}")
    plan = UlyssesPlan(group)
    if plan.size == 1:
        return dit
    if isinstance(getattr(dit.gather_tokens, "__self__", None), UlyssesPlan):
        raise ValueError("apply_sequence_parallel: this DiT is already sequence parallel")
    for m in dit.modules():  # isinstance: also finds blocks wrapped or re-classed by AC / FSDP2
        if isinstance(m, SelfAttention):
            m.attn_fn = plan.attention
        elif isinstance(m, DiTBlock):
            m.action_fn = plan.action
    dit.shard_tokens, dit.gather_tokens = plan.shard_tokens, plan.gather_tokens
    return dit


@torch.no_grad()
def reduce_sequence_parallel_grads(module: nn.Module, group: ProcessGroup | None = None) -> None:
    """Sum the parameter gradients over the SP group (each rank holds its share; see the module docstring).

    For plain (unsharded) parameters; with FSDP2 over the same ranks, reduce with a sum instead of FSDP's
    mean (see docs/training.md, "Distributed").
    """
    _, size = group_rank_size(group)
    if size == 1:
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, group=group)
