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
import weakref
from contextlib import contextmanager
from typing import Any, ClassVar, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_features, check_float, check_int, check_probabilities, check_target, check_tensor, validation_enabled

__all__ = ["Head", "InverseTemperature", "default_embedding_dim"]

DEFAULT_MAX_DIM = 512

#: attribute of the logits a head returns in training mode: (weakref to the head, embedding z of that
#: forward) -- what :meth:`Head.loss_from_output` (``polyheads.HeadLoss``) reads; it lives exactly as long
#: as the logits tensor, so it can never be stale and nothing is kept on the module
EMBEDDING_ATTR = "_polyheads_embedding"


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
    #: a wrapper around another registered head (``sharded``): not a geometry of its own, so
    #: ``tools/compare.py --heads all`` leaves it out
    wraps_head: ClassVar[bool] = False
    #: set by @register_head
    head_name: ClassVar[str] = ""

    def __init__(self, in_features: int, num_classes: int, dim: int | None = None, *, embedding: bool = True) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features, minimum=1)
        self.num_classes = check_int("num_classes", num_classes, minimum=2)
        if embedding:
            self.dim = self.default_dim(self.in_features, self.num_classes) if dim is None else check_int("dim", dim, minimum=1)
        else:
            if dim is not None and check_int("dim", dim, minimum=1) != self.in_features:
                raise ValueError(f"dim must equal in_features={self.in_features} when embedding=False, got {dim}")
            self.dim = self.in_features
        self.check_dim(self.dim, self.num_classes, embedding)
        if embedding:
            self.embedding: nn.Module = nn.Linear(self.in_features, self.dim)
            nn.init.xavier_uniform_(self.embedding.weight)
            nn.init.zeros_(self.embedding.bias)
        else:
            self.embedding = nn.Identity()

    def default_dim(self, in_features: int, num_classes: int) -> int:
        """The embedding width when ``dim`` is not given (:func:`default_embedding_dim`; fixed polytope
        heads take it from the class count, seed 002 Eq. 7)."""
        return default_embedding_dim(in_features)

    def check_dim(self, dim: int, num_classes: int, embedding: bool) -> None:
        """Raise ``ValueError`` if the geometry cannot hold ``num_classes`` classes in ``dim`` dimensions
        (no constraint here; the polytope heads have a minimum)."""

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
            z = self.embedding_from_features(x)
            return self._attach_embedding(self.logits_from_embedding(z), z)

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

    # ------------------------------------------------------------------ the objective from the returned logits
    def loss_from_output(
        self, output: torch.Tensor, target: torch.Tensor, *, label_smoothing: float = 0.0
    ) -> torch.Tensor:
        """The training objective from the logits ``output`` [B, K] this head's ``forward`` returned in
        training mode -- equal to :meth:`loss` on the same batch, without a second forward pass (what
        ``polyheads.HeadLoss`` calls, so that loops which only see ``criterion(output, target)`` train
        label-aware heads).

        ``target``: class indices [B], or class probabilities [B, K] (mixup / cutmix; only heads whose
        :meth:`soft_target_refusal` is ``None``). ``label_smoothing`` in [0, 1) as
        ``torch.nn.functional.cross_entropy`` (refused where :meth:`label_smoothing_refusal` says why).
        Heads whose objective is not a function of their logits (:attr:`loss_needs_embedding`) read the
        embedding that the same forward attached to ``output``; anything else (a detached copy, eval-mode
        logits, another head's logits) raises ``ValueError``.
        """
        check_tensor("output", output, floating=True, ndim=2)
        if output.shape[1] != self.num_classes:
            raise ValueError(
                f"output must be the logits [B, {self.num_classes}] of this head, got shape {list(output.shape)}"
            )
        label_smoothing = check_float("label_smoothing", label_smoothing, minimum=0.0, maximum=1.0, max_inclusive=False)
        name = self.head_name or type(self).__name__
        if isinstance(target, torch.Tensor) and target.is_floating_point() and target.ndim == 2:
            why = self.soft_target_refusal()
            if why is not None:
                smoothing = "; label smoothing alone is HeadLoss(label_smoothing=...)" if self.label_smoothing_refusal() is None else ""
                raise ValueError(
                    f"head {name!r} refuses probability targets [B, K] (mixup / cutmix / smoothed one-hot): {why}. "
                    f"Train it with class indices [B] (no mixup/cutmix){smoothing}"
                )
            target = check_probabilities(target, self.num_classes, output.shape[0])
        else:
            target = self._check_target(target, output.shape[0])
        if label_smoothing:
            why = self.label_smoothing_refusal()
            if why is not None:
                raise ValueError(f"head {name!r} refuses label_smoothing={label_smoothing:g}: {why}")
        embedding = self._embedding_of(output) if self.loss_needs_embedding else None
        if self.training:
            self._before_training_loss()
        dtype = self._param_dtype()
        logits = output if output.dtype == dtype else output.to(dtype)
        with _float32_math(logits.device.type):
            value = self.loss_from_logits(logits, target, embedding, label_smoothing=label_smoothing)
        return self._check_loss(value)

    def loss_from_logits(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        embedding: torch.Tensor | None = None,
        *,
        label_smoothing: float = 0.0,
    ) -> torch.Tensor:
        """The objective from validated logits [B, K] (and, when :attr:`loss_needs_embedding`, the
        embedding z [B, dim] of the same forward). Default: the cross-entropy of the logits when that is the
        head's objective (it overrides neither :meth:`training_logits`, :meth:`loss_from_embedding` nor
        :meth:`loss`), else :meth:`loss_from_embedding` of the embedding. Margin heads override this to apply
        the margin to the returned logits."""
        if self._loss_is_logit_cross_entropy():
            return F.cross_entropy(logits, target, label_smoothing=label_smoothing)
        if embedding is None:
            raise ValueError(f"{type(self).__name__}.loss_from_logits needs the embedding of the forward pass")
        return self.loss_from_embedding(embedding, target)

    def _before_training_loss(self) -> None:
        """Called by :meth:`loss_from_output` in training mode before the objective (no-op here; vMF warns
        about its default scale α as its :meth:`loss` does)."""

    @property
    def loss_needs_embedding(self) -> bool:
        """Whether :meth:`loss_from_logits` needs the embedding z of the forward pass (its objective is not
        a function of the logits alone: SphereFace's ‖z‖, vMF's samples of z, the centre and triplet terms).
        Such heads attach z to the logits they return in training mode."""
        return not self._loss_is_logit_cross_entropy()

    def soft_target_refusal(self) -> str | None:
        """``None`` if the objective is defined for probability targets [B, K] (mixup / cutmix), else why not."""
        if self._loss_is_logit_cross_entropy():
            return None
        return f"{type(self).__name__}'s objective is defined for one class index per sample"

    def label_smoothing_refusal(self) -> str | None:
        """``None`` if the objective takes ``label_smoothing``, else why not."""
        if self._loss_is_logit_cross_entropy():
            return None
        return f"{type(self).__name__}'s objective is not a cross-entropy of its logits alone"

    @classmethod
    def _loss_is_logit_cross_entropy(cls) -> bool:
        """True when the objective is plain cross-entropy of ``forward``'s logits (nothing label-aware)."""
        return (
            cls.training_logits is Head.training_logits
            and cls.loss_from_embedding is Head.loss_from_embedding
            and cls.loss is Head.loss
        )

    def _attach_embedding(self, logits: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """In training mode, attach the embedding z of this forward to the returned logits for
        :meth:`loss_from_output` (only heads with :attr:`loss_needs_embedding`). Nothing is stored on the
        module: the reference dies with the logits (no stale cache, no memory held in eval)."""
        if self.training and self.loss_needs_embedding:
            setattr(logits, EMBEDDING_ATTR, (weakref.ref(self), z))
        return logits

    def _embedding_of(self, output: torch.Tensor) -> torch.Tensor:
        stash = getattr(output, EMBEDDING_ATTR, None)
        name = self.head_name or type(self).__name__
        if stash is None:
            raise ValueError(
                f"head {name!r}: its objective needs the embedding of the forward pass that produced output, and "
                "output carries none. Pass the logits exactly as the model returned them in training mode "
                "(model.train(); output = model(x)) -- not a copy, a detached or converted tensor, eval-mode "
                "logits, or an average of two heads' logits; DistributedDataParallel(find_unused_parameters=True) "
                "also replaces the output tensor (keep the default False)"
            )
        owner, z = stash
        if owner() is not self:
            raise ValueError(f"output was produced by another head, not by this {type(self).__name__} ({name!r})")
        if z.shape[0] != output.shape[0]:  # pragma: no cover - the attribute is set on this very tensor
            raise ValueError(f"the attached embedding has {z.shape[0]} rows, output has {output.shape[0]}")
        return z

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

