"""The episodic N x K sampler (seed 000 App. E.2): shape, distinctness, coverage, determinism, sharding."""
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from polyheads.training.sampler import EpisodicBatchSampler


@pytest.fixture
def labels(rng):
    # uneven classes: 7 classes of 9..40 items, shuffled
    sizes = [9, 13, 17, 20, 26, 33, 40]
    y = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
    return rng.permutation(y)


def test_batches_are_n_classes_by_k_distinct_instances(labels):
    sampler = EpisodicBatchSampler(labels, num_classes=4, num_instances=5, num_batches=30, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 30
    for batch in batches:
        assert len(batch) == 20
        assert len(set(batch)) == 20  # no index twice in a batch
        per_class = Counter(labels[batch].tolist())
        assert len(per_class) == 4 and set(per_class.values()) == {5}
        # class by class, K consecutive indices of the same class
        assert [labels[batch[i]] for i in range(0, 20, 5)] == list(dict.fromkeys(labels[batch].tolist()))


def test_coverage_within_a_class_draws_differ_by_at_most_one(labels):
    """Instances are drawn without replacement across episodes: over an epoch, every item of a class is
    drawn either floor or ceil of (draws of that class / class size) times."""
    sampler = EpisodicBatchSampler(labels, num_classes=3, num_instances=4, num_batches=200, seed=0)
    counts = Counter(i for batch in sampler for i in batch)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        drawn = np.array([counts.get(int(i), 0) for i in members])
        assert drawn.max() - drawn.min() <= 1, (c, drawn)
        assert drawn.min() >= 1  # 200 episodes x 3/7 classes x 4 >> 40: everyone seen


def test_first_pass_over_a_class_is_a_permutation(labels):
    sampler = EpisodicBatchSampler(labels, num_classes=7, num_instances=3, num_batches=50, seed=5)
    stream = {c: [] for c in np.unique(labels)}
    for batch in sampler:
        for i in batch:
            stream[labels[i]].append(i)
    for c, drawn in stream.items():
        n = int((labels == c).sum())
        assert sorted(drawn[:n]) == sorted(np.flatnonzero(labels == c).tolist())


def test_deterministic_given_seed_and_epoch(labels):
    a = EpisodicBatchSampler(labels, 4, 3, 10, seed=1)
    b = EpisodicBatchSampler(labels, 4, 3, 10, seed=1)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(EpisodicBatchSampler(labels, 4, 3, 10, seed=2)) != list(EpisodicBatchSampler(labels, 4, 3, 10, seed=1))


def test_rank_world_sharding_partitions_the_epoch(labels):
    whole = EpisodicBatchSampler(labels, 4, 3, 12, seed=7)
    whole.set_epoch(2)
    shards = []
    for rank in range(3):
        s = EpisodicBatchSampler(labels, 4, 3, 12, seed=7, rank=rank, world_size=3)
        s.set_epoch(2)
        assert len(s) == 4
        shards.append(list(s))
    interleaved = [shards[i % 3][i // 3] for i in range(12)]
    assert interleaved == list(whole)


def test_short_classes_contribute_all_they_have():
    y = np.array([0] * 2 + [1] * 10 + [2] * 10)
    with pytest.warns(RuntimeWarning, match="fewer than num_instances=4"):
        sampler = EpisodicBatchSampler(y, 3, 4, 5)
    for batch in sampler:
        assert Counter(y[batch].tolist()) == {0: 2, 1: 4, 2: 4}


def test_with_a_dataloader(labels):
    data = TensorDataset(torch.arange(len(labels)), torch.as_tensor(labels))
    loader = DataLoader(data, batch_sampler=EpisodicBatchSampler(labels, 2, 6, 4, seed=0))
    for idx, y in loader:
        assert idx.shape == (12,) and torch.equal(torch.as_tensor(labels)[idx], y)


def test_bad_arguments(labels):
    with pytest.raises(ValueError, match="only 7 classes"):
        EpisodicBatchSampler(labels, 8, 2)
    with pytest.raises(ValueError, match="rank must be <= 1"):
        EpisodicBatchSampler(labels, 2, 2, rank=2, world_size=2)
    with pytest.raises(TypeError, match="integers"):
        EpisodicBatchSampler(np.array([0.5, 1.5]), 1, 1)
    with pytest.raises(ValueError, match="1-D"):
        EpisodicBatchSampler(np.zeros((2, 2), dtype=int), 1, 1)
