"""Process-group helpers and the collectives the sharded heads differentiate through.

Everything here is PyTorch's own engine (``torch.distributed``): nccl on GPUs, gloo on CPUs,
started by ``torchrun``. Without an initialised process group every helper is the single-process
identity, so code written for N ranks runs unchanged on one.

Gradient convention of the sharded losses ("shares"). A sharded loss is one global scalar L,
the same value on every rank. Each rank back-propagates L through its *own* computations only, so
what lands in a tensor that every rank holds a copy of (the embedding layer, the temperature τ, the
gathered embeddings) is that rank's share of ∂L/∂(tensor); the shares sum to the full gradient.
Hence:

- :func:`gather_rows` (embeddings of every rank, used by each rank with its own classes): the
  backward pass sums the shares over the ranks and returns the rows this rank contributed;
- :func:`reduce_partials` (a quantity split over the ranks, e.g. the target logit, held by the
  rank that owns the class): forward sums the parts, backward is the identity -- every rank holds
  the full ∂L/∂(sum), which is ∂L/∂(part);
- the parameters every rank holds a copy of receive shares, so their gradients are *summed* over
  the ranks (:func:`sum_allreduce_hook` for DistributedDataParallel), never averaged.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist

from .._checks import check_int, check_tensor

__all__ = [
    "DistInfo",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "dist_info",
    "init_distributed",
    "destroy_distributed",
    "barrier",
    "local_state",
    "syncing_state",
    "shard_bounds",
    "all_reduce_sum",
    "gather_rows",
    "gather_rows_nograd",
    "gather_rows_to",
    "reduce_partials",
    "broadcast_seed",
    "all_gather_objects",
    "sum_allreduce_hook",
]

_LOCAL_STATE = False


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that writes checkpoints and logs)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one rank."""
        return self.world_size > 1


def is_distributed(group: Any = None) -> bool:
    """Whether a process group is initialised (and spans more than one rank)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def get_rank(group: Any = None) -> int:
    """This process's rank in ``group`` (0 without a process group)."""
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def get_world_size(group: Any = None) -> int:
    """Ranks in ``group`` (1 without a process group)."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def dist_info() -> DistInfo:
    """The current :class:`DistInfo` (``LOCAL_RANK`` from torchrun's environment)."""
    return DistInfo(get_rank(), get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(backend: str | None = None, device: str = "auto") -> DistInfo:
    """Initialise the default process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); a no-op returning rank 0 of 1 when the
    environment names no world size > 1 or a group already exists.

    ``backend=None`` chooses nccl when the run uses CUDA (``device`` ``"auto"`` with a GPU, or
    ``"cuda..."``), else gloo; with CUDA each process is bound to ``cuda:LOCAL_RANK``.
    """
    if dist.is_available() and dist.is_initialized():
        return dist_info()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (device == "auto" or str(device).startswith("cuda"))
    if backend is None:
        backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return dist_info()


def destroy_distributed() -> None:
    """Tear the default process group down (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(group: Any = None) -> None:
    """``dist.barrier`` when distributed, else nothing."""
    if is_distributed(group):
        dist.barrier(group)


@contextmanager
def local_state() -> Iterator[None]:
    """Inside this block heads keep their non-parameter state (centres, centroids, vMF α) from this
    rank's data only, even with a process group -- for code that runs on one rank while the others
    do something else (otherwise those updates are collectives every rank must join)."""
    global _LOCAL_STATE
    previous, _LOCAL_STATE = _LOCAL_STATE, True
    try:
        yield
    finally:
        _LOCAL_STATE = previous


def syncing_state(group: Any = None) -> bool:
    """Whether heads should combine their non-parameter state over the ranks now."""
    return not _LOCAL_STATE and is_distributed(group)


def shard_bounds(num_items: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, end)`` of rank ``rank``'s contiguous share of ``num_items`` (the first
    ``num_items % world_size`` ranks hold one more), as ``torch.tensor_split`` cuts."""
    num_items = check_int("num_items", num_items, minimum=0)
    world_size = check_int("world_size", world_size, minimum=1)
    rank = check_int("rank", rank, minimum=0, maximum=world_size - 1)
    base, extra = divmod(num_items, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


# ---------------------------------------------------------------------------------------------- no-grad collectives
def all_reduce_sum(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """The sum of ``tensor`` over the ranks (a new tensor; ``tensor`` itself when not distributed)."""
    if not is_distributed(group):
        return tensor
    out = tensor.detach().clone()
    if out.device.type == "cpu" and dist.get_backend(group) == "nccl":  # nccl reduces GPU tensors only
        return all_reduce_sum(out.cuda(), group).to(tensor.device)
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


def _row_counts(rows: int, device: torch.device, group: Any) -> list[int]:
    mine = torch.tensor([rows], dtype=torch.long, device=device)
    counts = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(counts, mine, group=group)
    return [int(c) for c in counts]


def _gather_padded(x: torch.Tensor, counts: list[int], group: Any) -> torch.Tensor:
    """All ranks' rows (``counts[r]`` from rank r), concatenated in rank order."""
    longest = max(counts)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([p[:n] for p, n in zip(parts, counts)])


def gather_rows_nograd(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Every rank's rows of ``x`` [n_r, ...] concatenated in rank order [Σ n_r, ...], without gradient
    (ranks may hold different numbers of rows)."""
    check_tensor("x", x)
    if x.ndim == 0:
        raise ValueError("x must have a leading row dimension, got a 0-d tensor")
    if not is_distributed(group):
        return x
    with torch.no_grad():
        return _gather_padded(x.detach(), _row_counts(x.shape[0], x.device, group), group)


def gather_rows_to(x: torch.Tensor, dst: int = 0, group: Any = None) -> torch.Tensor | None:
    """Every rank's rows of ``x`` concatenated on rank ``dst`` only (``None`` on the others) -- for
    checkpoints of sharded weights, which must not be held whole on every rank."""
    check_tensor("x", x)
    if not is_distributed(group):
        return x.detach()
    counts = _row_counts(x.shape[0], x.device, group)
    padded = x.detach().new_zeros((max(counts), *x.shape[1:]))
    padded[: x.shape[0]] = x.detach()
    rank = dist.get_rank(group)
    parts = [torch.empty_like(padded) for _ in counts] if rank == dst else None
    dist.gather(padded, parts, dst=dist.get_global_rank(group, dst) if group is not None else dst, group=group)
    if parts is None:
        return None
    return torch.cat([p[:n] for p, n in zip(parts, counts)])


def broadcast_seed(seed: int, group: Any = None) -> int:
    """Rank 0's ``seed`` on every rank (the ranks then draw the same random numbers)."""
    if not is_distributed(group):
        return int(seed)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else torch.device("cpu")
    value = torch.tensor([int(seed)], dtype=torch.long, device=device)
    dist.broadcast(value, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
    return int(value)


def all_gather_objects(obj: Any, group: Any = None) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects); ``[obj]`` when not distributed."""
    if not is_distributed(group):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


# ---------------------------------------------------------------------------------------------- differentiable collectives
class _GatherRows(torch.autograd.Function):
    """Forward: all ranks' rows in rank order. Backward: the gradient shares summed over the ranks,
    this rank's rows returned (a reduce-scatter; written as all-reduce + slice so gloo runs it)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        counts = _row_counts(x.shape[0], x.device, group)
        rank = dist.get_rank(group)
        ctx.group = group
        ctx.span = (sum(counts[:rank]), sum(counts[: rank + 1]))
        return _gather_padded(x.detach(), counts, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        total = grad.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=ctx.group)
        start, end = ctx.span
        return total[start:end], None


def gather_rows(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Every rank's rows of ``x`` [n_r, ...] concatenated in rank order, differentiably: the
    backward pass sums the ranks' gradient shares (module docstring) and keeps this rank's rows.
    Ranks may hold different numbers of rows. The identity without a process group."""
    check_tensor("x", x)
    if x.ndim == 0:
        raise ValueError("x must have a leading row dimension, got a 0-d tensor")
    if not is_distributed(group):
        return x
    return _GatherRows.apply(x, group)


class _ReducePartials(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        out = x.detach().contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


def reduce_partials(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """The sum over the ranks of a quantity each rank holds part of (e.g. target logits, non-zero
    only on the rank owning the class), differentiably with the identity backward (module
    docstring). The identity without a process group."""
    check_tensor("x", x)
    if not is_distributed(group):
        return x
    return _ReducePartials.apply(x, group)


# ---------------------------------------------------------------------------------------------- DDP
def sum_allreduce_hook(process_group, bucket):  # type: ignore[no-untyped-def]  # DDP inspects the annotations
    """DistributedDataParallel communication hook that *sums* the gradients over the ranks instead
    of averaging them: with a sharded head the loss is already the global batch's, so every rank
    holds a share of the gradient of replicated parameters (module docstring)::

        ddp.register_comm_hook(None, sum_allreduce_hook)
    """
    group = process_group if process_group is not None else dist.group.WORLD
    work = dist.all_reduce(bucket.buffer(), op=dist.ReduceOp.SUM, group=group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])
