"""Shared test fixtures: deterministic seeds, a headless matplotlib, bounded thread use."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


@pytest.fixture
def rng():
    """A numpy Generator with a fixed seed."""
    import numpy as np

    return np.random.default_rng(0)
