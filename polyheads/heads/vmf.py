"""vMF: the von Mises–Fisher stochastic head (seed 000 §2.3.1, Eq. 5-8, 13; App. B-D, F).

The embedding and every class weight are vMF random variables (seed 000 Eq. 6):

    z   ~ vMF(μ = z̃/‖z̃‖,     κ = ‖z̃‖),      z̃ = α · (W x + b)   (α fixed, App. D)
    w_j ~ vMF(μ = w̃_j/‖w̃_j‖, κ = ‖w̃_j‖)

and the posterior is COSINE's (Eq. 3) with β = exp(τ) learned (App. F). Training minimises the
Jensen bound of Eq. 13 with ``num_samples`` reparameterised samples of z (10 in the seed):

    E_z[log Σ_j exp(log C_n(‖w̃_j‖) - log C_n(‖w̃_j + βz‖))] - β E[w_y]^T E[z]

At test time (eval mode) ``forward`` returns ``log E_{z,w}[softmax(β cos θ)]`` by Monte Carlo over z
and every w_j (§2.3.1); in train mode it returns the COSINE logits ``β cos θ_j`` between the mean
directions μ_z and μ_wj, for monitoring.

Initialisation (App. D). ``λ`` (``lam``, 0.4 by default; 0.7 in the seed's open-set Tables 9-11) sets
the target concentration of Eq. 14, ``κ* = λ(n-1)/(1-λ²)`` (where the upper bound h_n(κ*) = λ):

- class weights ``w̃_ji ~ N(0, σ²)``, ``σ = λ(n-1)/((1-λ²)√n)`` (Eq. 19), so ``E‖w̃_j‖ ≈ κ*``;
- the scale α: ``init_from_data(features)`` sets ``α = κ* / mean_x ‖W x + b‖`` so that the mean κ_z over
  the training data is exactly κ* -- Eq. 15's stated intent. Eq. 16 read literally
  (``α = κ* / (√n · mean |z̃_i|)``) assumes all coordinates have equal magnitude; for Gaussian-like
  embeddings ``√n E|z̃_i| = √(2/π) E‖z̃‖`` and the literal α overshoots κ* by ~25 % (tests/test_vmf.py
  measures it). We implement Eq. 15.
- before ``init_from_data`` is called, α holds a documented default: the same rule applied to
  standardised features (zero mean, unit variance), for which ``E‖W x + b‖ ≈ ‖W‖_F`` (``√in_features``
  without an embedding layer). Real backbone features are not standardised, so the first ``loss`` in
  training mode warns once until ``init_from_data`` has run (``polyheads.training.engine.
  init_heads_from_data`` calls it before the first step). α and whether it came from data are buffers:
  saved and restored with the state dict.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Iterable

import torch
from torch import nn

from .._checks import check_choice, check_float, check_int, check_tensor
from ..distributed.comm import all_reduce_sum, syncing_state
from ..functional.bessel import EXACT_MAX_DIM
from ..functional.vmf import _predictive_log_probs, _sample_vmf, _vmf_loss
from ..registry import register_head
from .base import _float32_math
from .cosine import SphericalHead

__all__ = ["VMFHead", "target_concentration", "weight_init_std"]

PREDICTIONS = ("monte_carlo", "mean")


def target_concentration(dim: int, lam: float) -> float:
    """κ* = λ(n-1)/(1-λ²): the concentration where Eq. 9's upper bound h_n(κ) equals λ (seed 000 Eq. 14)."""
    return lam * (dim - 1) / (1.0 - lam * lam)


def weight_init_std(dim: int, lam: float) -> float:
    """σ = λ(n-1)/((1-λ²)√n) of the class-weight initialisation, seed 000 Eq. 19."""
    return target_concentration(dim, lam) / math.sqrt(dim)


@register_head("vmf")
class VMFHead(SphericalHead):
    """vMF -- seed 000 §2.3.1: stochastic embedding and class weights, loss Eq. 13.

    Args:
        in_features, num_classes, dim: as for every head (``dim`` = n >= 2; 512 in the seed's
            retrieval runs, 128 for CIFAR, 3 for MNIST).
        lam: λ of App. D in (0, 1): the initial Bessel ratio A_n(κ) of embeddings and class weights.
        num_samples: samples of z for the loss and of (z, w) for the eval-mode prediction (10, §2.3.1).
        init_tau: initial τ = log β (App. F; 0 for fixed-set tasks, 2.773 in Tables 10-11).
        scale: fix β instead of learning it.
        exact_ratio: use the exact I_{n/2}/I_{n/2-1} (n <= 64) in the E[w_y]^T E[z] term instead of
            Eq. 10 (the log-normalisers stay Eq. 12, as in the seed).
        score_correction: add the rejection sampler's score-function term to the gradient in κ_z
            (Naesseth et al. 2017's g_cor, leave-one-out baseline over the samples): unbiased gradients
            where the seed's reparameterisation through the accepted proposal alone is biased (up to
            ~30 % in dE[z]/dκ at n = 3; docs/vmf.md). Off by default (the seed's choice); the loss value
            is the same either way.
        prediction: eval-mode ``forward``: ``"monte_carlo"`` (the seed's predictive, stochastic) or
            ``"mean"`` (β cos θ between mean directions: deterministic, exportable).
        embedding: ``False`` uses the features themselves as z̃ / α.

    Members beyond the contract: ``alpha`` (buffer), ``kappa_target`` (κ*), :meth:`sample` (embedding
    samples for retrieval, seed 000 §3.2 computes E_z[mAP@R(z)]), ``generator=`` on ``forward``/``loss``.
    ``embed()`` returns z̃ = α(Wx + b), the vMF natural parameter: ``‖embed(x)‖ = κ_z = confidence(x)``
    (seed 000 App. H) and retrieval by cosine uses the mean direction μ_z.
    """

    geometry = "spherical"
    retrieval_metric = "cosine"
    stochastic = True

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        dim: int | None = None,
        *,
        lam: float = 0.4,
        num_samples: int = 10,
        init_tau: float = 0.0,
        scale: float | None = None,
        exact_ratio: bool = False,
        score_correction: bool = False,
        prediction: str = "monte_carlo",
        embedding: bool = True,
    ) -> None:
        super().__init__(in_features, num_classes, dim, init_tau=init_tau, scale=scale, embedding=embedding)
        if self.dim < 2:
            raise ValueError(f"dim must be >= 2 for the vMF head (a distribution on S^(dim-1)), got {self.dim}")
        self.lam = check_float("lam", lam, minimum=0.0, maximum=1.0, min_inclusive=False, max_inclusive=False)
        self.num_samples = check_int("num_samples", num_samples, minimum=1)
        if not isinstance(exact_ratio, bool):
            raise TypeError(f"exact_ratio must be a bool, got {type(exact_ratio).__name__}")
        if exact_ratio and self.dim > EXACT_MAX_DIM:
            raise ValueError(f"exact_ratio=True needs dim <= {EXACT_MAX_DIM}, got dim={self.dim}")
        self.exact_ratio = exact_ratio
        if not isinstance(score_correction, bool):
            raise TypeError(f"score_correction must be a bool, got {type(score_correction).__name__}")
        self.score_correction = score_correction
        self.prediction = check_choice("prediction", prediction, PREDICTIONS)
        with torch.no_grad():
            self.weight.normal_(0.0, weight_init_std(self.dim, self.lam))  # Eq. 19
        self.register_buffer("alpha", torch.tensor(self._default_alpha()))
        self.register_buffer("alpha_from_data", torch.tensor(False))
        self._alpha_warning_done = False

    # ------------------------------------------------------------------ initialisation (App. D)
    @property
    def kappa_target(self) -> float:
        """κ* of Eq. 14: the initial mean concentration of embeddings and class weights."""
        return target_concentration(self.dim, self.lam)

    def _default_alpha(self) -> float:
        """α for standardised features: E‖Wx + b‖ ≈ ‖W‖_F (√in_features without an embedding layer)."""
        if isinstance(self.embedding, nn.Linear):
            expected_norm = float(self.embedding.weight.detach().double().norm())
        else:
            expected_norm = math.sqrt(self.in_features)
        return self.kappa_target / max(expected_norm, 1e-12)

    @torch.no_grad()
    def init_from_data(self, features: torch.Tensor | Iterable[Any]) -> None:
        """Set α so that the mean κ_z = ‖α(Wx + b)‖ over ``features`` equals κ* (seed 000 Eq. 14-15).

        ``features``: pre-logit features [N, in_features], or an iterable of such batches (items that
        are tuples/lists, e.g. ``(features, labels)``, contribute their first element). Call once
        before training; ``polyheads.training.engine.init_heads_from_data`` does. With an initialised
        process group the mean runs over every rank's features (call it on all ranks), so α is the same
        everywhere; ``polyheads.distributed.local_state()`` keeps it to this rank's features.
        """
        total = torch.zeros((), dtype=torch.float64)
        count = 0
        for batch in _feature_batches(features):
            x = self._prepare(batch)
            with _float32_math(x.device.type):
                raw = self.embedding(x)
            total += raw.norm(dim=1).double().sum().cpu()
            count += raw.shape[0]
        if syncing_state():  # the mean over every rank's features (a collective: call it on all ranks)
            summed = all_reduce_sum(torch.tensor([float(total), float(count)], dtype=torch.float64))
            total, count = summed[0], int(summed[1])
        if count == 0:
            raise ValueError("features is empty: init_from_data needs the training data's pre-logit features")
        mean_norm = float(total) / count
        if not math.isfinite(mean_norm) or mean_norm <= 0.0:
            raise ValueError(
                f"the embeddings of these features have mean norm {mean_norm}; α = κ*/mean‖z̃‖ needs a positive, "
                "finite mean (are the features all zero?)"
            )
        self.alpha.fill_(self.kappa_target / mean_norm)
        self.alpha_from_data.fill_(True)
        self._alpha_warning_done = True

    def _warn_if_default_alpha(self) -> None:
        if self._alpha_warning_done:
            return
        self._alpha_warning_done = True
        if not bool(self.alpha_from_data):
            warnings.warn(
                "VMFHead: training with the default scale α (App. D applied to standardised features); call "
                "head.init_from_data(train_features) once before training so the mean κ_z equals "
                f"κ* = {self.kappa_target:.4g} (polyheads.training.engine.init_heads_from_data does it)",
                UserWarning,
                stacklevel=3,
            )

    _before_training_loss = _warn_if_default_alpha  # HeadLoss warns as loss() does

    # ------------------------------------------------------------------ the geometry
    def embedding_from_features(self, x: torch.Tensor) -> torch.Tensor:
        """z̃ = α (W x + b), the natural parameter κ_z μ_z of the embedding's vMF (App. D)."""
        return self.alpha * self.embedding(x)

    def _generator(self, generator: torch.Generator | int | None, device: torch.device) -> torch.Generator | None:
        if generator is None or isinstance(generator, torch.Generator):
            return generator
        seed = check_int("generator", generator, minimum=0)
        return torch.Generator(device=device).manual_seed(seed)

    def forward(
        self, features: torch.Tensor, *, generator: torch.Generator | int | None = None, num_samples: int | None = None
    ) -> torch.Tensor:
        """Class scores [B, K]. Eval mode: ``log E_{z,w}[softmax(β cos θ)]`` by Monte Carlo with
        ``num_samples`` draws of z and of every w_j (seed 000 §2.3.1), or the mean logits with
        ``prediction="mean"``. Train mode: ``β cos θ_j`` between μ_z and μ_wj (monitoring).
        ``generator``: a ``torch.Generator`` or an integer seed for reproducible draws."""
        x = self._prepare(features)
        samples = self.num_samples if num_samples is None else check_int("num_samples", num_samples, minimum=1)
        gen = self._generator(generator, x.device)
        with _float32_math(x.device.type):
            theta = self.embedding_from_features(x)
            if self.training or self.prediction == "mean":
                return self._attach_embedding(self.logits_from_embedding(theta), theta)
            return _predictive_log_probs(theta, self.weight, self.beta, samples, gen)

    def loss(
        self, features: torch.Tensor, target: torch.Tensor, *, generator: torch.Generator | int | None = None
    ) -> torch.Tensor:
        """Seed 000 Eq. 13 with ``num_samples`` reparameterised samples of z, averaged over the batch."""
        x = self._prepare(features)
        target = self._check_target(target, x.shape[0])
        if self.training:
            self._warn_if_default_alpha()
        gen = self._generator(generator, x.device)
        with _float32_math(x.device.type):
            value = self.loss_from_embedding(self.embedding_from_features(x), target, generator=gen)
        return self._check_loss(value)

    def loss_from_embedding(
        self, z: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Eq. 13 from the natural parameters z̃ [B, n] (mean over the batch)."""
        kappa = z.norm(dim=1)
        if self.score_correction:
            samples, score = _sample_vmf(z, kappa, self.num_samples, generator, score=True)
        else:
            samples, score = _sample_vmf(z, kappa, self.num_samples, generator), None
        return _vmf_loss(samples, z, self.weight, self.beta, target, self.exact_ratio, score, uniform=True).mean()

    @torch.no_grad()
    def sample(
        self, features: torch.Tensor, num_samples: int | None = None, *, generator: torch.Generator | int | None = None
    ) -> torch.Tensor:
        """Samples of the embedding z ~ vMF(μ_z, κ_z) -> [S, B, n] (unit vectors), e.g. for retrieval as
        E_z[mAP@R(z)] (seed 000 §3.2)."""
        x = self._prepare(features)
        samples = self.num_samples if num_samples is None else check_int("num_samples", num_samples, minimum=1)
        gen = self._generator(generator, x.device)
        with _float32_math(x.device.type):
            theta = self.embedding_from_features(x)
            return _sample_vmf(theta, theta.norm(dim=1), samples, gen)

    def confidence(self, features: torch.Tensor) -> torch.Tensor:
        """κ_z = ‖z̃‖ [B] (seed 000 Table 1, Fig. 3; larger = more certain)."""
        return self.embed(features).norm(dim=1)

    def extra_repr_args(self) -> list[str]:
        return super().extra_repr_args() + [
            f"lam={self.lam:g}",
            f"num_samples={self.num_samples}",
            f"alpha={float(self.alpha):.4g}",
            f"alpha_from_data={bool(self.alpha_from_data)}",
            f"exact_ratio={self.exact_ratio}",
            f"score_correction={self.score_correction}",
            f"prediction={self.prediction!r}",
        ]


def _feature_batches(features: Any) -> Iterable[torch.Tensor]:
    if isinstance(features, torch.Tensor):
        yield features
        return
    if not isinstance(features, Iterable):
        raise TypeError(
            f"features must be a tensor [N, in_features] or an iterable of batches, got {type(features).__name__}"
        )
    for item in features:
        if isinstance(item, (tuple, list)):
            if not item:
                raise ValueError("features yielded an empty tuple; expected (features, ...) batches")
            item = item[0]
        check_tensor("features", item, floating=True)
        yield item
