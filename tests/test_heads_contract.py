"""The head contract of shared/DESIGN.md, checked for every registered head, plus the closed forms of the
foundation heads (STANDARD seed 000 Eq. 1, COSINE Eq. 3, NormFace) computed independently in float64."""
import math

import pytest
import torch
import torch.nn.functional as F

import polyheads
from polyheads import create_head, list_heads

ALL_HEADS = list_heads()
IN_FEATURES, NUM_CLASSES, BATCH = 12, 4, 8


def make_head(name, dtype=torch.float32, **kwargs):
    """A head ready to use: created by name, given its data-dependent initialisation (the contract hook)."""
    head = create_head(name, IN_FEATURES, NUM_CLASSES, **kwargs).to(dtype)
    head.init_from_data(torch.randn(64, IN_FEATURES, dtype=dtype))
    return head


def batch(dtype=torch.float32):
    features = torch.randn(BATCH, IN_FEATURES, dtype=dtype)
    target = torch.arange(BATCH) % NUM_CLASSES  # every class twice: valid triplets, centres, episodes
    return features, target


def seeded(fn, *args):
    torch.manual_seed(1234)
    return fn(*args)


@pytest.mark.parametrize("name", ALL_HEADS)
def test_contract_shapes_and_finiteness(name):
    head = make_head(name)
    x, y = batch()
    for mode in (True, False):
        head.train(mode)
        logits = seeded(head, x)
        assert logits.shape == (BATCH, NUM_CLASSES) and torch.isfinite(logits).all()
    z = head.embed(x)
    assert z.shape == (BATCH, head.dim)
    conf = head.confidence(x)
    assert conf.shape == (BATCH,) and torch.isfinite(conf).all()
    d = head.distance(z.detach(), z.detach())
    assert d.shape == (BATCH, BATCH)
    assert torch.allclose(d.diagonal(), torch.zeros(BATCH), atol=1e-3)
    assert torch.allclose(d, d.t(), atol=1e-4) and (d > -1e-5).all()
    assert isinstance(head.geometry, str) and head.num_classes == NUM_CLASSES and head.in_features == IN_FEATURES
    text = repr(head)
    for field in (f"in_features={IN_FEATURES}", f"num_classes={NUM_CLASSES}", f"dim={head.dim}", "geometry="):
        assert field in text


@pytest.mark.parametrize("name", ALL_HEADS)
def test_loss_backward_reaches_every_trainable_parameter(name):
    head = make_head(name).train()
    x, y = batch()
    x.requires_grad_(True)
    loss = seeded(head.loss, x, y)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in head.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}: no gradient for {pname}"
            assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"


@pytest.mark.parametrize("name", ALL_HEADS)
def test_param_groups_partition_trainable_parameters(name):
    head = make_head(name)
    groups = head.param_groups(temperature_lr=1e-3)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)), "a parameter appears in two groups"
    trainable = {id(p) for p in head.parameters() if p.requires_grad}
    assert set(ids) == trainable
    buffers = {id(b) for b in head.buffers()}
    assert not buffers & set(ids)
    for g in groups:
        assert "name" in g
        if g["name"] == "temperature":
            assert g["lr"] == 1e-3 and g["weight_decay"] == 0.0
    torch.optim.SGD(groups, lr=0.1)  # accepted by a torch optimiser as is


@pytest.mark.parametrize("name", ALL_HEADS)
def test_state_dict_round_trip(name, tmp_path):
    head = make_head(name).eval()
    x, _ = batch()
    path = tmp_path / "head.pt"
    torch.save(head.state_dict(), path)
    torch.manual_seed(99)  # a different initialisation for the copy
    clone = create_head(name, IN_FEATURES, NUM_CLASSES).eval()
    clone.load_state_dict(torch.load(path, weights_only=True))
    assert torch.allclose(seeded(head, x), seeded(clone, x), atol=1e-6)
    assert torch.allclose(head.embed(x), clone.embed(x))


@pytest.mark.parametrize("name", [n for n in ALL_HEADS if not polyheads.get_head_class(n).stochastic])
def test_gradcheck_float64(name):
    head = make_head(name, dtype=torch.float64).eval()  # eval: stateful heads do not update while checked
    x, y = batch(torch.float64)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda inp: head.loss(inp, y), (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", ALL_HEADS)
def test_bad_inputs_name_the_argument(name):
    head = make_head(name)
    x, y = batch()
    cases = [
        (lambda: head(torch.randn(BATCH, IN_FEATURES + 1)), ValueError, "features"),
        (lambda: head(torch.randn(IN_FEATURES)), ValueError, "features"),
        (lambda: head(torch.randint(0, 3, (BATCH, IN_FEATURES))), TypeError, "features"),
        (lambda: head(x.numpy()), TypeError, "features"),
        (lambda: head(torch.full((BATCH, IN_FEATURES), float("nan"))), ValueError, "NaN"),
        (lambda: head(torch.full((BATCH, IN_FEATURES), float("inf"))), ValueError, "inf"),
        (lambda: head.loss(x, y + NUM_CLASSES), ValueError, "target"),
        (lambda: head.loss(x, y - NUM_CLASSES), ValueError, "target"),
        (lambda: head.loss(x, y.float()), TypeError, "target"),
        (lambda: head.loss(x, y[:-1]), ValueError, "target"),
        (lambda: head.loss(x, y[:, None]), ValueError, "target"),
    ]
    for call, error, word in cases:
        with pytest.raises(error) as info:
            call()
        assert word in str(info.value)


def test_validation_can_be_switched_off_for_production_loops():
    head = create_head("standard", IN_FEATURES, NUM_CLASSES)
    bad = torch.full((2, IN_FEATURES), float("nan"))
    with polyheads.validation(False):
        assert torch.isnan(head(bad)).all()  # the user asked for no data checks
    with pytest.raises(ValueError):
        head(bad)


def test_non_finite_loss_names_the_head_and_the_cause():
    head = create_head("standard", IN_FEATURES, NUM_CLASSES)
    with torch.no_grad():
        head.weight[0, 0] = float("nan")
    x, y = batch()
    with pytest.raises(FloatingPointError, match=r"StandardHead.loss .*\['weight'\].*diverged"):
        head.loss(x, y)


# ---------------------------------------------------------------------------------------------- closed forms
def embedding64(head, x):
    return x @ head.embedding.weight.t() + head.embedding.bias


def test_standard_logits_closed_form():
    head = create_head("standard", IN_FEATURES, NUM_CLASSES, dim=6).double()
    x, y = batch(torch.float64)
    z = embedding64(head, x)
    expected = torch.stack([torch.stack([sum(z[b, i] * head.weight[j, i] for i in range(6)) for j in range(NUM_CLASSES)])
                            for b in range(BATCH)])
    assert torch.allclose(head(x), expected, atol=1e-12)
    nll = -torch.stack([expected[b, y[b]] - torch.logsumexp(expected[b], 0) for b in range(BATCH)]).mean()
    assert torch.allclose(head.loss(x, y), nll, atol=1e-12)
    assert torch.allclose(head.confidence(x), z.norm(dim=1))
    assert torch.allclose(head.distance(z, z[:3]), torch.cdist(z, z[:3]), atol=1e-10)


@pytest.mark.parametrize("init_tau", [0.0, 1.3])
def test_cosine_logits_closed_form(init_tau):
    head = create_head("cosine", IN_FEATURES, NUM_CLASSES, dim=5, init_tau=init_tau).double()
    x, y = batch(torch.float64)
    z = embedding64(head, x)
    beta = math.exp(init_tau)
    cos = torch.tensor([[float(z[b] @ head.weight[j] / (z[b].norm() * head.weight[j].norm()))
                         for j in range(NUM_CLASSES)] for b in range(BATCH)], dtype=torch.float64)
    assert torch.allclose(head(x), beta * cos, atol=1e-12)
    assert torch.allclose(head.loss(x, y), F.cross_entropy(beta * cos, y), atol=1e-12)
    # seed 000 §2.3: the norm of z has no effect on the COSINE posterior
    assert torch.allclose(head.logits_from_embedding(3.7 * z), head.logits_from_embedding(z), atol=1e-12)
    assert torch.allclose(head.distance(z, z), 1 - cos_matrix(z, z), atol=1e-12)


def cos_matrix(a, b):
    return torch.tensor([[float(u @ v / (u.norm() * v.norm())) for v in b] for u in a], dtype=torch.float64)


def test_cosine_temperature_is_learned_in_its_own_group():
    head = create_head("cosine", IN_FEATURES, NUM_CLASSES, init_tau=0.5)
    groups = {g["name"]: g for g in head.param_groups(temperature_lr=1e-3)}
    assert [p is head.temperature.tau for p in groups["temperature"]["params"]] == [True]
    x, y = batch()
    head.loss(x, y).backward()
    assert head.temperature.tau.grad is not None and head.temperature.tau.grad != 0
    assert abs(float(head.beta) - math.exp(0.5)) < 1e-6


def test_normface_has_a_fixed_scale():
    head = create_head("normface", IN_FEATURES, NUM_CLASSES, scale=20.0).double()
    assert not any(p is head.temperature.tau for p in head.parameters())
    assert "tau" in dict(head.named_buffers(prefix="")).keys() or "temperature.tau" in dict(head.named_buffers())
    x, _ = batch(torch.float64)
    z = embedding64(head, x)
    assert torch.allclose(head(x), 20.0 * cos_matrix(z, head.weight), atol=1e-10)
    assert [g["name"] for g in head.param_groups()] == ["head"]
    with pytest.raises(ValueError, match="scale"):
        create_head("normface", IN_FEATURES, NUM_CLASSES, scale=0.0)


def test_embedding_false_uses_features_directly():
    head = create_head("standard", IN_FEATURES, NUM_CLASSES, embedding=False).double()
    x, _ = batch(torch.float64)
    assert head.dim == IN_FEATURES
    assert torch.allclose(head(x), x @ head.weight.t())
    with pytest.raises(ValueError, match="dim"):
        create_head("standard", IN_FEATURES, NUM_CLASSES, dim=3, embedding=False)


def test_default_dim_and_bad_sizes():
    assert create_head("cosine", 2048, 10).dim == 512 and create_head("cosine", 120, 10).dim == 120
    with pytest.raises(ValueError, match="num_classes"):
        create_head("cosine", 16, 1)
    with pytest.raises(ValueError, match="dim"):
        create_head("cosine", 16, 4, dim=0)


def test_features_from_conv_classifiers_are_flattened():
    head = create_head("standard", IN_FEATURES, NUM_CLASSES).double()
    x, _ = batch(torch.float64)
    assert torch.equal(head(x[:, :, None, None]), head(x))
    with pytest.raises(ValueError, match="features"):
        head(x[:, :, None, None].expand(-1, -1, 2, 2))


def test_half_precision_features_run_in_float32_without_casting_parameters():
    head = create_head("cosine", IN_FEATURES, NUM_CLASSES)
    x, y = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(x.bfloat16())
        loss = head.loss(x.bfloat16(), y)
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in head.parameters())
    assert torch.allclose(logits, head(x.bfloat16().float()), atol=1e-6)
