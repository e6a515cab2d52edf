"""Class-sharded heads: each rank holds K/world of the class weights (insightface's PartialFC idea,
on torch.distributed), with loss and gradients equal to the unsharded head's.

    model = timm.create_model("resnet50", num_classes=1_000_000, head="sharded",
                              head_kwargs={"base": "arcface", "margin": 0.5, "sample_rate": 0.1})

``ShardedHead`` wraps a registered head (``base``: standard, cosine, normface, arcface, cosface,
sphereface, vmf) built for this rank's classes ``[start, end)`` only. Its embedding layer and
temperature are replicated (every rank holds them, DDP keeps them equal); its class weights are
not. A training step (:meth:`ShardedHead.loss`):

1. embeddings (and labels) of every rank are all-gathered -> the global batch of N rows;
2. each rank computes the logits of *its* classes for all N rows with the base head's own
   geometry (seed 000 Eq. 1 / Eq. 3, the margins of Eq. 4 and CosFace/SphereFace on the target
   entries this rank owns, the vMF bound of Eq. 13);
3. the softmax normaliser is a distributed max / log-sum-exp (:mod:`polyheads.distributed.loss`),
   the target term is summed from the rank owning the class.

The value is the unsharded head's loss on the global batch; the class-weight gradients are exact
on every rank; replicated tensors receive per-rank shares whose *sum* is the gradient, so under
DistributedDataParallel the trainer sums them (:func:`~polyheads.distributed.sum_allreduce_hook`)
and excludes the class weights from DDP.

``sample_rate < 1`` is PartialFC's negative-class sampling: in training, each rank keeps every
class of the global batch it owns plus random other classes, ``ceil(sample_rate · K_r)`` in all, and
the softmax runs over the sampled classes only (an approximation of the loss; exact at 1.0).
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Iterable

import torch
from torch import nn

from .._checks import check_float, check_int
from ..functional import l2_normalize, vmf_bound_logsumexp, vmf_mean
from ..functional.vmf import _PREDICTIVE_ELEMENTS, _sample_vmf
from .base import Head, _float32_math
from .cosine import SphericalHead
from .margin import MarginHead, SphereFaceHead
from .standard import StandardHead
from .vmf import VMFHead, weight_init_std
from ..registry import create_head, register_head, resolve_head_name
from ..distributed.comm import (
    broadcast_seed,
    gather_rows,
    gather_rows_nograd,
    gather_rows_to,
    get_rank,
    get_world_size,
    reduce_partials,
    shard_bounds,
)
from ..distributed.loss import combine_logsumexp, owned_targets, scaled_cosines, sharded_cross_entropy, sharded_logsumexp

__all__ = ["ShardedHead", "SHARDABLE_HEADS", "sharded_heads", "full_state_dict", "INIT_CHUNK_ROWS"]

#: registered heads that can be sharded (the polytope heads have no class parameters to shard)
SHARDABLE_HEADS = ("standard", "cosine", "normface", "arcface", "cosface", "sphereface", "vmf")

#: class weights are initialised in chunks of this many rows, chunk c from seed (s, c): the full
#: matrix is the same whatever the number of ranks
INIT_CHUNK_ROWS = 4096


def _family(head: Head) -> str:
    if isinstance(head, VMFHead):
        return "vmf"
    if isinstance(head, SphericalHead):
        return "spherical"
    if type(head) is StandardHead:
        return "standard"
    raise ValueError(f"{type(head).__name__} cannot be sharded")  # pragma: no cover - guarded by SHARDABLE_HEADS


def _chunk_generator(seed: int, chunk: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + chunk) % (2**63 - 1))


@register_head("sharded")
class ShardedHead(Head):
    """A registered head whose K class weights are split over the ranks of a process group
    (see the module docstring). Without a process group (or with one rank) it is the base head.

    Args:
        in_features, num_classes, dim: as for every head; ``num_classes`` is the total K.
        base: the head to shard, one of :data:`SHARDABLE_HEADS` (default ``"standard"``).
        sample_rate: in (0, 1]; < 1 enables PartialFC negative-class sampling in training.
        process_group: the group the classes are split over (default: the whole world). Build the
            head on every rank of the group: construction agrees on an initialisation seed.
        **base_kwargs: the base head's own arguments (``margin``, ``init_tau``, ``scale``, ``lam``, ...).

    Attributes: ``base`` (name), ``local`` (the base head over this rank's classes), ``class_start``,
    ``class_end``, ``rank``, ``world_size``, ``sample_rate``; ``last_sampled`` (global indices of the
    classes of the last sampled training step, ``None`` without sampling). Attributes of the base
    head (``beta``, ``margin``, ``alpha``, ...) are reachable on the wrapper.

    Class weights are initialised with the base head's distribution for the full [K, d] matrix
    (Xavier-uniform with K's fan, or vMF's N(0, σ²) of seed 000 Eq. 19), chunk by chunk from one seed
    broadcast from rank 0, so the full matrix does not depend on the number of ranks. ``state_dict``
    holds this rank's shard; ``load_state_dict`` also takes the full [K, d] matrix (a checkpoint from
    any number of ranks) and keeps this rank's rows. :func:`full_state_dict` / :meth:`unsharded_state_dict`
    gather it back.
    """

    wraps_head = True

    stochastic: ClassVar[bool] = False  # the instance attribute follows the base head

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        dim: int | None = None,
        *,
        base: str = "standard",
        sample_rate: float = 1.0,
        process_group: Any = None,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(in_features, num_classes, embedding=False)  # the checks and attributes of every head
        self._modules.pop("embedding")  # the embedding layer is the base head's (the property below)
        name = resolve_head_name(base)
        if name not in SHARDABLE_HEADS:
            why = " (fixed polytope heads hold no class parameters: use them unsharded)" if name in (
                "simplex", "orthoplex", "cube", "hadamard") else ""
            raise ValueError(f"base must be one of {list(SHARDABLE_HEADS)}, got {base!r}{why}")
        self.sample_rate = check_float("sample_rate", sample_rate, minimum=0.0, maximum=1.0, min_inclusive=False)
        self.process_group = process_group
        self.rank, self.world_size = get_rank(process_group), get_world_size(process_group)
        if self.num_classes < 2 * self.world_size:
            raise ValueError(
                f"num_classes={self.num_classes} is too small to shard over {self.world_size} ranks "
                f"(every rank needs >= 2 classes)"
            )
        self.class_start, self.class_end = shard_bounds(self.num_classes, self.rank, self.world_size)
        self.base = name
        self.base_kwargs = dict(base_kwargs)
        local_classes = self.class_end - self.class_start
        self.local = create_head(name, in_features, local_classes, dim=dim, **base_kwargs)
        self.dim = self.local.dim
        self.geometry = self.local.geometry
        self.retrieval_metric = self.local.retrieval_metric
        self.stochastic = self.local.stochastic
        self.family = _family(self.local)
        if self.family == "vmf" and self.local.score_correction:
            raise ValueError("score_correction=True is not supported by the sharded vMF head; use the vmf head")
        self.last_sampled: torch.Tensor | None = None
        self._init_class_weights(broadcast_seed(int(torch.randint(0, 2**62, (1,))), process_group))

    # ------------------------------------------------------------------ construction
    @torch.no_grad()
    def _init_class_weights(self, seed: int) -> None:
        weight = self.local.weight
        k, d = self.num_classes, weight.shape[1]
        if self.family == "vmf":
            draw = lambda rows, gen: torch.randn(rows, d, generator=gen).mul_(weight_init_std(d, self.local.lam))  # noqa: E731
        else:  # Xavier-uniform of the full [K, d] matrix (nn.init.xavier_uniform_, gain 1)
            bound = math.sqrt(6.0 / (k + d))
            draw = lambda rows, gen: torch.rand(rows, d, generator=gen).mul_(2 * bound).sub_(bound)  # noqa: E731
        start, end = self.class_start, self.class_end
        for chunk in range(start // INIT_CHUNK_ROWS, (end - 1) // INIT_CHUNK_ROWS + 1):
            lo = chunk * INIT_CHUNK_ROWS
            rows = draw(min(INIT_CHUNK_ROWS, k - lo), _chunk_generator(seed, chunk))
            a, b = max(start, lo), min(end, lo + rows.shape[0])
            weight[a - start : b - start].copy_(rows[a - lo : b - lo])

    @property
    def embedding(self) -> nn.Module:  # type: ignore[override]
        """The replicated embedding layer (the base head's)."""
        return self.local.embedding

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            local = self.__dict__.get("_modules", {}).get("local")
            if local is None or name.startswith("_"):
                raise
            return getattr(local, name)

    def sharded_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters split over the ranks (name relative to this head -> this rank's shard)."""
        return {"local.weight": self.local.weight}

    # ------------------------------------------------------------------ state
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[no-untyped-def]
        key = prefix + "local.weight"
        value = state_dict.get(key)
        shard = self.class_end - self.class_start
        if isinstance(value, torch.Tensor) and value.ndim == 2 and value.shape[0] == self.num_classes != shard:
            state_dict[key] = value[self.class_start : self.class_end]  # a full matrix: keep this rank's rows
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def load_unsharded(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the ``state_dict`` of an unsharded ``base`` head (keys ``weight``, ``embedding.weight``,
        ...), keeping this rank's class rows."""
        self.load_state_dict({f"local.{k}": v for k, v in state_dict.items()})

    def unsharded_state_dict(self, dst: int = 0) -> dict[str, torch.Tensor] | None:
        """The unsharded base head's ``state_dict`` (full class weights) on rank ``dst``, ``None`` on the
        others; a collective every rank must call. Load it into ``create_head(base, ...)`` to predict
        on one device."""
        full = gather_rows_to(self.local.weight.detach(), dst, self.process_group)
        if full is None:
            return None
        state = {k: v.detach().clone() for k, v in self.local.state_dict().items()}
        state["weight"] = full
        return state

    # ------------------------------------------------------------------ the contract, delegated
    def embedding_from_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.local.embedding_from_features(x)

    def confidence(self, features: torch.Tensor) -> torch.Tensor:
        """The base head's confidence (‖z‖, κ_z): local, no communication."""
        return self.local.confidence(features)

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.local.distance(x, y)

    def param_groups(self, temperature_lr: float | None = None) -> list[dict[str, Any]]:
        return self.local.param_groups(temperature_lr=temperature_lr)

    def on_epoch_start(self, epoch: int) -> None:
        self.local.on_epoch_start(epoch)

    def init_from_data(self, features: torch.Tensor | Iterable[torch.Tensor]) -> None:
        """The base head's hook (vMF's α combines every rank's features when a group is initialised)."""
        self.local.init_from_data(features)

    # ------------------------------------------------------------------ logits
    def _generator(self, generator: torch.Generator | int | None, device: torch.device) -> torch.Generator:
        """A generator in the same state on every rank: an int seed, the caller's generator (its state
        must agree across ranks), or a fresh seed drawn by rank 0."""
        if isinstance(generator, torch.Generator):
            return generator
        if generator is None:
            generator = broadcast_seed(int(torch.randint(0, 2**62, (1,))), self.process_group)
        seed = check_int("generator", generator, minimum=0)
        return torch.Generator(device=device).manual_seed(seed)

    def _row_scale(self, z: torch.Tensor) -> torch.Tensor:
        beta = self.local.beta
        if isinstance(self.local, MarginHead) and self.local.keep_norm:
            return beta * torch.linalg.vector_norm(z, dim=1, keepdim=True)  # SphereFace: β ‖z‖
        return beta

    def _local_logits(self, z_all: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Logits of the classes in ``weight`` for the gathered rows; also the cosines and row scale
        (spherical heads) that the margins need."""
        if self.family == "standard":
            return z_all @ weight.t(), None, None  # seed 000 Eq. 1 (StandardHead.logits_from_embedding)
        cos = scaled_cosines(l2_normalize(z_all), weight)  # seed 000 Eq. 3
        scale = self._row_scale(z_all)
        return cos * scale, cos, scale

    def _gather_classes(self, block: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
        """[N, K_r] blocks of every rank -> the full [N, K] logits, then this rank's rows ``span``."""
        full = gather_rows(block.t().contiguous(), self.process_group).t()
        return full[span[0] : span[1]]

    def _rows_span(self, rows: int, device: torch.device) -> tuple[int, int]:
        counts = gather_rows_nograd(torch.tensor([rows], device=device), self.process_group).tolist()
        return sum(counts[: self.rank]), sum(counts[: self.rank + 1])

    def logits_from_embedding(self, z: torch.Tensor) -> torch.Tensor:
        """Class logits [B, K] for this rank's rows (the base head's plain logits; a collective)."""
        z_all = gather_rows(z, self.process_group)
        block = self._local_logits(z_all, self.local.weight)[0]
        if self.world_size == 1:
            return block
        return self._gather_classes(block, self._rows_span(z.shape[0], z.device))

    def forward(self, features: torch.Tensor, *, generator: torch.Generator | int | None = None,
                num_samples: int | None = None) -> torch.Tensor:
        """Class logits [B, K] (every rank must call it: the classes live on different ranks). The
        stochastic vMF head in eval mode returns its Monte-Carlo predictive ``log E[softmax(β cos θ)]``
        (seed 000 §2.3.1) with the normaliser over all ranks' classes."""
        x = self._prepare(features)
        with _float32_math(x.device.type):
            z = self.embedding_from_features(x)
            if self.family == "vmf" and not self.training and self.local.prediction == "monte_carlo":
                samples = self.local.num_samples if num_samples is None else check_int("num_samples", num_samples, minimum=1)
                return self._vmf_predictive(z, samples, generator)
            logits = self.logits_from_embedding(z)
            attach = getattr(self, "_attach_embedding", None)  # Head's hook for loss_from_output (HeadLoss)
            return attach(logits, z) if attach is not None else logits

    def _vmf_predictive(self, theta: torch.Tensor, num_samples: int, generator: torch.Generator | int | None) -> torch.Tensor:
        """``log E_{z,w}[softmax_j(β cos θ_j)]`` with z drawn identically on every rank and each rank's
        class weights w_j drawn from its own stream; the softmax normaliser is :func:`sharded_logsumexp`."""
        theta_all = gather_rows(theta, self.process_group)
        gen_z = self._generator(generator, theta.device)
        gen_w = torch.Generator(device=theta.device).manual_seed(
            int(torch.randint(0, 2**62, (1,), generator=gen_z, device=theta.device)) + self.rank)
        weight, beta = self.local.weight, self.local.beta
        kappa_z, kappa_w = theta_all.norm(dim=-1), weight.norm(dim=-1)
        chunk = max(1, min(num_samples, _PREDICTIVE_ELEMENTS // max(1, weight.numel())))
        total: torch.Tensor | None = None
        for s0 in range(0, num_samples, chunk):
            c = min(chunk, num_samples - s0)
            z = _sample_vmf(theta_all, kappa_z, c, gen_z)  # [c, N, n], the same on every rank
            w = _sample_vmf(weight, kappa_w, c, gen_w)  # [c, K_r, n]
            logits = beta * torch.bmm(z, w.transpose(1, 2))
            log_p = (logits - sharded_logsumexp(logits, self.process_group).unsqueeze(-1)).logsumexp(0)
            total = log_p if total is None else torch.logaddexp(total, log_p)
        assert total is not None
        block = total - math.log(num_samples)
        if self.world_size == 1:
            return block
        return self._gather_classes(block, self._rows_span(theta.shape[0], theta.device))

    # ------------------------------------------------------------------ the loss
    def _active_classes(self, target_all: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's class weights for the step and, with sampling, their sorted local indices:
        every owned class of the batch plus random others, ``max(ceil(rate K_r), #positives)`` in all."""
        weight = self.local.weight
        self.last_sampled = None
        if self.sample_rate >= 1.0 or not self.training:
            return weight, None
        local_k = weight.shape[0]
        keep = min(local_k, math.ceil(self.sample_rate * local_k))
        rows, cols = owned_targets(target_all, self.class_start, self.class_end)
        positives = torch.unique(cols)
        keep = max(keep, positives.numel())
        score = torch.rand(local_k, device=weight.device)
        score[positives] = 2.0  # positives first
        columns = torch.topk(score, keep, sorted=False).indices.sort().values
        self.last_sampled = columns + self.class_start
        return weight.index_select(0, columns), columns

    def loss(self, features: torch.Tensor, target: torch.Tensor, *,
             generator: torch.Generator | int | None = None) -> torch.Tensor:
        """The base head's objective on the global batch (every rank's rows; the same value on every
        rank), computed with this rank's classes and a distributed log-sum-exp. A collective.
        ``generator`` (vMF): an int seed or a generator in the same state on every rank."""
        x = self._prepare(features)
        target = self._check_target(target, x.shape[0])
        if self.family == "vmf" and self.training:
            self.local._warn_if_default_alpha()
        with _float32_math(x.device.type):
            value = self._sharded_loss(self.embedding_from_features(x), target, generator)
        return self._check_loss(value)

    def loss_from_embedding(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._sharded_loss(z, target, None)

    def _sharded_loss(self, z: torch.Tensor, target: torch.Tensor, generator: torch.Generator | int | None) -> torch.Tensor:
        group = self.process_group
        z_all = gather_rows(z, group)
        target_all = gather_rows_nograd(target, group)
        weight, columns = self._active_classes(target_all)
        start, end = self.class_start, self.class_end
        if self.family == "vmf":
            return self._vmf_loss(z_all, target_all, weight, columns, generator)
        logits, cos, scale = self._local_logits(z_all, weight)
        if isinstance(self.local, MarginHead):
            # the margin on the target entries this rank owns (seed 000 Eq. 4; CosFace; SphereFace)
            rows, cols = owned_targets(target_all, start, end, columns)
            row_scale = scale if scale.ndim == 0 else scale[rows].squeeze(1)
            logits[rows, cols] = row_scale * self.local.target_function()(cos[rows, cols])
            if isinstance(self.local, SphereFaceHead) and self.training and torch.is_grad_enabled():
                self.local.num_steps.add_(1)  # λ annealing counts steps, as SphereFaceHead.loss does
        return sharded_cross_entropy(logits, target_all, start, end, columns, group)

    def _vmf_loss(self, theta_all: torch.Tensor, target_all: torch.Tensor, weight: torch.Tensor,
                  columns: torch.Tensor | None, generator: torch.Generator | int | None) -> torch.Tensor:
        """Seed 000 Eq. 13 over the global batch: E_z[log Σ_j exp(log C_n(‖w̃_j‖) - log C_n(‖w̃_j + βz‖))]
        - β E[w_y]^T E[z], the sum over j split across ranks (:func:`combine_logsumexp` of each rank's
        fused :func:`~polyheads.functional.vmf_bound_logsumexp`), z sampled identically on every rank."""
        local = self.local
        gen = self._generator(generator, theta_all.device)
        samples = _sample_vmf(theta_all, theta_all.norm(dim=1), local.num_samples, gen)  # [S, N, n]
        beta = local.beta
        first = combine_logsumexp(vmf_bound_logsumexp(samples, weight, beta), self.process_group).mean(0)
        rows, cols = owned_targets(target_all, self.class_start, self.class_end, columns)
        exact = local.exact_ratio
        second = beta * (vmf_mean(weight[cols], exact=exact) * vmf_mean(theta_all[rows], exact=exact)).sum(-1)
        second_all = reduce_partials(torch.zeros_like(first).index_put((rows,), second), self.process_group)
        return (first - second_all).mean()

    def sample(self, features: torch.Tensor, num_samples: int | None = None, *,
               generator: torch.Generator | int | None = None) -> torch.Tensor:
        """The vMF base head's embedding samples (local: embeddings are not sharded)."""
        return self.local.sample(features, num_samples, generator=generator)

    def extra_repr_args(self) -> list[str]:
        parts = [f"base={self.base!r}", f"classes=[{self.class_start}, {self.class_end})",
                 f"rank={self.rank}/{self.world_size}"]
        if self.sample_rate < 1.0:
            parts.append(f"sample_rate={self.sample_rate:g}")
        return parts + self.local.extra_repr_args()


def sharded_heads(model: nn.Module) -> dict[str, ShardedHead]:
    """``{qualified name: head}`` of every :class:`ShardedHead` inside ``model``."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ShardedHead)}


def full_state_dict(model: nn.Module, state: dict[str, torch.Tensor] | None = None, dst: int = 0) -> dict[str, torch.Tensor] | None:
    """``model.state_dict()`` with every sharded class weight gathered whole on rank ``dst`` (``None``
    on the others). A collective every rank must call; a model without sharded heads is returned as is."""
    state = dict(model.state_dict() if state is None else state)
    full = True
    for name, head in sharded_heads(model).items():
        prefix = f"{name}." if name else ""
        for key, param in head.sharded_parameters().items():
            gathered = gather_rows_to(param.detach(), dst, head.process_group)
            full = gathered is not None
            if full:
                state[prefix + key] = gathered
    return state if full else None
