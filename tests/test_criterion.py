"""Issue 11, item 1: ``HeadLoss`` -- ``criterion(output, target)`` is the head's own objective, computed from
the output of the same forward pass.

References: ``head.loss(features, target)`` on the same batch (value, gradients, state updates), the
closed forms of seed 000 Eq. 4 / seed 002 Eq. 9 evaluated with ``arccos`` in float64, and timm's own
``SoftTargetCrossEntropy`` / ``LabelSmoothingCrossEntropy``.
"""
import copy
import gc
import math
import weakref

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from polyheads import HeadLoss, create_head, get_heads, head_inputs, list_heads
from polyheads.heads.base import EMBEDDING_ATTR
from polyheads.training.engine import head_loss

HEADS = list_heads()
IN, K = 12, 5
# an N x K episodic batch (every class twice): the triplet head needs positives and negatives
TARGET = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])


def make_head(name, **kwargs):
    head = create_head(name, IN, K, **kwargs).double().train()
    if name == "vmf":
        head.init_from_data(torch.randn(64, IN, dtype=torch.float64))
    return head


def states(head):
    return {k: v.clone() for k, v in head.state_dict().items()}


@pytest.mark.parametrize("name", HEADS)
def test_criterion_equals_head_loss_value_gradients_and_state(name):
    """criterion(head(x), y) == head.loss(x, y): value, the gradients of the features and of every
    parameter, and the state the loss updates (centres, centroids, SphereFace's step counter)."""
    reference = make_head(name)
    head = copy.deepcopy(reference)
    x = torch.randn(10, IN, dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.manual_seed(1)  # the same RNG stream for vMF's samples of z
    expected = reference.loss(x1, TARGET)
    expected.backward()
    torch.manual_seed(1)
    got = HeadLoss(head)(head(x2), TARGET)
    got.backward()
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert torch.allclose(x2.grad, x1.grad, rtol=1e-9, atol=1e-12)
    for (n, p1), (_, p2) in zip(reference.named_parameters(), head.named_parameters()):
        assert (p1.grad is None) == (p2.grad is None), n
        if p1.grad is not None:
            assert torch.allclose(p2.grad, p1.grad, rtol=1e-9, atol=1e-12), n
    after_ref, after = states(reference), states(head)
    for k in after_ref:
        assert torch.equal(after[k], after_ref[k]), f"state {k} differs"


@pytest.mark.parametrize("name", HEADS)
def test_criterion_on_a_timm_model_equals_the_engine_loss(name):
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=K, head=name, head_kwargs={"dim": 16}).train()
    model.fc.init_from_data(torch.rand(32, 512))
    x = torch.randn(10, 3, 32, 32)
    reference = copy.deepcopy(model)
    with torch.no_grad():  # the same BatchNorm batch statistics either way
        torch.manual_seed(2)
        expected = head_loss(reference, head_inputs(reference, x), TARGET)
        torch.manual_seed(2)
        got = HeadLoss(model)(model(x), TARGET)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


def _ce_with_target_logit(cos, target, target_logit, scale):
    logits = scale * cos.clone()
    rows = torch.arange(len(target))
    logits[rows, target] = scale * target_logit
    return F.cross_entropy(logits, target)


def test_arcface_margin_is_applied_to_the_returned_logits():
    """seed 000 Eq. 4 by arccos in float64: target logit β cos(θ_y + m) with θ_y = arccos(logit_y / β)."""
    head = make_head("arcface", margin=0.4, init_tau=1.3)
    x = torch.randn(10, IN, dtype=torch.float64)
    out = head(x)
    beta = float(head.beta.detach())
    cos = out.detach() / beta
    theta_y = torch.arccos(cos[torch.arange(10), TARGET])
    assert float(theta_y.max()) < math.pi - 0.4  # the literal Eq. 4 branch (no fallback)
    expected = _ce_with_target_logit(cos, TARGET, torch.cos(theta_y + 0.4), beta)
    assert torch.allclose(HeadLoss(head)(out, TARGET), expected, rtol=1e-12)


def test_cosface_and_polytope_margins_on_the_returned_logits():
    cosface = make_head("cosface", margin=0.25, scale=8.0)
    x = torch.randn(10, IN, dtype=torch.float64)
    out = cosface(x)
    beta = float(cosface.beta.detach())  # exp(τ) with τ = log 8 stored at float32 precision
    cos = out.detach() / beta
    expected = _ce_with_target_logit(cos, TARGET, cos[torch.arange(10), TARGET] - 0.25, beta)
    assert torch.allclose(HeadLoss(cosface)(out, TARGET), expected, rtol=1e-12)

    simplex = make_head("simplex", margin=0.3)  # seed 002 Eq. 9 with κ = 30
    out = simplex(x)
    cos = out.detach() / 30.0
    theta_y = torch.arccos(cos[torch.arange(10), TARGET])
    expected = _ce_with_target_logit(cos, TARGET, torch.cos(theta_y + 0.3), 30.0)
    assert torch.allclose(HeadLoss(simplex)(out, TARGET), expected, rtol=1e-12)


def test_sphereface_uses_the_norm_of_the_same_forward():
    head = make_head("sphereface", margin=2, lambda_base=0.0, lambda_min=0.0)  # pure A-Softmax, ψ(θ) = ±cos 2θ - 2k
    x = torch.randn(10, IN, dtype=torch.float64)
    out = head(x)
    norm = head.embed(x).norm(dim=1)
    cos = out.detach() / norm[:, None]
    theta_y = torch.arccos(cos[torch.arange(10), TARGET])
    k = torch.floor(theta_y * 2 / math.pi)
    psi = (-1.0) ** k * torch.cos(2 * theta_y) - 2 * k
    logits = out.detach().clone()
    logits[torch.arange(10), TARGET] = norm * psi
    assert torch.allclose(HeadLoss(head)(out, TARGET), F.cross_entropy(logits, TARGET), rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# soft (mixup / cutmix) targets and label smoothing
# ---------------------------------------------------------------------------------------------
def mixup_target(a, b, lam, smoothing=0.0):
    off = smoothing / K
    one = lambda t: torch.full((len(t), K), off, dtype=torch.float64).scatter_(1, t[:, None], 1 - smoothing + off)
    return lam * one(a) + (1 - lam) * one(b)


@pytest.mark.parametrize("name", HeadLoss.soft_target_heads())
def test_soft_targets_equal_timm_soft_target_cross_entropy(name):
    head = make_head(name)
    x = torch.randn(10, IN, dtype=torch.float64)
    out = head(x)
    flipped = TARGET.flip(0)
    target = mixup_target(TARGET, flipped, 0.3, smoothing=0.1)
    got = HeadLoss(head)(out, target)
    assert torch.allclose(got, SoftTargetCrossEntropy()(out, target), rtol=1e-12)
    # mixup is linear in the one-hot targets: λ L(a) + (1-λ) L(b) without smoothing
    plain = mixup_target(TARGET, flipped, 0.3)
    expected = 0.3 * head.loss(x, TARGET) + 0.7 * head.loss(x, flipped)
    assert torch.allclose(HeadLoss(head)(out, plain), expected, rtol=1e-12)


def test_polytope_without_margin_accepts_soft_targets():
    head = make_head("orthoplex", margin=0.0)
    x = torch.randn(10, IN, dtype=torch.float64)
    target = mixup_target(TARGET, TARGET.flip(0), 0.6)
    out = head(x)
    assert torch.allclose(HeadLoss(head)(out, target), SoftTargetCrossEntropy()(out, target), rtol=1e-12)


@pytest.mark.parametrize("name", [n for n in HEADS if n not in HeadLoss.soft_target_heads()])
def test_heads_that_refuse_soft_targets_say_so(name):
    head = make_head(name)
    out = head(torch.randn(10, IN, dtype=torch.float64))
    with pytest.raises(ValueError) as info:
        HeadLoss(head)(out, mixup_target(TARGET, TARGET.flip(0), 0.5))
    assert f"head {name!r} refuses probability targets" in str(info.value)
    assert head.soft_target_refusal() in str(info.value)


def test_label_smoothing_matches_timm_and_the_margin_logits():
    standard = make_head("standard")
    x = torch.randn(10, IN, dtype=torch.float64)
    out = standard(x)
    assert torch.allclose(HeadLoss(standard, label_smoothing=0.2)(out, TARGET),
                          LabelSmoothingCrossEntropy(0.2)(out, TARGET), rtol=1e-12)
    arcface = make_head("arcface")
    out = arcface(x)
    reference = F.cross_entropy(arcface.training_logits(arcface.embed(x), TARGET), TARGET, label_smoothing=0.2)
    assert torch.allclose(HeadLoss(arcface, label_smoothing=0.2)(out, TARGET), reference, rtol=1e-10)


@pytest.mark.parametrize("name", ["center", "triplet", "vmf"])
def test_label_smoothing_refused_where_the_objective_is_no_cross_entropy(name):
    with pytest.raises(ValueError, match=f"head '{name}' refuses label_smoothing=0.1"):
        HeadLoss(make_head(name), label_smoothing=0.1)


# ---------------------------------------------------------------------------------------------
# the embedding belongs to the output it came with
# ---------------------------------------------------------------------------------------------
def test_embedding_belongs_to_its_output_never_stale():
    head = make_head("center", lam=0.5, alpha=0.0)  # α = 0: no centre step, the loss is a function of the batch
    criterion = HeadLoss(head)
    x1, x2 = torch.randn(10, IN, dtype=torch.float64), torch.randn(10, IN, dtype=torch.float64)
    out1 = head(x1)
    head(x2)  # a later forward must not change what out1 means
    assert torch.allclose(criterion(out1, TARGET), head.loss(x1, TARGET), rtol=1e-12)


@pytest.mark.parametrize("name", ["sphereface", "vmf", "center", "triplet"])
def test_outputs_without_their_embedding_are_refused(name):
    head = make_head(name)
    other = make_head(name)
    criterion = HeadLoss(head)
    x = torch.randn(10, IN, dtype=torch.float64)
    with pytest.raises(ValueError, match="carries none"):
        criterion(head(x).detach().clone(), TARGET)
    head.eval()
    with torch.no_grad():
        eval_out = head(x)
    head.train()
    with pytest.raises(ValueError, match="carries none"):
        criterion(eval_out, TARGET)
    with pytest.raises(ValueError, match="another head"):
        criterion(other(x), TARGET)


def test_vmf_warns_about_its_default_scale_as_its_loss_does():
    head = create_head("vmf", IN, K)
    with pytest.warns(UserWarning, match="init_from_data"):
        HeadLoss(head)(head(torch.randn(10, IN)), TARGET)


def test_nothing_is_kept_after_the_output_dies():
    head = make_head("vmf")
    out = head(torch.randn(10, IN, dtype=torch.float64))
    z_ref = weakref.ref(getattr(out, EMBEDDING_ATTR)[1])
    assert not any(isinstance(v, torch.Tensor) and v.requires_grad for v in vars(head).values())
    del out
    gc.collect()
    assert z_ref() is None
    head.eval()
    assert not hasattr(head(torch.randn(3, IN, dtype=torch.float64)), EMBEDDING_ATTR)  # nothing attached in eval


def test_logit_only_heads_attach_nothing():
    for name in ("standard", "cosine", "arcface", "simplex", "poincare"):
        out = make_head(name)(torch.randn(4, IN, dtype=torch.float64))
        assert not hasattr(out, EMBEDDING_ATTR), name


def test_bad_inputs():
    head = make_head("cosine")
    criterion = HeadLoss(head)
    out = head(torch.randn(10, IN, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"logits \[B, 5\]"):
        criterion(out[:, :3], TARGET)
    with pytest.raises(ValueError, match="class indices in"):
        criterion(out, TARGET + 1)
    with pytest.raises(ValueError, match="sum to 1"):
        criterion(out, torch.full((10, K), 0.5, dtype=torch.float64))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        HeadLoss("cosine")
    with pytest.raises(ValueError, match="label_smoothing"):
        HeadLoss(head, label_smoothing=1.5)
    with pytest.raises(ValueError, match="no polyheads head"):
        HeadLoss(torch.nn.Linear(3, 3))


def test_model_is_not_a_submodule_and_reset_classifier_is_followed():
    model = timm.create_model("resnet10t", num_classes=K, head="cosine")
    criterion = HeadLoss(model)
    assert not list(criterion.parameters()) and not criterion.state_dict()
    criterion.to(torch.float64)  # timm's train.py moves its criterion: the model must stay as it is
    assert model.fc.weight.dtype == torch.float32
    model.reset_classifier(3)
    model.train()
    out = model(torch.randn(4, 3, 32, 32))
    assert criterion.heads()[0] is model.fc and criterion(out, torch.tensor([0, 1, 2, 0])).ndim == 0


# ---------------------------------------------------------------------------------------------
# models with two heads (distilled DeiT returns the average of its heads' logits in training)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sphereface", "arcface"])
def test_distilled_model(name):
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, num_classes=K, head=name).train()
    criterion = HeadLoss(model)
    x = torch.randn(10, 3, 32, 32)
    with pytest.raises(ValueError, match="set_distilled_training"):
        criterion(model(x), TARGET)
    model.set_distilled_training(True)
    with torch.no_grad():
        out = model(x)
        assert isinstance(out, tuple) and len(out) == 2
        got = criterion(out, TARGET)
        expected = head_loss(model, head_inputs(model, x), TARGET)  # mean of the two heads' own losses
    assert len(get_heads(model)) == 2 and torch.allclose(got, expected, rtol=1e-5)


def test_margin_cross_entropy_from_logits_checks_its_inputs():
    from polyheads.functional import margin_cross_entropy_from_logits

    logits = torch.randn(4, K)
    identity = lambda c: c  # noqa: E731
    with pytest.raises(ValueError, match="one value per row"):
        margin_cross_entropy_from_logits(logits, TARGET[:4], identity, torch.ones(3))
    with pytest.raises(ValueError, match="class indices in"):
        margin_cross_entropy_from_logits(logits, torch.tensor([0, 1, 2, 9]), identity, 2.0)
    with pytest.raises(TypeError, match="target_fn"):
        margin_cross_entropy_from_logits(logits, TARGET[:4], 0.5, 2.0)
    # with the identity map it is the plain cross-entropy of the logits, for a scalar or per-row scale
    assert torch.allclose(margin_cross_entropy_from_logits(logits, TARGET[:4], identity, torch.rand(4) + 0.5),
                          F.cross_entropy(logits, TARGET[:4]))
