"""LR halving after 15 stale epochs and early stopping after 35 (seed 000 App. E.3), on scripted metrics."""
import numpy as np
import pytest
import torch

from polyheads.training.schedule import PlateauSchedule


def _optimizer(lr=0.8):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_flat_after_improving_halves_at_15_and_30_then_stops_at_35():
    opt = _optimizer(0.8)
    schedule = PlateauSchedule(opt)
    metrics = [0.1, 0.2, 0.3, 0.4, 0.5] + [0.5] * 60  # best at epoch 4, then no strict improvement
    lrs, stop_epoch, cuts = [], None, []
    for epoch, m in enumerate(metrics):
        step = schedule.step(m, epoch)
        lrs.append(opt.param_groups[0]["lr"])
        if step.lr_reduced:
            cuts.append(epoch)
        if step.stop:
            stop_epoch = epoch
            break
    assert cuts == [4 + 15, 4 + 30]
    assert stop_epoch == 4 + 35
    assert lrs[4 + 14] == 0.8 and lrs[4 + 15] == 0.4 and lrs[4 + 30] == 0.2 and lrs[-1] == 0.2
    assert schedule.best_epoch == 4 and schedule.best == 0.5


def test_improvement_restarts_both_counts():
    schedule = PlateauSchedule(_optimizer(), lr_patience=3, stop_patience=5)
    seq = [1.0, 0.9, 0.9, 1.1, 1.0, 1.0, 1.0, 1.0, 1.0]
    steps = [schedule.step(m) for m in seq]
    assert [s.improved for s in steps] == [True, False, False, True, False, False, False, False, False]
    assert [s.lr_reduced for s in steps] == [False] * 6 + [True, False, False]
    assert [s.stop for s in steps] == [False] * 8 + [True]


@pytest.mark.parametrize("seed", range(5))
def test_matches_the_closed_form_on_random_sequences(seed):
    """Independent statement of the rule: with b(e) the last epoch <= e with a strict improvement,
    the LR is cut at e iff (e - b(e)) is a positive multiple of lr_patience, and training stops at the
    first e with e - b(e) >= stop_patience (the authors' ``e - best_epoch >= patience``)."""
    rng = np.random.default_rng(seed)
    # rare steps up (improvements), ties in between, occasional dips
    metrics = np.cumsum(rng.random(150) < 0.1).astype(float) - (rng.random(150) < 0.3)
    opt = _optimizer(1.0)
    schedule = PlateauSchedule(opt, lr_patience=4, stop_patience=14)
    best, best_epoch, expected_lr, lr = -np.inf, -1, 1.0, []
    for e, m in enumerate(metrics):
        if m > best:
            best, best_epoch = m, e
        stale = e - best_epoch
        if stale > 0 and stale % 4 == 0:
            expected_lr /= 2
        step = schedule.step(float(m), e)
        assert opt.param_groups[0]["lr"] == expected_lr
        assert step.stop == (stale >= 14)
        assert schedule.best_epoch == best_epoch
        if step.stop:
            break


def test_state_dict_round_trip_continues_identically():
    seq = [0.3, 0.2, 0.2, 0.25, 0.2, 0.1, 0.1, 0.1]
    a = PlateauSchedule(_optimizer(), lr_patience=2, stop_patience=6)
    steps_a = [a.step(m) for m in seq]
    b = PlateauSchedule(_optimizer(), lr_patience=2, stop_patience=6)
    for m in seq[:4]:
        b.step(m)
    c = PlateauSchedule(_optimizer(), lr_patience=2, stop_patience=6)
    c.load_state_dict(b.state_dict())
    assert [c.step(m) for m in seq[4:]] == steps_a[4:]


def test_nan_metric_and_bad_arguments():
    with pytest.raises(ValueError, match="NaN"):
        PlateauSchedule().step(float("nan"))
    with pytest.raises(ValueError, match="lr_factor"):
        PlateauSchedule(lr_factor=1.0)
    with pytest.raises(ValueError, match="lr_patience"):
        PlateauSchedule(lr_patience=0)
