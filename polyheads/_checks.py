"""Input validation shared by every layer (the lowest module of polyheads: imports torch only).

Every public function of polyheads checks its arguments through these helpers, so that a wrong
shape, a NaN, a label out of range or an unknown name fails with a ``ValueError`` / ``TypeError``
that names the argument and what was expected -- never a silent wrong number.

Data-dependent checks (finite values, label ranges) need the tensor's values; they are skipped while
``torch.compile`` traces (they would break the graph) and can be switched off globally with
:func:`set_validation` for production loops that have already validated their data.
"""
from __future__ import annotations

import difflib
import math
import numbers
import os
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Sequence

import torch

__all__ = [
    "set_validation",
    "validation_enabled",
    "validation",
    "check_int",
    "check_float",
    "check_choice",
    "check_tensor",
    "check_features",
    "check_target",
    "check_probabilities",
    "check_finite",
    "closest_matches",
]

_VALIDATE = os.environ.get("POLYHEADS_VALIDATE", "1").lower() not in ("0", "false", "no", "off")


def set_validation(enabled: bool) -> None:
    """Turn the data-dependent input checks (NaN/inf, label range) on or off for the whole process.

    Shape and type checks always run; they cost nothing. The data checks read the tensor's values,
    which synchronises a GPU stream once per call. Environment variable: ``POLYHEADS_VALIDATE=0``.
    """
    global _VALIDATE
    _VALIDATE = bool(enabled)


@contextmanager
def validation(enabled: bool) -> Iterator[None]:
    """Context manager form of :func:`set_validation`."""
    global _VALIDATE
    previous = _VALIDATE
    _VALIDATE = bool(enabled)
    try:
        yield
    finally:
        _VALIDATE = previous


def validation_enabled() -> bool:
    """Whether data-dependent checks run now (never while ``torch.compile`` traces)."""
    if not _VALIDATE:
        return False
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling():
        return False
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return False
    return True


def closest_matches(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The registered names closest to ``name`` (difflib), for "did you mean" messages."""
    return difflib.get_close_matches(str(name), list(candidates), n=n, cutoff=0.5)


def _type_name(value: Any) -> str:
    return type(value).__name__


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int`` (bools and floats are refused), within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {_type_name(value)} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
) -> float:
    """``value`` as a finite ``float`` within the given bounds (inclusive unless told otherwise)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
            value = float(value.item())
        else:
            raise TypeError(f"{name} must be a real number, got {_type_name(value)} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value < minimum if min_inclusive else value <= minimum):
        op = ">=" if min_inclusive else ">"
        raise ValueError(f"{name} must be {op} {minimum}, got {value}")
    if maximum is not None and (value > maximum if max_inclusive else value >= maximum):
        op = "<=" if max_inclusive else "<"
        raise ValueError(f"{name} must be {op} {maximum}, got {value}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` must be one of ``choices`` (strings); the error lists them and the closest match."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {list(choices)}, got {_type_name(value)} {value!r}")
    if value not in choices:
        hint = closest_matches(value, choices)
        did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}{did_you_mean}")
    return value


def check_tensor(name: str, value: Any, *, floating: bool | None = None, ndim: int | Sequence[int] | None = None) -> torch.Tensor:
    """``value`` must be a tensor (optionally floating / integer, of the given number of dimensions)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {_type_name(value)}")
    if floating is True and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if floating is False and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor, got dtype {value.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if value.ndim not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise ValueError(f"{name} must be {want}, got shape {list(value.shape)}")
    return value


def check_finite(name: str, value: torch.Tensor) -> torch.Tensor:
    """Raise if ``value`` holds NaN or inf (a data-dependent check; see :func:`set_validation`)."""
    if validation_enabled() and value.is_floating_point():
        finite = torch.isfinite(value)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            kinds = []
            if bool(torch.isnan(value).any()):
                kinds.append("NaN")
            if bool(torch.isinf(value).any()):
                kinds.append("inf")
            raise ValueError(f"{name} contains {' and '.join(kinds)} ({bad} of {value.numel()} entries)")
    return value


def check_features(features: Any, in_features: int, name: str = "features") -> torch.Tensor:
    """Pooled pre-logit features: a floating tensor [B, in_features] with finite values.

    timm models whose classifier is a 1x1 convolution (DLA, DPN, ...) hand their classifier
    [B, C, 1, 1]; those trailing singleton dimensions are flattened here.
    """
    check_tensor(name, features, floating=True)
    if features.ndim == 4 and features.shape[2:] == (1, 1):
        features = features.flatten(1)
    if features.ndim != 2:
        raise ValueError(
            f"{name} must have shape [batch, {in_features}] (pooled pre-logit features), got {list(features.shape)}"
        )
    if features.shape[1] != in_features:
        raise ValueError(
            f"{name} must have {in_features} columns (the head's in_features), got shape {list(features.shape)}"
        )
    if features.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {list(features.shape)})")
    return check_finite(name, features)


def check_target(target: Any, num_classes: int, batch_size: int | None = None, name: str = "target") -> torch.Tensor:
    """Class indices: an integer tensor [B] with values in [0, num_classes)."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {_type_name(target)}")
    if target.is_floating_point():
        raise TypeError(
            f"{name} must hold integer class indices (dtype torch.long), got dtype {target.dtype} "
            f"with shape {list(target.shape)}"
        )
    if target.dtype == torch.bool or target.is_complex():
        raise TypeError(f"{name} must hold integer class indices, got dtype {target.dtype}")
    if target.ndim != 1:
        raise ValueError(f"{name} must be 1-D [batch] class indices, got shape {list(target.shape)}")
    if batch_size is not None and target.shape[0] != batch_size:
        raise ValueError(f"{name} has {target.shape[0]} entries but the batch has {batch_size} rows")
    if validation_enabled() and target.numel() > 0:
        lo, hi = int(target.min()), int(target.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name} must be class indices in [0, {num_classes}), got values in [{lo}, {hi}]")
    return target


def check_probabilities(target: Any, num_classes: int, batch_size: int, name: str = "target") -> torch.Tensor:
    """Probability targets [B, K]: floating, the right shape, and (a data check) finite, non-negative rows
    summing to 1 -- what timm's ``Mixup`` / ``SoftTargetCrossEntropy`` use."""
    check_tensor(name, target, floating=True, ndim=2)
    if tuple(target.shape) != (batch_size, num_classes):
        raise ValueError(
            f"{name} (probabilities) must have shape [{batch_size}, {num_classes}] (batch, classes), got {list(target.shape)}"
        )
    if validation_enabled():
        t = target.detach()
        ok = torch.stack([torch.isfinite(t).all(), (t >= 0).all(), ((t.sum(dim=1) - 1).abs() <= 1e-3).all()]).tolist()
        if not ok[0]:
            raise ValueError(f"{name} (probabilities) contains NaN or inf")
        if not ok[1]:
            raise ValueError(f"{name} (probabilities) must be non-negative")
        if not ok[2]:
            raise ValueError(f"{name} (probabilities) rows must sum to 1 (mixup / cutmix targets do)")
    return target
