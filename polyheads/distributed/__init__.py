"""Beyond one machine: process-group helpers, differentiable collectives, a distributed
log-sum-exp and class-sharded heads, on PyTorch's own engine (``torch.distributed``, ``torchrun``).

    torchrun --nproc_per_node=2 tools/train.py --config configs/fashion_mnist/arcface.yaml
    torchrun --nproc_per_node=8 tools/train.py head=sharded head_kwargs='{base: arcface, sample_rate: 0.1}' ...

Layers: :mod:`~polyheads.distributed.comm` and :mod:`~polyheads.distributed.loss` are tensor
functions (the ``functional`` layer); :class:`ShardedHead` is a head (``polyheads/heads/sharded.py``, registered as ``"sharded"``;
re-exported here); the trainer wires DDP (``polyheads.training``). docs/distributed.md.
"""
from __future__ import annotations

from typing import Any

from .comm import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_seed,
    destroy_distributed,
    dist_info,
    gather_rows,
    gather_rows_nograd,
    gather_rows_to,
    get_rank,
    get_world_size,
    init_distributed,
    is_distributed,
    local_state,
    reduce_partials,
    shard_bounds,
    sum_allreduce_hook,
    syncing_state,
)
from .loss import combine_logsumexp, owned_targets, scaled_cosines, sharded_cross_entropy, sharded_logsumexp

_SHARDED_NAMES = ("ShardedHead", "SHARDABLE_HEADS", "sharded_heads", "full_state_dict")

__all__ = [
    "DistInfo",
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "broadcast_seed",
    "destroy_distributed",
    "dist_info",
    "gather_rows",
    "gather_rows_nograd",
    "gather_rows_to",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "local_state",
    "reduce_partials",
    "shard_bounds",
    "sum_allreduce_hook",
    "syncing_state",
    "combine_logsumexp",
    "owned_targets",
    "scaled_cosines",
    "sharded_cross_entropy",
    "sharded_logsumexp",
    *_SHARDED_NAMES,
]


def __getattr__(name: str) -> Any:
    # the head layer sits above this package (heads import its comm helpers): re-export lazily
    if name in _SHARDED_NAMES:
        from ..heads import sharded

        return getattr(sharded, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
