"""Checkpoints that resume exactly: model, optimiser, schedule, AMP scaler, epoch, RNG states, config.

Files are written atomically (a temporary file in the same folder, then ``os.replace``), so a run
killed with SIGKILL -- even while saving -- leaves the previous ``last.pt`` intact and resumes from
it, losing at most the epoch in progress.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["rng_state", "set_rng_state", "save_checkpoint", "load_checkpoint", "copy_checkpoint", "find_checkpoint"]


def rng_state() -> dict[str, Any]:
    """The state of every random generator the trainer touches (python, numpy, torch CPU and CUDA)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only when this machine has the devices)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu() if isinstance(state["torch"], torch.Tensor) else state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """``torch.save(state, path)`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def copy_checkpoint(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy a checkpoint file atomically (``best.pt`` from ``last.pt``)."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def find_checkpoint(path: str | os.PathLike, name: str = "last.pt") -> Path:
    """``path`` itself if it is a file, else ``path/name``; a clear error if neither exists."""
    path = Path(path)
    if path.is_file():
        return path
    candidate = path / name
    if candidate.is_file():
        return candidate
    raise FileNotFoundError(f"no checkpoint at {path} (expected a .pt file or a run folder holding {name})")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by the trainer (it holds numpy RNG state, hence ``weights_only=False``:
    load only checkpoints you trust, as with any pickle)."""
    path = find_checkpoint(path)
    state = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{path} is not a polyheads training checkpoint (no 'model' / 'config' entries)")
    return state
