"""Issue 11, item 4: every registered head under ``torch.autocast`` (bf16 on CPU) computes its geometry in
float32, returns finite float32 logits, losses and gradients, and never changes its parameters' dtype.

The float32-inside property is tested against the head run in float32 on the same (bf16-rounded)
features: bf16 arithmetic has 8 significant bits (relative error ~4e-3), so agreement to 1e-5 can only
come from float32 math.
"""
import copy

import pytest
import timm
import torch

from polyheads import HeadLoss, create_head, list_heads

HEADS = list_heads()
IN, K = 24, 5
TARGET = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])  # N x K episodic (triplet needs positives)


def bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def make(name):
    head = create_head(name, IN, K).train()
    if name == "vmf":
        head.init_from_data(torch.randn(64, IN))
    return head


def dtypes(module):
    return {n: t.dtype for n, t in [*module.named_parameters(), *module.named_buffers()]}


@pytest.mark.parametrize("name", HEADS)
def test_head_math_is_float32_under_bf16_autocast(name):
    head = make(name)
    before = dtypes(head)
    reference = copy.deepcopy(head)
    other = copy.deepcopy(head)  # the criterion's copy: center, triplet and sphereface update state in loss
    x32 = torch.randn(10, IN) * 3
    x16 = x32.to(torch.bfloat16)  # what a backbone under autocast hands the head

    with bf16_autocast():
        logits = head(x16)
    expected = reference(x16.float())
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert torch.allclose(logits, expected, rtol=1e-5, atol=1e-5)

    xa = x16.clone().requires_grad_()
    xb = x16.float().requires_grad_()
    with bf16_autocast():
        torch.manual_seed(4)
        loss = head.loss(xa, TARGET)
        torch.manual_seed(4)
        via_criterion = HeadLoss(other)(other(x16), TARGET)
    torch.manual_seed(4)
    loss_ref = reference.loss(xb, TARGET)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.allclose(loss, loss_ref, rtol=1e-5, atol=1e-6)
    assert torch.allclose(via_criterion, loss_ref, rtol=1e-5, atol=1e-6)

    loss.backward()
    loss_ref.backward()
    assert xa.grad.dtype == torch.bfloat16 and torch.isfinite(xa.grad.float()).all()
    for (n, p), (_, q) in zip(head.named_parameters(), reference.named_parameters()):
        if p.grad is None:
            continue
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), n
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), n
    torch.optim.SGD(head.parameters(), lr=0.1).step()
    assert dtypes(head) == before, "autocast or a step changed a parameter's dtype"


@pytest.mark.parametrize("name", HEADS)
def test_eval_prediction_under_autocast(name):
    head = make(name).eval()
    x16 = torch.randn(6, IN).to(torch.bfloat16)
    with torch.no_grad(), bf16_autocast():
        torch.manual_seed(9)
        out = head(x16)
        conf = head.confidence(x16)
        emb = head.embed(x16)
    torch.manual_seed(9)
    with torch.no_grad():
        expected = head(x16.float())
    assert out.dtype == conf.dtype == emb.dtype == torch.float32
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-5) and torch.isfinite(conf).all()


@pytest.mark.parametrize("name", HEADS)
def test_timm_model_under_autocast_keeps_a_float32_head(name):
    model = timm.create_model("resnet10t", num_classes=K, head=name, head_kwargs={"dim": 16}).train()
    head = model.fc
    head.init_from_data(torch.rand(32, 512))
    before = dtypes(head)
    x = torch.randn(10, 3, 32, 32)
    with bf16_autocast():
        out = model(x)
        loss = HeadLoss(model)(out, TARGET)
    loss.backward()
    assert out.dtype == torch.float32 and torch.isfinite(out).all() and torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.conv1[0].weight.grad.abs().sum() > 0  # the gradient reached the backbone
    assert dtypes(head) == before
