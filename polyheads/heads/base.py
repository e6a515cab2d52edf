"""The head contract (shared/DESIGN.md) as a base class, and the learned inverse temperature.

A head sits where a timm model's classifier was. It receives pooled pre-logit features
[B, in_features] and has the seed-000 shape: a learnable embedding layer ``in_features -> dim``
(Linear, Xavier-uniform weights, zero bias; seed 000 App. E.1), then the geometry's classifier
``dim -> num_classes`` without bias.

Subclasses implement :meth:`Head.logits_from_embedding` and, for label-aware objectives (margins),
:meth:`Head.training_logits`; everything else -- input checks, float32 head math under autocast,
the non-finite-loss diagnosis, ``repr`` -- lives here once.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, ClassVar, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_features, check_float, check_int, check_target, validation_enabled

__all__ = ["Head", "InverseTemperature", "default_embedding_dim"]

DEFAULT_MAX_DIM = 512


def default_embedding_dim(in_features: int) -> int:
    """Embedding width when ``dim`` is not given: ``min(in_features, 512)`` (seed 000 uses 512-D for
    retrieval and never widens the backbone's features)."""
    return min(int(in_features), DEFAULT_MAX_DIM)


class InverseTemperature(nn.Module):
    """β = exp(τ) with τ unconstrained and learned (seed 000 §3.3, App. F), or a fixed β.

    ``InverseTemperature(init_tau=0.0)`` learns τ (its own parameter group, its own learning rate:
    App. F "TLR"); ``InverseTemperature(scale=30.0)`` fixes β = 30 (NormFace/ArcFace style), kept as a
    buffer so it is saved with the model but never optimised.
    """

    def __init__(self, init_tau: float = 0.0, scale: float | None = None) -> None:
        super().__init__()
        if scale is not None:
            scale = check_float("scale", scale, minimum=0.0, min_inclusive=False)
            self.register_buffer("tau", torch.tensor(math.log(scale)))
            self.learned = False
        else:
            init_tau = check_float("init_tau", init_tau, minimum=-20.0, maximum=20.0)
            self.tau = nn.Parameter(torch.tensor(float(init_tau)))
            self.learned = True

    def forward(self) -> torch.Tensor:
        """β = exp(τ) as a 0-d tensor."""
        return self.tau.exp()

    def extra_repr(self) -> str:
        beta = float(self.tau.detach().exp())
        return f"beta={beta:.4g}, learned={self.learned}"


@contextmanager
def _float32_math(device_type: str) -> Iterator[None]:
    """Disable autocast inside head math: geometry (norms, arccos-free margins, Bessel bounds,
    Möbius additions) runs in the parameters' own precision, never in fp16/bf16."""
    if device_type in ("cuda", "cpu", "xpu", "mps", "hpu"):
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    else:  # pragma: no cover - other backends
        yield


class Head(nn.Module):
    """Base class of every polyheads head (the contract of shared/DESIGN.md).

    Args:
        in_features: width of the pooled pre-logit features the head receives (timm's
            ``head_hidden_size``).
        num_classes: number of classes K (>= 2).
        dim: embedding width; ``None`` -> :func:`default_embedding_dim`.
        embedding: ``False`` skips the learnable embedding layer (the features are the embedding and
            ``dim == in_features``), e.g. for a linear probe on fixed features.

    Members users and the trainer rely on: ``forward`` (logits [B, K]), ``embed``, ``loss``,
    ``confidence``, ``distance``, ``param_groups``, ``on_epoch_start``, ``init_from_data``, and the
    attributes ``in_features``, ``num_classes``, ``dim``, ``geometry``.
    """

    #: the embedding geometry: "euclidean", "spherical", "hyperbolic"
    geometry: ClassVar[str] = "euclidean"
    #: the metric retrieval uses by default for this head's embeddings (polyheads.metrics)
    retrieval_metric: ClassVar[str] = "euclidean"
    #: stochastic heads return Monte-Carlo log-probabilities in eval mode
    stochastic: ClassVar[bool] = False
    #: set by @register_head
    head_name: ClassVar[str] = ""

    def __init__(self, in_features: int, num_classes: int, dim: int | None = None, *, embedding: bool = True) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features, minimum=1)
        self.num_classes = check_int("num_classes", num_classes, minimum=2)
        if embedding:
            self.dim = default_embedding_dim(in_features) if dim is None else check_int("dim", dim, minimum=1)
            self.embedding: nn.Module = nn.Linear(self.in_features, self.dim)
            nn.init.xavier_uniform_(self.embedding.weight)
            nn.init.zeros_(self.embedding.bias)
        else:
            if dim is not None and check_int("dim", dim, minimum=1) != self.in_features:
                raise ValueError(f"dim must equal in_features={self.in_features} when embedding=False, got {dim}")
            self.dim = self.in_features
            self.embedding = nn.Identity()

    # ------------------------------------------------------------------ helpers for subclasses
    def _param_dtype(self) -> torch.dtype:
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        for b in self.buffers():
            if b.is_floating_point():
                return b.dtype
        return torch.float32

    def _prepare(self, features: torch.Tensor) -> torch.Tensor:
        """Validate pre-logit features and bring them to the head's precision (fp16/bf16 -> fp32)."""
        x = check_features(features, self.in_features)
        dtype = self._param_dtype()
        if x.dtype != dtype:
            x = x.to(dtype)
        return x

    def _check_target(self, target: torch.Tensor, batch_size: int) -> torch.Tensor:
        return check_target(target, self.num_classes, batch_size)

    # ------------------------------------------------------------------ what subclasses implement
    def embedding_from_features(self, x: torch.Tensor) -> torch.Tensor:
        """Map validated features to the embedding z̃ (override for geometry maps, e.g. expmap0)."""
        return self.embedding(x)

    def logits_from_embedding(self, z: torch.Tensor) -> torch.Tensor:
        """Class logits [B, K] from embeddings [B, dim] (the geometry's classifier)."""
        raise NotImplementedError(f"{type(self).__name__} must implement logits_from_embedding")

    def training_logits(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Label-aware logits whose cross-entropy is the training objective (margins override this)."""
        return self.logits_from_embedding(z)

    def loss_from_embedding(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training objective from embeddings; default: cross-entropy of :meth:`training_logits`."""
        return F.cross_entropy(self.training_logits(z, target), target)

    # ------------------------------------------------------------------ the public contract
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits [B, num_classes] (softmax gives the prediction)."""
        x = self._prepare(features)
        with _float32_math(x.device.type):
            return self.logits_from_embedding(self.embedding_from_features(x))

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """The embedding z̃ [B, dim] used for retrieval (before any normalisation)."""
        x = self._prepare(features)
        with _float32_math(x.device.type):
            return self.embedding_from_features(x)

    def loss(self, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The geometry's training objective (a scalar), label-aware (margins, vMF bound, ...)."""
        x = self._prepare(features)
        target = self._check_target(target, x.shape[0])
        with _float32_math(x.device.type):
            value = self.loss_from_embedding(self.embedding_from_features(x), target)
        return self._check_loss(value)

    def confidence(self, features: torch.Tensor) -> torch.Tensor:
        """The uncertainty signal [B] of seed 000 Table 1; default ‖z̃‖ (larger = more confident)."""
        return self.embed(features).norm(dim=1)

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Pairwise distances [N, M] between embeddings ``x`` [N, dim] and ``y`` [M, dim] in this
        geometry's own metric (Euclidean here)."""
        return torch.cdist(x, y)

    def param_groups(self, temperature_lr: float | None = None) -> list[dict[str, Any]]:
        """Parameter groups that need their own optimiser settings.

        Returns one dict per group with keys ``params`` and ``name``; the temperature τ (if learned)
        gets ``weight_decay=0`` and ``lr=temperature_lr`` when given (seed 000 App. F, "TLR").
        Buffers (fixed polytope vertices, centres) are never included.
        """
        temperature = [m.tau for m in self.modules() if isinstance(m, InverseTemperature) and m.tau.requires_grad]
        temperature_ids = {id(p) for p in temperature}
        others = [p for p in self.parameters() if p.requires_grad and id(p) not in temperature_ids]
        groups: list[dict[str, Any]] = []
        if others:
            groups.append({"params": others, "name": "head"})
        if temperature:
            group: dict[str, Any] = {"params": temperature, "name": "temperature", "weight_decay": 0.0}
            if temperature_lr is not None:
                group["lr"] = check_float("temperature_lr", temperature_lr, minimum=0.0)
            groups.append(group)
        return groups

    def on_epoch_start(self, epoch: int) -> None:
        """Called by the trainer (or your loop) at the start of every epoch (0-based). No-op here;
        ArcFace uses it for the margin warm-up, SphereFace for λ annealing."""

    def init_from_data(self, features: torch.Tensor | Iterable[torch.Tensor]) -> None:
        """Called once before training with pre-logit features of the training data (a tensor
        [N, in_features] or an iterable of batches). No-op here; vMF sets its scale α (App. D)."""

    # ------------------------------------------------------------------ diagnostics
    def _check_loss(self, value: torch.Tensor) -> torch.Tensor:
        if validation_enabled() and not bool(torch.isfinite(value).all()):
            bad = [n for n, p in self.named_parameters() if not bool(torch.isfinite(p).all())]
            why = (
                f"its parameters {bad} hold NaN/inf (training diverged: lower the learning rate)"
                if bad
                else "the logits overflowed although features and parameters are finite"
            )
            raise FloatingPointError(f"{type(self).__name__}.loss is {float(value.detach())}: {why}")
        return value

    def extra_repr(self) -> str:
        parts = [
            f"in_features={self.in_features}",
            f"num_classes={self.num_classes}",
            f"dim={self.dim}",
            f"geometry={self.geometry!r}",
        ]
        parts.extend(self.extra_repr_args())
        return ", ".join(parts)

    def extra_repr_args(self) -> list[str]:
        """Head-specific ``name=value`` strings for ``repr`` (margins, β, λ, ...)."""
        return []
