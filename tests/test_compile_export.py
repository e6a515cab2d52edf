"""Issue 11, item 5: ``torch.compile`` for every head in train and eval mode (graph breaks counted with
``torch._dynamo.explain``), compiled training equal to eager, and ``torch.export`` / ONNX (onnxruntime)
export of eval-mode models with a deterministic head equal to eager -- with a dynamic batch dimension.

CI uses the ``eager`` / ``aot_eager`` backends (tracing, AOT autograd) and no inductor code generation,
which takes tens of seconds per model on CPU; bench/bench_compile.py runs inductor.
"""
import copy
import logging
import math
import warnings

import geoopt
import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch
import torch._dynamo as dynamo
from torch import nn
from torch.export import Dim

from polyheads import HeadLoss, create_head, list_heads
from polyheads.functional.poincare import expmap0

HEADS = list_heads()
STOCHASTIC_EVAL = {"vmf"}  # Monte-Carlo prediction: compiled (sampler eager), not exportable
TARGET = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])


@pytest.fixture(autouse=True)
def _quiet_and_fresh():
    dynamo.reset()
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    dynamo.reset()


class Net(nn.Module):
    """A small backbone and a head: what torch.compile / export see of a timm model, minus its cost."""

    def __init__(self, name, **kwargs):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.head = create_head(name, 16, 5, **kwargs)
        if name == "vmf":
            self.head.init_from_data(torch.randn(64, 16))

    def forward(self, x):
        return self.head(self.body(x))


def deterministic(name):
    return {"prediction": "mean"} if name == "vmf" else {}


@pytest.mark.parametrize("name", HEADS)
def test_no_graph_breaks_in_train_and_eval(name):
    x = torch.randn(10, 8)
    for mode, kwargs in (("train", {}), ("eval", deterministic(name)), ("eval", {})):
        net = Net(name, **kwargs).train(mode == "train")
        dynamo.reset()
        with torch.no_grad():
            report = dynamo.explain(net)(x)
        if mode == "eval" and name in STOCHASTIC_EVAL and not kwargs:
            # the Monte-Carlo prediction runs its rejection samplers (z and w) eagerly, and nothing else breaks
            assert 1 <= report.graph_break_count <= 4
            assert all("torch.compiler.disable" in str(r.reason) for r in report.break_reasons), report.break_reasons
        else:
            assert report.graph_break_count == 0, (mode, kwargs, report.break_reasons)


@pytest.mark.parametrize("name", HEADS)
def test_compiled_training_step_equals_eager(name):
    net = Net(name).train()
    reference = copy.deepcopy(net)
    compiled = torch.compile(net, backend="aot_eager")
    x = torch.randn(10, 8)
    torch.manual_seed(5)
    expected = HeadLoss(reference)(reference(x), TARGET)
    expected.backward()
    torch.manual_seed(5)
    loss = HeadLoss(net)(compiled(x), TARGET)  # the embedding attached inside the compiled graph survives
    loss.backward()
    assert torch.allclose(loss, expected, rtol=1e-6, atol=1e-6)
    for (n, p), (_, q) in zip(net.named_parameters(), reference.named_parameters()):
        assert (p.grad is None) == (q.grad is None), n
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-6), n
    for (n, b), (_, c) in zip(net.named_buffers(), reference.named_buffers()):
        assert torch.equal(b, c), n  # centres, centroids, step counters updated identically


@pytest.mark.parametrize("name", sorted(STOCHASTIC_EVAL))
def test_compiled_monte_carlo_prediction_equals_eager(name):
    net = Net(name).eval()
    compiled = torch.compile(net, backend="aot_eager")
    x = torch.randn(6, 8)
    with torch.no_grad():
        torch.manual_seed(1)
        expected = net(x)
        torch.manual_seed(1)
        got = compiled(x)
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert torch.allclose(got.exp().sum(1), torch.ones(6), atol=1e-5)


@pytest.mark.parametrize("name", ["vmf", "triplet"])
def test_compiled_loss_with_data_dependent_steps(name):
    """Compiling the loss too: vMF's rejection sampler and the triplet / centre updates (torch.unique)
    break the graph, and the result still equals eager."""
    net = Net(name).train()
    reference = copy.deepcopy(net)
    criterion = HeadLoss(net)
    step = torch.compile(lambda x, y: criterion(net(x), y), backend="aot_eager")
    x = torch.randn(10, 8)
    torch.manual_seed(2)
    expected = HeadLoss(reference)(reference(x), TARGET)
    torch.manual_seed(2)
    assert torch.allclose(step(x, TARGET), expected, rtol=1e-6, atol=1e-6)


def _onnx_outputs(model, x_export, x_run):
    program = torch.onnx.export(model, (x_export,), dynamic_shapes=({0: Dim("batch")},), dynamo=True, verbose=False)
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(o) for o in session.run(None, {session.get_inputs()[0].name: x_run.numpy()})]


class EveryHead(nn.Module):
    """One backbone feeding every registered head (deterministic prediction): one export for all."""

    def __init__(self):
        super().__init__()
        self.nets = nn.ModuleList(Net(name, **deterministic(name)) for name in HEADS)

    def forward(self, x):
        return tuple(net(x) for net in self.nets)


def test_export_and_onnx_equal_eager_for_every_head():
    model = EveryHead().eval()
    x = torch.randn(10, 8)
    x_other = torch.randn(3, 8) * 2  # another batch size and other values than the traced ones
    with torch.no_grad():
        expected = model(x_other)
    exported = torch.export.export(model, (x,), dynamic_shapes=({0: Dim("batch")},)).module()(x_other)
    onnx = _onnx_outputs(model, x, x_other)
    assert len(exported) == len(onnx) == len(HEADS)
    for name, want, got_export, got_onnx in zip(HEADS, expected, exported, onnx):
        assert torch.allclose(got_export, want, rtol=1e-6, atol=1e-6), name
        scale = max(1.0, float(want.abs().max()))
        assert got_onnx.shape == want.shape and torch.allclose(got_onnx, want, rtol=1e-5, atol=1e-5 * scale), name


def test_timm_model_with_the_poincare_head_compiles_without_breaks_and_exports():
    model = timm.create_model("resnet10t", num_classes=5, head="poincare").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert dynamo.explain(model)(x).graph_break_count == 0
        expected = model(x)
        (onnx_out,) = _onnx_outputs(model, x, x)
    assert torch.allclose(onnx_out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("c", [1e-5, 0.3, 2.0])
def test_branch_free_expmap0_equals_geoopt(dtype, c):
    """The poincare head's exp map (no branch on the curvature: compile / export) = geoopt's, incl. the
    projection near the boundary and the zero vector."""
    ball = geoopt.PoincareBall(c=c).to(dtype)
    v = torch.randn(40, 6, dtype=dtype) * torch.logspace(-12, 3, 40, dtype=dtype)[:, None]
    v[0] = 0.0
    got, expected = expmap0(v, ball.c), ball.expmap0(v)
    assert torch.allclose(got, expected, rtol=4 * torch.finfo(dtype).eps, atol=0.0)
    assert float((got.norm(dim=1) * math.sqrt(c)).max()) < 1.0
    v.requires_grad_(True)
    g1 = torch.autograd.grad(expmap0(v, ball.c).sum(), v)[0]
    g2 = torch.autograd.grad(ball.expmap0(v).sum(), v)[0]
    assert torch.allclose(g1, g2, rtol=1e3 * torch.finfo(dtype).eps, atol=1e3 * torch.finfo(dtype).eps)
    assert np.isfinite(g1.detach().numpy()).all()
