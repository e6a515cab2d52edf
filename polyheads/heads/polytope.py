"""Fixed Regular Polytope heads (seed 002, "Margin-RePoNet"): ``simplex``, ``orthoplex``, ``cube``, and
the Hadamard fixed classifier of Hoffer et al. (seed 002 ref. [2]) as ``hadamard``.

The classifier is *not learned*: its K class vectors are the vertices of a regular polytope
(:func:`polyheads.functional.polytope_vertices`, seed 002 Eq. 3-5), kept in a registered buffer --
saved in ``state_dict``, moved by ``.to()``, never a parameter, never seen by an optimiser. Only the
embedding layer ``in_features -> d`` learns, with d from the class count (Eq. 7).

    logits (forward):   κ cos θ_j                                      (seed 002 Eq. 8, κ = 30)
    loss:               -log e^{κ cos(θ_y + m)} / (e^{κ cos(θ_y + m)} + Σ_{j≠y} e^{κ cos θ_j})   (Eq. 9)

with θ_j the angle between the embedding z̃ and vertex w_j, and the margin set in closed form to
m = φ (Eq. 10-12): the angle between a vertex and its nearest vertices, so that the ArcFace decision
boundary is pushed all the way to the vertex -- features maximally separated *and* maximally compact.
``margin=0.0`` is the plain RePoNet of Eq. 6 (with Eq. 8's normalisation).

Which fallback for θ_y > π - m, and why ``"standard"``
------------------------------------------------------
The simplex's φ = arccos(-1/d) exceeds π/2 (96.4° for K = 10), so at initialisation most features
(θ_y ≈ 90°) have θ_y + m > π, where the literal cos(θ_y + m) turns back up and would reward moving
*away* from the own vertex. Of the remedies of :func:`polyheads.functional.additive_angular_margin`:

- ``"none"`` is that literal, non-monotonic form: wrong here;
- ``"easy"`` keeps cos(θ_y + m) while cos θ_y > 0, i.e. for θ_y up to π/2 -- past π - m when m > π/2,
  so it is non-monotonic on (π - m, π/2) for the simplex;
- ``"standard"`` (``cos θ - m sin m`` past π - m) keeps the target logit decreasing in θ_y on all of
  [0, π] (its step at π - m goes down) for every m with cos m + m sin m >= 1, i.e. m <= 2.33 rad (133.6°;
  a larger float margin warns); every φ of these heads with K >= 3 is <= 120° (three or more unit
  vectors cannot all be further apart). Its gradient never vanishes.

So the polytope heads default to ``"standard"``.

K = 2: every kind gives two antipodal vertices (φ = π), and m = π makes Eq. 9 constant
(cos(θ + π) = -cos θ is exactly the other class's logit), so ``margin="phi"`` uses m = π/2 there. The
embedding is at least 2-D for K = 2 (a 1-D feature normalised to unit length is ±1 and has no gradient).
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import Any, ClassVar

import torch

from .._checks import check_choice, check_float, check_int
from ..functional import cosine_distance, l2_normalize
from ..functional.margins import (
    ANGULAR_FALLBACKS,
    additive_angular_margin,
    margin_cross_entropy,
    margin_cross_entropy_from_logits,
    margin_logits,
)
from ..functional.polytopes import polytope_capacity, polytope_dim, polytope_min_angle, polytope_vertices
from ..registry import register_head
from .base import Head

__all__ = [
    "PolytopeHead",
    "SimplexHead",
    "OrthoplexHead",
    "CubeHead",
    "HadamardHead",
    "MEMORY_WARNING_BYTES",
    "STANDARD_FALLBACK_MAX_MARGIN",
]

#: a vertex buffer larger than this (bytes) that grows like K² warns at construction
MEMORY_WARNING_BYTES = 64 * 2**20

#: the largest margin for which the "standard" fallback keeps the target logit monotone in θ:
#: the root of cos m + m sin m = 1 (2.3311 rad = 133.6°)
STANDARD_FALLBACK_MAX_MARGIN = 2.331122370414423


def _identity(cos: torch.Tensor) -> torch.Tensor:
    return cos


def _megabytes(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:,.1f} MB" if n_bytes < 1e9 else f"{n_bytes / 1e9:,.2f} GB"


class PolytopeHead(Head):
    """Shared implementation of the fixed-classifier heads (seed 002). Subclasses set ``kind``.

    Args:
        in_features: width of the pre-logit features.
        num_classes: K >= 2.
        dim: embedding width d; ``None`` -> seed 002 Eq. 7 (simplex K-1, orthoplex ⌈K/2⌉, cube
            ⌈log₂ K⌉, hadamard 2^⌈log₂ K⌉; at least 2). A larger d is allowed; a smaller one raises
            ``ValueError`` naming the minimum.
        scale: κ, the fixed scale of the normalised features (Eq. 8; default 30 as in seed 002).
        margin: ``"phi"`` (default): m = φ, the smallest angle between two vertices
            (:func:`polyheads.functional.polytope_min_angle`, = Eq. 10-12 with Eq. 7's d); ``0.0``:
            plain RePoNet (Eq. 6/8); or any angle in [0, π) (radians).
        fallback: the additive-angular-margin remedy for θ_y > π - m (default ``"standard"``; see the
            module docstring for why).
        margin_warmup_epochs: epochs with m = 0 first (the ArcFace warm-up of seed 000 App. E.3;
            default 0, as seed 002).
        embedding: ``False`` uses the features themselves as the embedding (``dim = in_features``).

    Attributes: ``vertices`` (buffer [K, d], unit rows), ``phi`` (φ in radians), ``margin`` (m),
    ``scale`` (κ), ``kind``.
    """

    kind: ClassVar[str] = ""
    geometry = "spherical"
    retrieval_metric = "cosine"

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        dim: int | None = None,
        *,
        scale: float = 30.0,
        margin: float | str = "phi",
        fallback: str = "standard",
        margin_warmup_epochs: int = 0,
        embedding: bool = True,
    ) -> None:
        super().__init__(in_features, num_classes, dim, embedding=embedding)
        k = self.num_classes
        self.scale = check_float("scale", scale, minimum=0.0, min_inclusive=False)
        self.fallback = check_choice("fallback", fallback, ANGULAR_FALLBACKS)
        self.margin_warmup_epochs = check_int("margin_warmup_epochs", margin_warmup_epochs, minimum=0)
        self.epoch = 0
        self.phi = polytope_min_angle(self.kind, k, self.dim)
        if isinstance(margin, str):
            check_choice("margin", margin, ("phi",))
            self.margin_rule = "phi"
            self.margin = self.phi if self.phi < math.pi else math.pi / 2
        else:
            self.margin_rule = "fixed"
            self.margin = check_float("margin", margin, minimum=0.0, maximum=math.pi, max_inclusive=False)
        if self.fallback == "standard" and self.margin > STANDARD_FALLBACK_MAX_MARGIN:
            warnings.warn(
                f"margin={self.margin:.4g} rad exceeds {STANDARD_FALLBACK_MAX_MARGIN:.4f} (133.6°): past θ = π - m the "
                "'standard' fallback then steps *up*, so the loss rewards some features for moving away from their vertex",
                UserWarning,
                stacklevel=3,
            )
        self._warn_memory()
        self.register_buffer("vertices", self._exact_vertices(torch.get_default_dtype()), persistent=True)
        # the buffer holds the closed-form vertices (False after loading a checkpoint whose differ)
        self._canonical = True

    # ------------------------------------------------------------------ the dimension (seed 002 Eq. 7)
    def default_dim(self, in_features: int, num_classes: int) -> int:
        """The smallest width holding ``num_classes`` vertices (seed 002 Eq. 7, at least 2)."""
        return max(polytope_dim(self.kind, num_classes), 2)

    def check_dim(self, dim: int, num_classes: int, embedding: bool) -> None:
        minimum = self.default_dim(self.in_features, num_classes)
        if dim < minimum:
            raise ValueError(
                f"dim={dim} is too small for the {self.kind} head with num_classes={num_classes}: it needs dim >= "
                f"{minimum} ({self._rule(num_classes)}; dim={dim} holds at most {polytope_capacity(self.kind, dim)} classes)"
                + (" -- with embedding=False, dim is in_features" if not embedding else "")
            )

    # ------------------------------------------------------------------ vertices
    def _rule(self, k: int) -> str:
        rule = {
            "simplex": "seed 002 Eq. 7: d = K - 1",
            "orthoplex": "seed 002 Eq. 7: d = ceil(K/2)",
            "cube": "seed 002 Eq. 7: d = ceil(log2 K)",
            "hadamard": "Sylvester Hadamard order 2^ceil(log2 K), seed 002 ref. [2]",
        }[self.kind]
        return rule + (", and at least 2: a 1-D unit feature has no gradient" if polytope_dim(self.kind, k) < 2 else "")

    def _exact_vertices(self, dtype: torch.dtype, device: torch.device | str | None = None) -> torch.Tensor:
        return polytope_vertices(self.kind, self.num_classes, self.dim, dtype=dtype, device=device)

    def _warn_memory(self) -> None:
        k, d = self.num_classes, self.dim
        n_bytes = k * d * torch.finfo(torch.get_default_dtype()).bits // 8
        if self.kind == "cube" or n_bytes <= MEMORY_WARNING_BYTES:
            return
        cube_d = max(polytope_dim("cube", k), 2)
        warnings.warn(
            f"the {self.kind} head with num_classes={k} keeps a fixed {k} x {d} vertex buffer ({k * d:,} floats, "
            f"growing like K²): {_megabytes(n_bytes)} in {torch.get_default_dtype()}, plus a [B, {k}] x [{k}, {d}] "
            f"product every step and {d} x {self.in_features} embedding weights. A 'cube' head needs d = {cube_d}: "
            f"{k} x {cube_d} = {_megabytes(k * cube_d * n_bytes / (k * d))}.",
            UserWarning,
            stacklevel=3,
        )

    def _apply(self, fn: Any, recurse: bool = True) -> "PolytopeHead":
        before = getattr(self, "vertices", None)
        super()._apply(fn, recurse)
        after = getattr(self, "vertices", None)
        if before is None or after is None:  # during construction
            return self
        if after.dtype != before.dtype and after.is_floating_point() and self._canonical:
            # .to(float64) / .double() / .half(): rebuild from the closed form, never up-cast rounded values
            self.vertices = self._exact_vertices(after.dtype, after.device)
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        loaded = state_dict.get(prefix + "vertices")
        if not isinstance(loaded, torch.Tensor) or loaded.shape != self.vertices.shape:
            return  # missing or mis-shaped: torch has reported it
        exact = self._exact_vertices(torch.float64)
        tolerance = 8 * torch.finfo(loaded.dtype).eps if loaded.is_floating_point() else 0.0
        if torch.allclose(loaded.detach().to("cpu", torch.float64), exact, rtol=0.0, atol=tolerance):
            with torch.no_grad():
                self.vertices.copy_(exact)  # exact in the buffer's dtype, whatever precision was saved
            self._canonical = True
        else:
            self._canonical = False
            warnings.warn(
                f"{type(self).__name__}: the checkpoint's vertices differ from the closed-form {self.kind} vertices "
                "of this polyheads version; keeping the checkpoint's (the features were trained against them)",
                UserWarning,
                stacklevel=2,
            )

    # ------------------------------------------------------------------ margin schedule
    def on_epoch_start(self, epoch: int) -> None:
        """Record the (0-based) epoch; the margin is off while ``epoch < margin_warmup_epochs``."""
        self.epoch = check_int("epoch", epoch, minimum=0)

    @property
    def current_margin(self) -> float:
        """The margin in effect now (0 during the warm-up epochs)."""
        return self.margin if self.epoch >= self.margin_warmup_epochs else 0.0

    def target_function(self):  # type: ignore[no-untyped-def]
        """``cos θ_y -> cos(θ_y + m)`` with the head's fallback (identity when m = 0)."""
        m = self.current_margin
        return functools.partial(additive_angular_margin, margin=m, fallback=self.fallback) if m > 0 else _identity

    # ------------------------------------------------------------------ logits and loss
    def cosines(self, z: torch.Tensor) -> torch.Tensor:
        """cos θ_j between each embedding and each (unit) vertex -> [B, K]."""
        return l2_normalize(z) @ self.vertices.t()

    def logits_from_embedding(self, z: torch.Tensor) -> torch.Tensor:
        """``κ cos θ_j`` (seed 002 Eq. 8, no margin: the prediction)."""
        return self.scale * self.cosines(z)

    def training_logits(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Label-aware logits [B, K]: ``κ cos(θ_y + m)`` on the target, ``κ cos θ_j`` elsewhere (Eq. 9)."""
        return margin_logits(z, self.vertices, target, self.target_function(), self.scale)

    def loss_from_embedding(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Seed 002 Eq. 9 (mean over the batch), fused: ``functional.margin_cross_entropy``."""
        return margin_cross_entropy(z, self.vertices, target, self.target_function(), self.scale)

    # ------------------------------------------------------------------ the objective from returned logits (HeadLoss)
    loss_needs_embedding = False  # κ is fixed: cos θ_y = logit_y / κ

    def loss_from_logits(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        embedding: torch.Tensor | None = None,
        *,
        label_smoothing: float = 0.0,
    ) -> torch.Tensor:
        """Eq. 9 from the logits ``forward`` returned (κ cos θ_j): the margin on cos θ_y = logit_y / κ;
        probability targets (``margin=0.0`` only) give the soft cross-entropy of Eq. 8's logits."""
        if target.is_floating_point():
            return torch.nn.functional.cross_entropy(logits, target, label_smoothing=label_smoothing)
        return margin_cross_entropy_from_logits(logits, target, self.target_function(), self.scale, label_smoothing)

    def soft_target_refusal(self) -> str | None:
        if self.margin == 0.0:
            return None
        return (
            f"the margin m={self.margin:.4g} acts on the one target class's logit (cos θ_y -> cos(θ_y + m), seed 002 "
            "Eq. 9); a probability target has no single y (margin=0.0, plain RePoNet, accepts them)"
        )

    def label_smoothing_refusal(self) -> str | None:
        return None

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cosine distance ``1 - cos`` (the spherical retrieval metric)."""
        return cosine_distance(x, y)

    def extra_repr_args(self) -> list[str]:
        margin = f"margin={self.margin:.4g}" + (" (phi)" if self.margin_rule == "phi" else "")
        parts = [f"kind={self.kind!r}", f"scale={self.scale:g}", margin]
        if self.fallback != "standard":
            parts.append(f"fallback={self.fallback!r}")
        if self.margin_warmup_epochs:
            parts.append(f"margin_warmup_epochs={self.margin_warmup_epochs}")
        return parts


@register_head("simplex")
class SimplexHead(PolytopeHead):
    """Margin-RePoNet with the d-Simplex (seed 002 Eq. 3): d = K - 1, every pair of the K vertices at
    cos = -1/d, m = φ_s = arccos(-1/d) (Eq. 10). The best possible separation of K classes; its
    vertex buffer is K(K-1) floats (warns above 64 MiB)."""

    kind = "simplex"


@register_head("orthoplex")
class OrthoplexHead(PolytopeHead):
    """Margin-RePoNet with the d-Orthoplex (seed 002 Eq. 4): ±e_i, d = ⌈K/2⌉, m = φ_o = π/2 (Eq. 11)."""

    kind = "orthoplex"


@register_head("cube")
class CubeHead(PolytopeHead):
    """Margin-RePoNet with the d-Cube (seed 002 Eq. 5): vertices of [-1/√d, 1/√d]^d, d = ⌈log₂ K⌉,
    m = φ_c = arccos((d-2)/d) (Eq. 12). The most compact: K = 10^6 classes in d = 20, a K x 20 buffer."""

    kind = "cube"


@register_head("hadamard")
class HadamardHead(PolytopeHead):
    """The fixed Hadamard classifier of Hoffer et al. (seed 002 ref. [2]): the first K rows of the
    Sylvester matrix of order d = 2^⌈log₂ K⌉, scaled to unit norm (pairwise orthogonal, φ = π/2),
    trained with the same normalised margin loss (Eq. 9) as the polytope heads."""

    kind = "hadamard"
