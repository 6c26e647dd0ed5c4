"""Process-group helpers and autograd-aware collectives over the token axis (gloo on CPU, NCCL on GPU).

Notable:
* Every collective here splits one dimension into `world` equal chunks, rank r owning chunk r (a contiguous
  slice of the token axis for sequence parallelism). Callers pad that dimension to a multiple of the world
  size first; a non-divisible size raises with the shape.
* Backward passes are the exact adjoints: an all-to-all's gradient is the inverse all-to-all; an all-gather's
  gradient is either this rank's slice of the incoming gradient (`grad="slice"`, right when every rank goes
  on to compute the *same* function of the gathered tensor, e.g. the loss on the gathered DiT output) or the
  sum over ranks of their gradients for this slice (`grad="sum"`, a reduce-scatter: right when each rank
  keeps only its own slice of a computation on the gathered tensor, e.g. the action module).
* The reduce-scatter is an all-to-all followed by a local sum: the same traffic as `reduce_scatter`, and only
  collectives gloo has had for years (all_to_all_single, all_gather).
* Nothing here imports the model; worldstream/model/ never imports torch.distributed
  (tests/test_lint_rules.py).
* Joining the torchrun process group (`read_dist_env`, `init_distributed`, `init_from_env`) lives here
  alone: the trainer and scripts (docs/inference.md) call it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

__all__ = ["DistEnv", "all_to_all", "gather_along", "group_rank_size", "init_distributed", "init_from_env",
           "read_dist_env", "slice_along"]


def group_rank_size(group: ProcessGroup | None = None) -> tuple[int, int]:
    """(rank, size) in `group` (default: the world); (0, 1) when no process group is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise RuntimeError("a process group was given but torch.distributed is not initialised")
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun launch (single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def read_dist_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """RANK / WORLD_SIZE / LOCAL_RANK as set by torchrun (LOCAL_RANK defaults to RANK); single process when
    absent. Bad values raise ValueError naming them."""
    environ = os.environ if environ is None else environ
    try:
        env = DistEnv(int(environ.get("RANK", 0)), int(environ.get("WORLD_SIZE", 1)),
                      int(environ.get("LOCAL_RANK", environ.get("RANK", 0))))
    except ValueError as e:
        raise ValueError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK must be integers): {e}") \
            from None
    if env.world_size < 1 or not 0 <= env.rank < env.world_size:
        raise ValueError(f"bad torchrun environment: RANK={env.rank} WORLD_SIZE={env.world_size}")
    return env


def init_distributed(env: DistEnv, backend: str = "auto") -> tuple[torch.device, bool]:
    """(device, created): cuda:LOCAL_RANK when CUDA exists (made current), else CPU; joins the process group
    (env:// rendezvous; backend "auto" = NCCL on CUDA, gloo on CPU) when WORLD_SIZE > 1 and none exists yet.
    `created` says whether this call made the group (its owner destroys it)."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", env.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if env.world_size == 1 or dist.is_initialized():
        return device, False
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)
    return device, True


def init_from_env(backend: str = "auto") -> tuple[int, int, torch.device]:
    """Join the torchrun process group (`read_dist_env` + `init_distributed`).

    Returns (rank, world_size, device): cuda:LOCAL_RANK with NCCL when CUDA exists, else CPU with gloo.
    A single process (no WORLD_SIZE, or 1) initialises nothing.
    """
    env = read_dist_env()
    device, _ = init_distributed(env, backend)
    return env.rank, env.world_size, device


def _chunks(x: torch.Tensor, n: int, dim: int, what: str) -> tuple[torch.Tensor, ...]:
    if x.shape[dim] % n:
        raise ValueError(f"{what}: dimension {dim} of shape {list(x.shape)} is not divisible by the "
                         f"world size {n}; pad it to a multiple first")
    return x.chunk(n, dim=dim)


def _all_to_all(
    x: torch.Tensor, group: ProcessGroup | None, scatter_dim: int, gather_dim: int
) -> torch.Tensor:
    n = dist.get_world_size(group)
    send = torch.stack(_chunks(x, n, scatter_dim, "all_to_all"))  # [n, ...]: chunk j goes to rank j
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)  # recv[i] = rank i's chunk for this rank
    return torch.cat(recv.unbind(0), dim=gather_dim)


def _all_gather(x: torch.Tensor, group: ProcessGroup | None, dim: int) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def _reduce_scatter(x: torch.Tensor, group: ProcessGroup | None, dim: int) -> torch.Tensor:
    """Sum over ranks of x, then this rank's chunk along `dim` (all-to-all + local sum)."""
    n = dist.get_world_size(group)
    send = torch.stack(_chunks(x, n, dim, "reduce_scatter"))  # [n, ...]
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)  # recv[i] = rank i's copy of this rank's chunk
    return recv.sum(0)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, scatter_dim, gather_dim):
        ctx.group, ctx.dims = group, (scatter_dim, gather_dim)
        return _all_to_all(x, group, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx, grad):
        scatter_dim, gather_dim = ctx.dims
        return _all_to_all(grad.contiguous(), ctx.group, gather_dim, scatter_dim), None, None, None


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim, reduce_grad):
        ctx.group, ctx.dim, ctx.reduce_grad = group, dim, reduce_grad
        return _all_gather(x, group, dim)

    @staticmethod
    def backward(ctx, grad):
        if ctx.reduce_grad:
            return _reduce_scatter(grad.contiguous(), ctx.group, ctx.dim), None, None, None
        rank, n = dist.get_rank(ctx.group), dist.get_world_size(ctx.group)
        return _chunks(grad, n, ctx.dim, "gather backward")[rank].contiguous(), None, None, None


def all_to_all(
    x: torch.Tensor, group: ProcessGroup | None, scatter_dim: int, gather_dim: int
) -> torch.Tensor:
    """Split `scatter_dim` into world chunks, send chunk j to rank j, concatenate the received chunks
    (rank order) along `gather_dim`. Ulysses: scatter heads / gather tokens, and back. Differentiable."""
    return _AllToAll.apply(x, group, scatter_dim, gather_dim)


def gather_along(x: torch.Tensor, group: ProcessGroup | None, dim: int, grad: str = "slice") -> torch.Tensor:
    """All ranks' x concatenated (rank order) along `dim`. Backward: `grad="slice"` keeps this rank's slice
    of the gradient (every rank computes the same function of the result), `grad="sum"` sums the ranks'
    gradients for this slice (each rank keeps only its own slice downstream)."""
    if grad not in ("slice", "sum"):
        raise ValueError(f"gather_along: grad must be 'slice' or 'sum', got {grad!r}")
    return _Gather.apply(x, group, dim, grad == "sum")


def slice_along(x: torch.Tensor, group: ProcessGroup | None, dim: int) -> torch.Tensor:
    """This rank's chunk of x along `dim` (a view; its gradient is zero outside the chunk)."""
    rank, n = group_rank_size(group)
    return _chunks(x, n, dim, "slice_along")[rank]
