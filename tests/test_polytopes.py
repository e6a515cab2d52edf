"""Fixed Regular Polytope heads (seed 002): vertices, angles, dimension rule, the Eq. 9 loss with m = φ,
the fixed buffer's life cycle, a short training run on the bundled Fashion-MNIST, and the scatter-plot
matrix. References are computed independently here (brute force, arccos of the seed's closed forms)."""
import itertools
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import polyheads
from polyheads import create_head
from polyheads.functional import (
    POLYTOPE_KINDS,
    cube_codes,
    polytope_angle,
    polytope_capacity,
    polytope_dim,
    polytope_min_angle,
    polytope_vertices,
)
from polyheads.heads import polytope as polytope_module

SWEEP = [2, 3, 4, 5, 7, 8, 9, 10, 16, 17, 31, 32, 33, 47, 100]
KINDS = list(POLYTOPE_KINDS)


def ceil_log2(k):
    return math.ceil(math.log2(k))


def gram(v):
    return v @ v.t()


def off_diagonal(matrix):
    return matrix[~torch.eye(matrix.shape[0], dtype=torch.bool)]


# ------------------------------------------------------------------------------------------ dimension rule
@pytest.mark.parametrize("k", SWEEP + [1000, 2**20, 2**20 + 1])
def test_dimension_rule_eq7(k):
    assert polytope_dim("simplex", k) == k - 1
    assert polytope_dim("orthoplex", k) == math.ceil(k / 2)
    assert polytope_dim("cube", k) == ceil_log2(k)
    assert polytope_dim("hadamard", k) == 2 ** ceil_log2(k)


def test_dimension_rule_matches_the_seed_figure():
    # seed 002 Fig. 2: MNIST's K = 10 gives 9x9, 5x5 and 4x4 scatter-plot matrices
    assert [polytope_dim(kind, 10) for kind in ("simplex", "orthoplex", "cube")] == [9, 5, 4]
    assert [create_head(kind, 120, 10).dim for kind in ("simplex", "orthoplex", "cube", "hadamard")] == [9, 5, 4, 16]


def test_capacity_is_the_inverse_of_the_rule():
    for kind in KINDS:
        for k in SWEEP:
            d = polytope_dim(kind, k)
            assert polytope_capacity(kind, d) >= k
            if d > 1 and kind != "hadamard":
                assert polytope_capacity(kind, d - 1) < k  # Eq. 7's d is the smallest that fits


# ------------------------------------------------------------------------------------------ vertices
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", SWEEP)
def test_vertices_unit_norm_distinct_and_angles(kind, k):
    v = polytope_vertices(kind, k)
    d = polytope_dim(kind, k)
    assert v.shape == (k, d) and v.dtype == torch.float64
    assert torch.allclose(v.norm(dim=1), torch.ones(k, dtype=torch.float64), atol=1e-14, rtol=0)
    g = gram(v)
    assert off_diagonal(g).max() < 1 - 1e-9, "two classes share a vertex"
    cos = off_diagonal(g)
    if kind == "simplex":
        assert torch.allclose(v.sum(0), torch.zeros(d, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(cos, torch.full_like(cos, -1.0 / d), atol=1e-14, rtol=0)
        connected = torch.ones_like(cos, dtype=torch.bool)
        phi = math.acos(-1.0 / d)  # Eq. 10
    elif kind == "orthoplex":
        assert set(cos.tolist()) <= {0.0, -1.0}
        connected = cos == 0.0
        phi = math.pi / 2 if d > 1 else math.pi  # Eq. 11 (d = 1: the segment)
        if d == 1:
            connected = cos == -1.0
    elif kind == "cube":
        levels = torch.tensor([(d - 2 * j) / d for j in range(d + 1)], dtype=torch.float64)
        assert (cos.unsqueeze(1) - levels).abs().min(1).values.max() < 1e-14  # cos ∈ {(d - 2k)/d}
        connected = (cos - (d - 2) / d).abs() < 1e-12  # cube neighbours: one coordinate flipped
        phi = math.acos((d - 2) / d)  # Eq. 12
    else:
        assert cos.abs().max() < 1e-14  # Hadamard rows are orthogonal
        connected = torch.ones_like(cos, dtype=torch.bool)
        phi = math.pi / 2
    assert connected.any(), "no pair of connected vertices"
    angles = torch.arccos(cos[connected].clamp(-1, 1))
    assert torch.allclose(angles, torch.full_like(angles, phi), atol=1e-10, rtol=0)
    if kind != "hadamard":
        assert abs(polytope_angle(kind, d) - phi) < 1e-12
    # φ is the smallest angle between any two vertices (what m = φ pushes the boundary to)
    assert abs(float(torch.arccos(cos.max().clamp(-1, 1))) - polytope_min_angle(kind, k)) < 1e-7
    assert abs(float(torch.arccos(cos.max().clamp(-1, 1))) - phi) < 1e-7


def test_simplex_is_eq3_shifted_and_normalised():
    # independent construction, literally as the seed describes it: {e_1..e_d, α Σ e_i}, centred, normalised
    for k in (3, 5, 10, 33):
        d = k - 1
        alpha = (1 - math.sqrt(d + 1)) / d
        w = torch.cat([torch.eye(d, dtype=torch.float64), torch.full((1, d), alpha, dtype=torch.float64)])
        w = w - w.mean(0)
        w = w / w.norm(dim=1, keepdim=True)
        assert torch.allclose(polytope_vertices("simplex", k), w, atol=1e-14, rtol=0)


def test_orthoplex_and_hadamard_are_the_documented_sets():
    v = polytope_vertices("orthoplex", 7)
    expected = torch.cat([torch.eye(4), -torch.eye(4)[:3]]).double()  # +e_1..+e_4, then -e_1..-e_3
    assert torch.equal(v, expected)
    h = torch.tensor([[1.0]])
    for _ in range(4):  # Sylvester: H_2m = [[H, H], [H, -H]]
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    assert torch.equal(polytope_vertices("hadamard", 11), (h[:11] / 4.0).double())


@pytest.mark.parametrize("k", [2, 3, 5, 8, 9, 10, 16, 17, 33, 100, 129])
def test_cube_codes_are_spread_with_the_fewest_closest_pairs(k):
    d = ceil_log2(k)
    codes = cube_codes(k).tolist()
    assert len(set(codes)) == k and all(0 <= c < 2**d for c in codes)
    v = polytope_vertices("cube", k)
    bits = torch.tensor([[(c >> j) & 1 for j in range(d)] for c in codes], dtype=torch.float64)
    assert torch.equal(v, (2 * bits - 1) / math.sqrt(d))  # bit j of the code is coordinate j
    neighbours = sum(bin(a ^ b).count("1") == 1 for a, b in itertools.combinations(codes, 2))
    # any K codes of the d-cube contain >= d (K - 2^(d-1)) neighbouring pairs; ours attain the bound
    assert neighbours == d * (k - 2 ** (d - 1))
    # the first 2^j classes form a linear code (a group): on every coordinate one of them uses, half
    # are + and half -, so they sum to zero there; the first 2^(d-1) (the demicube) sum to zero
    for j in range(1, d + 1):
        if 2**j <= k:
            block = v[: 2**j]
            used = (block != block[0]).any(0)
            assert torch.allclose(block.sum(0)[used], torch.zeros(int(used.sum()), dtype=torch.float64), atol=1e-12)
    if d >= 2:
        assert torch.allclose(v[: 2 ** (d - 1)].sum(0), torch.zeros(d, dtype=torch.float64), atol=1e-12)
        assert all(bin(c).count("1") % 2 == 0 for c in codes[: 2 ** (d - 1)])


def test_cube_codes_in_a_wider_space_reach_the_best_linear_codes():
    # (K, dim, the best minimum Hamming distance of a binary linear code of that size, from the tables)
    for k, dim, best in [(4, 5, 3), (8, 6, 3), (16, 7, 3), (16, 8, 4), (10, 8, 4), (32, 10, 4), (3, 3, 2), (2, 6, 6)]:
        codes = cube_codes(k, dim).tolist()
        h = min(bin(a ^ b).count("1") for a, b in itertools.combinations(codes, 2))
        assert h == best, (k, dim, h)
        assert abs(polytope_min_angle("cube", k, dim) - math.acos((dim - 2 * h) / dim)) < 1e-12


@pytest.mark.parametrize("k,dim", [(10, 21), (100, 48), (3, 25), (1000, 32)])
def test_cube_min_angle_is_exact_in_wide_spaces(k, dim):
    v = polytope_vertices("cube", k, dim)
    assert set(v.abs().flatten().tolist()) == {1 / math.sqrt(dim)}
    g = off_diagonal(gram(v))
    assert abs(math.acos(float(g.max())) - polytope_min_angle("cube", k, dim)) < 1e-7


def test_cube_for_a_million_classes_is_vectorised():
    import time

    start = time.perf_counter()
    head = create_head("cube", 8, 10**6)
    elapsed = time.perf_counter() - start
    assert head.dim == 20 and head.vertices.shape == (10**6, 20) and head.vertices.dtype == torch.float32
    assert head.vertices.numel() == 10**6 * 20  # the buffer is K·d floats
    assert torch.equal(head.vertices.abs(), torch.full((1, 20), 1 / math.sqrt(20)).expand(10**6, 20))
    assert elapsed < 5.0, f"K = 10^6 cube took {elapsed:.2f} s (a Python loop over K?)"  # < 1 s on an idle core
    codes = cube_codes(10**6)
    assert torch.unique(codes).numel() == 10**6


def test_wider_dim_pads_simplex_orthoplex_and_hadamard_with_zeros():
    for kind, k, dim in [("simplex", 5, 7), ("orthoplex", 5, 6), ("hadamard", 5, 11)]:
        wide, narrow = polytope_vertices(kind, k, dim), polytope_vertices(kind, k)
        assert torch.equal(wide[:, : narrow.shape[1]], narrow) and not wide[:, narrow.shape[1]:].any()
        assert polytope_min_angle(kind, k, dim) == polytope_min_angle(kind, k)


def test_float32_vertices_are_rounded_once_from_float64():
    for kind in KINDS:
        assert torch.equal(polytope_vertices(kind, 37, dtype=torch.float32), polytope_vertices(kind, 37).float())


def test_angle_closed_forms_for_large_dimensions():
    for d in (2, 3, 9, 100, 10**6):
        assert polytope_angle("simplex", d) == pytest.approx(math.acos(-1 / d), abs=1e-13)
        assert polytope_angle("cube", d) == pytest.approx(math.acos((d - 2) / d), abs=1e-7)
        assert polytope_angle("orthoplex", d) == math.pi / 2
    # where arccos((d-2)/d) loses digits, 2 asin(1/√d) does not: cos φ = 1 - 2/d exactly
    assert math.cos(polytope_angle("cube", 10**12)) == pytest.approx(1 - 2e-12, abs=1e-16)
    assert polytope_angle("simplex", 1) == polytope_angle("cube", 1) == polytope_angle("orthoplex", 1) == math.pi


def test_errors_name_the_rule():
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        polytope_vertices("simplex", 1)
    with pytest.raises(ValueError, match="num_classes"):
        polytope_dim("cube", 0)
    for kind, k, dim, need, rule in [("simplex", 10, 8, 9, "K - 1"), ("orthoplex", 11, 5, 6, "ceil"),
                                     ("cube", 17, 4, 5, "log2"), ("hadamard", 10, 12, 16, "Sylvester")]:
        with pytest.raises(ValueError, match=rf"needs dim >= {need}.*{rule}"):
            polytope_vertices(kind, k, dim)
        with pytest.raises(ValueError, match=rf"needs dim >= {max(need, 2)}"):
            create_head(kind, 32, k, dim=dim)
    with pytest.raises(ValueError, match=r"kind must be one of \['simplex', 'orthoplex', 'cube', 'hadamard'\].*'simplex'"):
        polytope_vertices("simplx", 10)
    with pytest.raises(TypeError, match="kind"):
        polytope_dim(3, 10)
    with pytest.raises(TypeError, match="dim"):
        polytope_vertices("cube", 10, 4.0)
    with pytest.raises(TypeError, match="dtype"):
        polytope_vertices("cube", 10, dtype=torch.int64)
    with pytest.raises(ValueError, match="power of two"):
        polytope_angle("hadamard", 12)
    with pytest.raises(ValueError, match="num_classes"):
        create_head("simplex", 8, 1)


# ------------------------------------------------------------------------------------------ the heads
def eq9_reference(z, vertices, target, scale, margin):
    """Seed 002 Eq. 9 term by term in float64, with the standard fallback past θ_y = π - m."""
    rows = []
    losses = []
    for b in range(z.shape[0]):
        cos = [float(z[b] @ w) / float(z[b].norm()) for w in vertices]
        y = int(target[b])
        theta = math.acos(max(-1.0, min(1.0, cos[y])))
        if margin == 0:
            target_cos = cos[y]
        elif theta + margin <= math.pi:
            target_cos = math.cos(theta + margin)
        else:
            target_cos = cos[y] - margin * math.sin(margin)
        logits = [scale * c for c in cos]
        logits[y] = scale * target_cos
        rows.append(logits)
        top = max(logits)
        losses.append(-(logits[y] - top - math.log(sum(math.exp(l - top) for l in logits))))
    return torch.tensor(rows, dtype=torch.float64), sum(losses) / len(losses)


EQ10_12 = {"simplex": lambda d: math.acos(-1 / d), "orthoplex": lambda d: math.pi / 2,
           "cube": lambda d: math.acos((d - 2) / d), "hadamard": lambda d: math.pi / 2}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("extra", [0, 2])
def test_logits_and_loss_equal_eq9(kind, extra):
    k = 10
    d = polytope_dim(kind, k) + extra
    head = create_head(kind, d, k, embedding=False).double()  # z̃ = x: the reference sees the same z
    vertices = polytope_vertices(kind, k, d)
    assert torch.equal(head.vertices, vertices)
    if extra == 0:
        assert head.margin == pytest.approx(EQ10_12[kind](d), abs=1e-12)  # m = φ (Eq. 10-12) by default
    assert head.margin == pytest.approx(polytope_min_angle(kind, k, d), abs=1e-12)
    target = torch.arange(20) % k
    # half the features near their own vertex (θ_y + m < π), half random (the fallback is exercised too)
    x = torch.cat([vertices[target[:10]] + 0.2 * torch.randn(10, d, dtype=torch.float64),
                   torch.randn(10, d, dtype=torch.float64)])
    plain, _ = eq9_reference(x, vertices, target, 30.0, 0.0)
    assert torch.allclose(head(x), plain, atol=1e-10)  # prediction: κ cos θ_j, no margin
    for margin in ("phi", 0.0, 0.35):
        if margin != "phi":
            head = create_head(kind, d, k, embedding=False, margin=margin).double()
        logits, loss = eq9_reference(x, vertices, target, 30.0, head.margin)
        assert torch.allclose(head.training_logits(x, target), logits, atol=1e-10)
        assert float(head.loss(x, target)) == pytest.approx(loss, abs=1e-10)


def test_embed_and_confidence_are_the_raw_embedding():
    head = create_head("simplex", 6, 10).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    z = x @ head.embedding.weight.t() + head.embedding.bias
    assert torch.allclose(head.embed(x), z, atol=1e-12)
    assert torch.allclose(head.confidence(x), z.norm(dim=1), atol=1e-12)  # ‖z̃‖ (seed 000 Table 1)
    assert torch.allclose(head(x), 30 * F.normalize(z) @ polytope_vertices("simplex", 10).t(), atol=1e-12)


def test_cube_default_margin_is_eq12():
    head = create_head("cube", 16, 10)
    assert head.dim == 4 and head.margin == pytest.approx(math.acos((4 - 2) / 4), abs=1e-15) and head.margin_rule == "phi"
    assert "margin=1.047 (phi)" in repr(head) and "kind='cube'" in repr(head) and "scale=30" in repr(head)


def test_two_classes_use_a_2d_embedding_and_a_usable_margin():
    for kind in KINDS:
        head = create_head(kind, 8, 2).double()
        assert head.dim == 2
        assert head.margin == pytest.approx(math.pi / 2)  # m = π would make Eq. 9 constant
        x, y = torch.randn(16, 8, dtype=torch.float64), torch.arange(16) % 2
        x.requires_grad_(True)
        head.loss(x, y).backward()
        assert x.grad.abs().sum() > 0


def test_literal_margin_pi_is_degenerate_for_antipodal_vertices():
    # why K = 2 does not use m = φ = π: cos(θ + π) equals the other (antipodal) class's logit
    cos = torch.linspace(-0.99, 0.99, 7, dtype=torch.float64)
    target = torch.cos(torch.arccos(cos) + math.pi)
    assert torch.allclose(target, -cos)


def test_standard_fallback_is_monotone_for_every_phi_and_easy_is_not():
    from polyheads.functional import additive_angular_margin

    theta = torch.linspace(0, math.pi, 20001, dtype=torch.float64)
    cos = torch.cos(theta)
    for kind in ("simplex", "orthoplex", "cube"):
        for k in (3, 4, 5, 10, 100, 1000):
            m = polytope_min_angle(kind, k)
            value = additive_angular_margin(cos, m, fallback="standard")
            assert (value[1:] - value[:-1]).max() <= 1e-12, (kind, k)
    # the bound the head warns above: the standard fallback's step at π - m turns upward past it
    bound = polytope_module.STANDARD_FALLBACK_MAX_MARGIN
    for m, monotone in [(bound - 1e-3, True), (bound + 0.05, False)]:
        value = additive_angular_margin(cos, m, fallback="standard")
        assert bool((value - torch.cummin(value, 0).values).max() <= 1e-12) == monotone
    with pytest.warns(UserWarning, match="standard' fallback then steps"):
        create_head("cube", 8, 10, margin=2.5)
    m = polytope_min_angle("simplex", 10)  # 96.4° > 90°
    for fallback in ("easy", "none"):  # both reward moving away from the own vertex somewhere past π - m
        value = additive_angular_margin(cos, m, fallback=fallback)
        rise = (value - torch.cummin(value, 0).values).max()
        assert rise > 0.1, (fallback, float(rise))


def test_margin_arguments():
    assert create_head("simplex", 8, 10, margin=0.0).margin == 0.0
    assert create_head("simplex", 8, 10, margin=0.5).margin_rule == "fixed"
    for bad, error in [("phy", ValueError), (-0.1, ValueError), (math.pi, ValueError), (None, TypeError)]:
        with pytest.raises(error, match="margin"):
            create_head("simplex", 8, 10, margin=bad)
    with pytest.raises(ValueError, match="scale"):
        create_head("cube", 8, 10, scale=0.0)
    with pytest.raises(ValueError, match="fallback"):
        create_head("cube", 8, 10, fallback="hard")


def test_margin_warmup_turns_the_margin_off():
    head = create_head("simplex", 8, 5, margin_warmup_epochs=2).double()
    plain = create_head("simplex", 8, 5, margin=0.0).double()
    plain.load_state_dict(head.state_dict())
    x, y = torch.randn(12, 8, dtype=torch.float64), torch.arange(12) % 5
    head.on_epoch_start(1)
    assert torch.allclose(head.loss(x, y), plain.loss(x, y), atol=1e-12)
    head.on_epoch_start(2)
    assert float(head.loss(x, y).detach()) > float(plain.loss(x, y).detach()) + 0.1


@pytest.mark.parametrize("kind", KINDS)
def test_vertices_are_a_fixed_buffer(kind):
    head = create_head(kind, 12, 10)
    names = [n for n, _ in head.named_parameters()]
    assert names == ["embedding.weight", "embedding.bias"]
    classifier_parameters = sum(p.numel() for n, p in head.named_parameters() if not n.startswith("embedding."))
    assert classifier_parameters == 0  # zero trainable classifier parameters
    assert "vertices" in dict(head.named_buffers()) and "vertices" in head.state_dict()
    assert not head.vertices.requires_grad
    groups = head.param_groups(temperature_lr=1e-3)
    assert all(p is not head.vertices for g in groups for p in g["params"])
    before = head.vertices.clone()
    optimizer = torch.optim.SGD(groups, lr=1.0, momentum=0.9, weight_decay=0.1)
    x, y = torch.randn(32, 12), torch.arange(32) % 10
    for _ in range(3):
        optimizer.zero_grad()
        head.loss(x, y).backward()
        optimizer.step()
    assert torch.equal(head.vertices, before)
    assert head.geometry == "spherical" and head.retrieval_metric == "cosine"
    z = head.embed(x)
    assert torch.allclose(head.distance(z, z[:4]), 1 - F.normalize(z) @ F.normalize(z[:4]).t(), atol=1e-6)


@pytest.mark.parametrize("kind", ["simplex", "cube"])
def test_to_float64_keeps_vertices_exact(kind):
    head = create_head(kind, 12, 10)
    exact = polytope_vertices(kind, 10)
    assert not torch.equal(head.vertices.double(), exact) or kind == "cube"  # a plain up-cast would not be exact
    assert torch.equal(head.to(torch.float64).vertices, exact)
    assert torch.equal(head.float().vertices, exact.float())
    assert torch.equal(head.double().vertices, exact)
    assert head.to("cpu").vertices.dtype == torch.float64  # a device move keeps the dtype


def test_state_dict_round_trip_and_precision(tmp_path):
    head = create_head("simplex", 12, 10).eval()
    path = tmp_path / "simplex.pt"
    torch.save(head.state_dict(), path)
    torch.manual_seed(7)
    clone = create_head("simplex", 12, 10).eval()
    clone.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(5, 12)
    assert torch.equal(clone(x), head(x)) and torch.equal(clone.vertices, head.vertices)
    # a float32 checkpoint loaded into a float64 head gives the exact float64 vertices, not up-cast ones
    wide = create_head("simplex", 12, 10).double()
    wide.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(wide.vertices, polytope_vertices("simplex", 10))
    # a checkpoint trained against other vertices keeps them (and says so)
    state = torch.load(path, weights_only=True)
    state["vertices"] = state["vertices"].flip(0)
    other = create_head("simplex", 12, 10)
    with pytest.warns(UserWarning, match="differ"):
        other.load_state_dict(state)
    assert torch.equal(other.vertices, state["vertices"])
    assert torch.equal(other.double().vertices, state["vertices"].double())  # not rebuilt from the closed form


def test_embedding_false_uses_the_features():
    head = create_head("orthoplex", 5, 10, embedding=False).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    assert head.dim == 5 and torch.equal(head.embed(x), x)
    assert torch.allclose(head(x), 30 * F.normalize(x) @ polytope_vertices("orthoplex", 10).t(), atol=1e-12)
    with pytest.raises(ValueError, match="needs dim >= 9.*embedding=False"):
        create_head("simplex", 5, 10, embedding=False)


def test_large_simplex_warns_how_much_memory(monkeypatch):
    # the real threshold: K = 10 000 (d = 9 999) is 400 MB in float32 and warns; K = 2 048 (16.8 MB) does not
    assert 10_000 * 9_999 * 4 > polytope_module.MEMORY_WARNING_BYTES > 2048 * 2047 * 4
    monkeypatch.setattr(polytope_module, "MEMORY_WARNING_BYTES", 100_000)
    with pytest.warns(UserWarning, match=r"300 x 299 vertex buffer \(89,700 floats.*0\.4 MB in torch\.float32.*'cube' head needs d = 9"):
        create_head("simplex", 8, 300)
    with pytest.warns(UserWarning, match="hadamard"):
        create_head("hadamard", 8, 300)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        create_head("cube", 8, 300)  # linear in K: never warns
        create_head("simplex", 8, 150)  # 150 x 149 x 4 B = 89 kB < the threshold


def test_timm_model_gets_a_polytope_head():
    model = timm.create_model("convnet_mnist", num_classes=10, head="cube", pretrained=False)
    head = model.get_classifier()
    assert isinstance(head, polyheads.heads.CubeHead) and head.in_features == 120 and head.dim == 4
    out = model(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 10) and out.abs().max() <= 30 + 1e-4


# ------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def fashion():
    from polyheads.training import load_fashion_mnist

    x_train, y_train = load_fashion_mnist("train")
    x_test, y_test = load_fashion_mnist("test")
    prep = lambda x: x.float().div(255).unsqueeze(1)  # noqa: E731
    return prep(x_train[:12800]), y_train[:12800], prep(x_test[:2000]), y_test[:2000]


def train_convnet(head_name, data, margin="phi", epochs=2, n=12800, seed=0):
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = timm.create_model("convnet_mnist", num_classes=10, head=head_name, head_kwargs={"margin": margin})
    head = model.get_classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)  # seed 002 trains with Adam
    for epoch in range(epochs):
        model.train()
        head.on_epoch_start(epoch)
        order = torch.randperm(n)
        for start in range(0, n, 64):
            idx = order[start:start + 64]
            features = model.forward_head(model.forward_features(x_train[idx]), pre_logits=True)
            loss = head.loss(features, y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        features = model.forward_head(model.forward_features(x_test), pre_logits=True)
        accuracy = float((head(features).argmax(1) == y_test).float().mean())
        z = F.normalize(head.embed(features))
        own = (z * head.vertices[y_test]).sum(1)  # cosine of each test feature to its own class vertex
    return accuracy, own


def test_short_training_compacts_test_features_on_their_vertices(fashion):
    accuracy, own = train_convnet("cube", fashion)
    assert accuracy > 0.1 + 0.6, accuracy  # chance is 0.1 on Fashion-MNIST's 10 classes
    assert float(own.mean()) > 0.8, float(own.mean())


def test_margin_phi_is_what_makes_the_simplex_features_compact(fashion):
    # seed 002 Fig. 2 vs Fig. 4: without margin (Eq. 6/8) features are separated but spread out
    _, own_phi = train_convnet("simplex", fashion, epochs=1)
    _, own_plain = train_convnet("simplex", fashion, margin=0.0, epochs=1)
    assert float(own_phi.median()) > 0.9, float(own_phi.median())
    assert float(own_plain.median()) < float(own_phi.median()) - 0.2, (float(own_plain.median()), float(own_phi.median()))


# ------------------------------------------------------------------------------------------ the picture
def test_scatter_matrix_writes_a_png_per_coordinate_pair(tmp_path):
    import matplotlib.image

    from polyheads.plots import scatter_matrix

    v = polytope_vertices("cube", 10)
    y = torch.arange(400) % 10
    x = v[y] * (1 + torch.rand(400, 1)) + 0.05 * torch.randn(400, 4)
    small = scatter_matrix(x, y, tmp_path / "cube.png", vertices=v, title="cube")
    big = scatter_matrix(torch.randn(400, 9), y, tmp_path / "sub" / "nine.png", class_names=[str(i) for i in range(10)])
    assert small.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    a, b = matplotlib.image.imread(small), matplotlib.image.imread(big)
    assert b.shape[0] > 1.8 * a.shape[0]  # a 9 x 9 grid is taller than a 4 x 4 one
    plain = matplotlib.image.imread(scatter_matrix(x, y, tmp_path / "plain.png", title="cube"))
    assert plain.shape == a.shape and not np.array_equal(plain, a)  # the vertex overlay is drawn
    capped = matplotlib.image.imread(scatter_matrix(torch.randn(50, 30), torch.zeros(50, dtype=torch.long),
                                                    tmp_path / "capped.png", max_dims=3, normalize=True))
    assert capped.shape[0] < a.shape[0]
    with pytest.raises(ValueError, match="labels"):
        scatter_matrix(x, y[:-1], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="vertices"):
        scatter_matrix(x, y, tmp_path / "bad.png", vertices=v[:, :3])
    with pytest.raises(ValueError, match="features"):
        scatter_matrix(x[:, :1], y, tmp_path / "bad.png")
    with pytest.raises(TypeError, match="labels"):
        scatter_matrix(x, y.float(), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="NaN"):
        scatter_matrix(torch.full((4, 3), float("nan")), y[:4], tmp_path / "bad.png")
