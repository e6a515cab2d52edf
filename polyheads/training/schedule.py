"""Learning-rate halving and early stopping on the validation metric (seed 000 App. E.3).

"Validation accuracy was monitored throughout training and if it did not improve for 15 epochs,
the learning rate was cut in half. If the validation accuracy did not improve for 35 epochs, model
training was stopped early. Model parameters were saved for the epoch resulting in the largest
validation accuracy."

Exact semantics of :class:`PlateauSchedule` (a larger metric is better, an improvement is a strictly
larger value):

* after the ``lr_patience``-th consecutive epoch without improvement the learning rate of every
  parameter group is multiplied by ``lr_factor``, and the count restarts, so with no further
  improvement the LR is halved again ``lr_patience`` epochs later (epochs 15, 30, ... after the
  best one);
* after the ``stop_patience``-th consecutive epoch without improvement training stops (the
  authors' code: ``epoch - best_epoch >= 35``); LR cuts do not reset this count.

torch's ``ReduceLROnPlateau(patience=15)``, which the authors' released code used, cuts one epoch
later (when more than 15 epochs have passed) and counts a relative gain of 1e-4 as no gain; we
follow the paper's sentence. The state is a plain dict, saved in every checkpoint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .._checks import check_float, check_int

__all__ = ["PlateauSchedule", "ScheduleStep"]


@dataclass(frozen=True)
class ScheduleStep:
    """What :meth:`PlateauSchedule.step` decided for one epoch."""

    improved: bool
    lr_reduced: bool
    stop: bool
    epochs_since_best: int


class PlateauSchedule:
    """Seed 000's LR halving (``lr_patience=15``, ``lr_factor=0.5``) and early stopping (``stop_patience=35``)."""

    def __init__(self, optimizer: torch.optim.Optimizer | None = None, *, lr_patience: int = 15, lr_factor: float = 0.5,
                 stop_patience: int = 35) -> None:
        self.optimizer = optimizer
        self.lr_patience = check_int("lr_patience", lr_patience, minimum=1)
        self.lr_factor = check_float("lr_factor", lr_factor, minimum=0.0, maximum=1.0, min_inclusive=False, max_inclusive=False)
        self.stop_patience = check_int("stop_patience", stop_patience, minimum=1)
        self.best = -math.inf
        self.best_epoch = -1
        self.epochs_since_best = 0
        self.epochs_since_cut = 0
        self.num_cuts = 0
        self.last_epoch = -1

    def step(self, metric: float, epoch: int | None = None) -> ScheduleStep:
        """Record the validation ``metric`` of the epoch just finished; cut the LR / stop as due."""
        metric = float(metric)
        if math.isnan(metric):
            raise ValueError("the validation metric is NaN; training diverged")
        self.last_epoch = self.last_epoch + 1 if epoch is None else check_int("epoch", epoch, minimum=0)
        improved = metric > self.best
        reduced = False
        if improved:
            self.best, self.best_epoch = metric, self.last_epoch
            self.epochs_since_best = self.epochs_since_cut = 0
        else:
            self.epochs_since_best += 1
            self.epochs_since_cut += 1
            if self.epochs_since_cut >= self.lr_patience:
                self._cut()
                reduced = True
        stop = self.epochs_since_best >= self.stop_patience
        return ScheduleStep(improved=improved, lr_reduced=reduced, stop=stop, epochs_since_best=self.epochs_since_best)

    def _cut(self) -> None:
        self.epochs_since_cut = 0
        self.num_cuts += 1
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = group["lr"] * self.lr_factor

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("best", "best_epoch", "epochs_since_best", "epochs_since_cut", "num_cuts",
                                              "last_epoch", "lr_patience", "lr_factor", "stop_patience")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
