"""The episodic N x K batch sampler of seed 000 App. E.2.

"For batch sampling during training, we use an episodic scheme where we first sample N classes at
random and then sample K instances from each of the N classes." Every batch therefore holds N
distinct classes with K distinct instances each -- what margin, triplet and centre losses need.

Two refinements over the authors' released sampler (which draws instances afresh for every
episode): instances of a class are drawn *without replacement across episodes* (a per-class
shuffled queue, refilled when empty), so an epoch sees as many different images as possible; and
the whole epoch is a pure function of ``(seed, epoch)``, so a resumed run replays the same batches
and ``rank`` / ``world_size`` shard the epoch's episodes like ``DistributedSampler`` does.
"""
from __future__ import annotations

import warnings
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from .._checks import check_int

__all__ = ["EpisodicBatchSampler"]


class EpisodicBatchSampler(Sampler[list[int]]):
    """Batches of ``num_classes`` classes x ``num_instances`` instances (seed 000 App. E.2).

    Args:
        labels: class label of every item of the data set (1-D, integers).
        num_classes: N, distinct classes per batch.
        num_instances: K, distinct instances per class in a batch. A class with fewer than K items
            contributes all of them (a warning says which classes are short).
        num_batches: episodes per epoch over all ranks; ``None`` = ``len(labels) // (N * K)``.
        seed: base seed; the batches of epoch ``e`` depend only on ``(seed, e)``.
        rank, world_size: this process takes episodes ``rank, rank + world_size, ...`` of the
            epoch's sequence (``num_batches`` is rounded down to a multiple of ``world_size``).

    Call :meth:`set_epoch` before iterating each epoch (as with ``DistributedSampler``).
    Batches are lists of dataset indices ordered class by class.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        num_classes: int,
        num_instances: int,
        num_batches: int | None = None,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if labels.ndim != 1 or labels.size == 0:
            raise ValueError(f"labels must be a non-empty 1-D sequence, got shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
        self.num_classes = check_int("num_classes", num_classes, minimum=1)
        self.num_instances = check_int("num_instances", num_instances, minimum=1)
        self.world_size = check_int("world_size", world_size, minimum=1)
        self.rank = check_int("rank", rank, minimum=0, maximum=self.world_size - 1)
        self.seed = check_int("seed", seed, minimum=0)
        self.classes, inverse = np.unique(labels, return_inverse=True)
        if len(self.classes) < self.num_classes:
            raise ValueError(
                f"num_classes={self.num_classes} classes per batch, but the data has only {len(self.classes)} classes"
            )
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse, minlength=len(self.classes))
        self.class_indices = np.split(order, np.cumsum(counts)[:-1])
        short = [int(c) for c, n in zip(self.classes, counts) if n < self.num_instances]
        if short:
            warnings.warn(
                f"{len(short)} classes have fewer than num_instances={self.num_instances} items and contribute "
                f"all they have (e.g. classes {short[:5]})",
                RuntimeWarning,
                stacklevel=2,
            )
        if num_batches is None:
            num_batches = max(1, len(labels) // (self.num_classes * self.num_instances))
        total = check_int("num_batches", num_batches, minimum=1)
        self.total_batches = max(self.world_size, total - total % self.world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields."""
        self.epoch = check_int("epoch", epoch, minimum=0)

    def __len__(self) -> int:
        return self.total_batches // self.world_size

    def epoch_batches(self, epoch: int | None = None) -> list[list[int]]:
        """All episodes of ``epoch`` (every rank's), in order -- the sequence the ranks share."""
        epoch = self.epoch if epoch is None else check_int("epoch", epoch, minimum=0)
        rng = np.random.default_rng([self.seed, epoch])
        queues = [rng.permutation(ix) for ix in self.class_indices]
        heads = np.zeros(len(queues), dtype=np.int64)
        batches = []
        for _ in range(self.total_batches):
            batch: list[int] = []
            for c in rng.choice(len(queues), size=self.num_classes, replace=False):
                queue, k = queues[c], min(self.num_instances, len(queues[c]))
                if heads[c] + k > len(queue):
                    # refill: the rest of this lap first, then a new lap (a permutation of the whole
                    # class) whose first k - len(rest) items avoid the rest, so the batch stays distinct
                    rest = queue[heads[c]:]
                    lead = k - len(rest)
                    others = rng.permutation(np.setdiff1d(self.class_indices[c], rest, assume_unique=True))
                    lap = np.concatenate([others[:lead], rng.permutation(np.concatenate([others[lead:], rest]))])
                    queue = queues[c] = np.concatenate([rest, lap])
                    heads[c] = 0
                batch.extend(int(i) for i in queue[heads[c]:heads[c] + k])
                heads[c] += k
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.epoch_batches()[self.rank::self.world_size]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(N={self.num_classes}, K={self.num_instances}, batches={len(self)}, "
                f"classes={len(self.classes)}, seed={self.seed}, rank={self.rank}/{self.world_size})")
