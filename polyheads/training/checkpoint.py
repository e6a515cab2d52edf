"""Checkpoints that resume exactly: model, optimiser, schedule, AMP scaler, epoch, RNG states, config.

Files are written atomically (a temporary file in the same folder, then ``os.replace``), so a run
killed with SIGKILL -- even while saving -- leaves the previous ``last.pt`` intact and resumes from
it, losing at most the epoch in progress.

Distributed runs (torchrun) write one checkpoint, on rank 0, that does not depend on the number of
ranks: class-sharded weights and their optimiser state (momentum) are gathered whole
(:func:`gather_optimizer_state`, ``polyheads.distributed.full_state_dict``), and every rank keeps its
own rows when loading (:func:`shard_optimizer_state`, ``ShardedHead.load_state_dict``) -- so a
checkpoint of N ranks resumes on M.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..distributed.comm import gather_rows_to
from ..heads.sharded import sharded_heads

__all__ = ["rng_state", "set_rng_state", "save_checkpoint", "load_checkpoint", "copy_checkpoint", "find_checkpoint",
           "gather_optimizer_state", "shard_optimizer_state"]


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


def _atomic_write(target: Path, write: Callable[[str], Any]) -> Path:
    """``write(temporary_path)`` then rename onto ``target``: a crash never leaves half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """``torch.save(state, path)`` atomically."""
    return _atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def copy_checkpoint(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy a checkpoint file atomically (``best.pt`` from ``last.pt``)."""
    return _atomic_write(Path(target), lambda tmp: shutil.copyfile(source, tmp))


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


def _sharded_slots(model: nn.Module, optimizer: torch.optim.Optimizer, packed: dict[str, Any]) -> list[tuple[int, Any]]:
    """``(index in the optimiser's state_dict, ShardedHead)`` of every sharded parameter, in order."""
    owners = {id(p): head for head in sharded_heads(model).values() for p in head.sharded_parameters().values()}
    slots = []
    for group, packed_group in zip(optimizer.param_groups, packed["param_groups"]):
        for param, index in zip(group["params"], packed_group["params"]):
            if id(param) in owners:
                slots.append((index, owners[id(param)]))
    return sorted(slots, key=lambda slot: slot[0])


def gather_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module, dst: int = 0) -> dict[str, Any] | None:
    """``optimizer.state_dict()`` with the per-class state of sharded parameters (momentum buffers
    [K_r, d]) gathered whole [K, d] on rank ``dst`` (``None`` on the others; a collective). The live
    optimiser state is not modified. Without sharded heads: the plain state dict."""
    packed = optimizer.state_dict()
    slots = _sharded_slots(model, optimizer, packed)
    if not slots:
        return packed
    state = dict(packed["state"])
    complete = True
    for index, head in slots:
        entry = dict(state.get(index, {}))  # a copy: the packed dicts are the optimiser's own
        rows = head.class_end - head.class_start
        for key in sorted(entry):
            value = entry[key]
            if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == rows:
                gathered = gather_rows_to(value, dst, head.process_group)
                complete = gathered is not None
                entry[key] = gathered
        state[index] = entry
    return {**packed, "state": state} if complete else None


def shard_optimizer_state(state: dict[str, Any], optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Any]:
    """A checkpoint's optimiser state with this rank's rows of every sharded parameter's per-class
    state (the inverse of :func:`gather_optimizer_state`, for any number of ranks)."""
    slots = _sharded_slots(model, optimizer, state)
    if not slots:
        return state
    entries = dict(state["state"])
    for index, head in slots:
        if index not in entries:
            continue
        entry = dict(entries[index])
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == head.num_classes:
                entry[key] = value[head.class_start : head.class_end].clone()
        entries[index] = entry
    return {**state, "state": entries}
