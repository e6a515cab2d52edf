"""timm integration (issue 3, item 6): every registered head on architectures of many families, and the
guarantees around timm's own API (create_model, forward_head, reset_classifier, checkpoints)."""
import logging
import subprocess
import sys

import pytest
import timm
import torch
from torch import nn

import polyheads
from polyheads import get_head, get_heads, head_inputs, list_heads
from polyheads.training.engine import pre_logits

# (name, constructor kwargs, input size, number of classifiers); families: resnet, convnext, vit, deit-distilled,
# efficientnet, mobilenetv3 (head_hidden_size != num_features), regnet, densenet, levit (NormLinear, two heads),
# maxvit, dla (1x1-conv classifier), hrnet (own `head` keyword), repvit
ARCHS = [
    ("resnet10t", {}, 32, 1),
    ("convnext_atto", {}, 32, 1),
    ("vit_tiny_patch16_224", {"img_size": 32}, 32, 1),
    ("deit_tiny_distilled_patch16_224", {"img_size": 32}, 32, 2),
    ("efficientnet_b0", {}, 32, 1),
    ("mobilenetv3_small_050", {}, 32, 1),
    ("regnetx_002", {}, 32, 1),
    ("densenet121", {}, 32, 1),
    ("levit_128s", {"img_size": 64}, 64, 2),
    ("maxvit_pico_rw_256", {"img_size": 64}, 64, 1),
    ("dla34", {}, 32, 1),
    ("hrnet_w18_small", {}, 64, 1),
    ("repvit_m1", {}, 64, 1),
]
HEADS = list_heads()
NUM_CLASSES = 5


def images(size, n=4):
    return torch.randn(n, 3, size, size)


def seeded_forward(model, x):
    torch.manual_seed(7)
    return model(x)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("arch,kwargs,size,n_heads", ARCHS, ids=[a[0] for a in ARCHS])
def test_every_head_on_every_family(arch, kwargs, size, n_heads, head, tmp_path):
    model = timm.create_model(arch, pretrained=False, num_classes=NUM_CLASSES, head=head, **kwargs)
    heads = get_heads(model)
    assert len(heads) == n_heads and model.num_classes == NUM_CLASSES
    assert all(h.head_name == head and h.num_classes == NUM_CLASSES for h in heads)
    width = getattr(model, "head_hidden_size", model.num_features)
    assert heads[0].in_features == width
    if n_heads == 1:  # timm's get_classifier() is the head, or (RepViT) a wrapper holding it
        classifier = model.get_classifier()
        assert classifier is heads[0] or any(m is heads[0] for m in classifier.modules())

    x, y = images(size), torch.tensor([0, 1, 0, 1])
    model.eval()
    received = head_inputs(model, x)
    if n_heads == 1:  # forward_head(pre_logits=True) is exactly what the head receives
        assert torch.allclose(received[0].flatten(1), pre_logits(model, x), atol=1e-5)

    model.train()
    received = head_inputs(model, x)
    for h, f in zip(heads, received):
        h.init_from_data(f.detach().flatten(1))
    torch.manual_seed(0)
    loss = torch.stack([h.loss(f, y) for h, f in zip(heads, received)]).mean()
    assert torch.isfinite(loss)
    loss.backward()
    backbone = [p for n, p in model.named_parameters() if not any(n.startswith(path) for path in model.polyheads_cfg["paths"])]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone), "no gradient reached the backbone"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    model.eval()
    out = seeded_forward(model, x)
    assert out.shape == (4, NUM_CLASSES) and torch.isfinite(out).all()

    # reset_classifier rebuilds the same kind of head with the same keyword arguments
    model.reset_classifier(3)
    heads = get_heads(model)
    assert len(heads) == n_heads and all(h.head_name == head and h.num_classes == 3 for h in heads)
    assert model.num_classes == 3
    model.eval()
    for h in heads:
        h.init_from_data(torch.randn(16, h.in_features))
    out = seeded_forward(model, x)
    assert out.shape == (4, 3)

    # torch.save / load_state_dict round trip into a freshly created model
    torch.save(model.state_dict(), tmp_path / "model.pt")
    clone = timm.create_model(arch, pretrained=False, num_classes=3, head=head, **kwargs).eval()
    clone.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    assert torch.allclose(seeded_forward(clone, x), out, atol=1e-5)


def test_create_model_imported_before_polyheads():
    code = (
        "from timm import create_model\n"
        "import polyheads\n"
        "m = create_model('resnet10t', num_classes=3, head='cosine', head_kwargs={'dim': 8})\n"
        "assert type(m.fc).__name__ == 'CosineHead' and m.fc.dim == 8, m.fc\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr


def test_polyheads_create_model_and_namespaced_spelling():
    a = polyheads.create_model("resnet10t", num_classes=4, head="cosine")
    b = timm.create_model("resnet10t", num_classes=4, polyhead="cosine", head_kwargs={"init_tau": 1.0})
    assert type(a.fc).__name__ == type(b.fc).__name__ == "CosineHead"
    assert abs(float(b.fc.beta.detach()) - 2.718281828) < 1e-5
    with pytest.raises(ValueError, match="not both"):
        timm.create_model("resnet10t", head="cosine", polyhead="standard")


def test_model_with_its_own_head_keyword_keeps_it():
    own = timm.create_model("hrnet_w18_small", head="incre", num_classes=4)
    assert not get_heads(own) and not isinstance(own.classifier, polyheads.Head)  # HRNet's "incre" head
    ours = timm.create_model("hrnet_w18_small", head="standard", num_classes=4)
    assert type(ours.classifier).__name__ == "StandardHead"
    namespaced = timm.create_model("hrnet_w18_small", polyhead="cosine", num_classes=4)
    assert type(namespaced.classifier).__name__ == "CosineHead"


def test_importing_polyheads_changes_no_plain_model():
    polyheads.timm.uninstall()
    try:
        torch.manual_seed(0)
        reference = timm.create_model("resnet10t", num_classes=7)
    finally:
        polyheads.timm.install()
    torch.manual_seed(0)
    patched = timm.create_model("resnet10t", num_classes=7)
    assert isinstance(patched.fc, nn.Linear) and not get_heads(patched)
    for (k1, v1), (k2, v2) in zip(reference.state_dict().items(), patched.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    patched.reset_classifier(3)
    assert isinstance(patched.fc, nn.Linear) and patched.fc.out_features == 3


@pytest.mark.parametrize(
    "kwargs,error,text",
    [
        ({"head": "cosin"}, ValueError, "Closest matches: ['cosine'"),
        ({"head": "cosine", "head_kwargs": {"margin": 1.0}}, TypeError, "margin"),
        ({"head": "cosine", "head_kwargs": [1, 2]}, TypeError, "head_kwargs"),
        ({"head_kwargs": {"dim": 3}}, ValueError, "head_kwargs"),
        ({"head": "cosine", "num_classes": 0}, ValueError, "num_classes=0"),
        ({"head": "cosine", "num_classes": 1}, ValueError, "num_classes"),
        ({"head": "cosine", "features_only": True}, ValueError, "features_only"),
        ({"head": 3}, TypeError, "head name"),
    ],
)
def test_bad_arguments(kwargs, error, text):
    with pytest.raises(error) as info:
        timm.create_model("resnet10t", **kwargs)
    assert text in str(info.value)


def test_bad_head_kwargs_leave_the_model_usable():
    model = timm.create_model("resnet10t", num_classes=4, head="cosine")
    with pytest.raises(TypeError):
        polyheads.attach_head(model, "standard", head_kwargs={"margin": 2})
    assert type(model.fc).__name__ == "CosineHead" and model.num_classes == 4
    assert model(images(32)).shape == (4, 4)


def test_reset_classifier_zero_gives_a_feature_extractor():
    model = timm.create_model("resnet10t", num_classes=4, head="cosine").eval()
    model.reset_classifier(0)
    assert isinstance(model.fc, nn.Identity) and not get_heads(model)
    assert model(images(32)).shape == (4, 512)
    model.reset_classifier(6)  # back to timm's own classifier
    assert isinstance(model.fc, nn.Linear)


def test_attach_head_follows_device_and_precision_of_the_model():
    model = timm.create_model("resnet10t", num_classes=4).double()
    polyheads.attach_head(model, "cosine", head_kwargs={"dim": 16})
    assert all(p.dtype == torch.float64 for p in model.fc.parameters())
    half = timm.create_model("resnet10t", num_classes=4).to(torch.bfloat16)
    polyheads.attach_head(half, "cosine")
    assert all(p.dtype == torch.float32 for p in half.fc.parameters()), "head parameters are never fp16/bf16"


def test_plain_checkpoint_loads_backbone_and_skips_old_classifier(tmp_path, caplog):
    plain = timm.create_model("resnet10t", num_classes=1000)
    path = tmp_path / "plain.pth"
    torch.save(plain.state_dict(), path)
    torch.manual_seed(3)
    fresh_head = timm.create_model("resnet10t", num_classes=6, head="cosine").fc.state_dict()
    with caplog.at_level(logging.INFO, logger="polyheads"):
        torch.manual_seed(3)
        model = timm.create_model("resnet10t", num_classes=6, head="cosine", checkpoint_path=str(path))
    assert torch.equal(model.conv1[0].weight, plain.conv1[0].weight)
    for k, v in fresh_head.items():  # the head keeps its own initialisation
        assert torch.equal(model.fc.state_dict()[k], v)
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and "fc.weight" in skipped[0] and "fc.bias" in skipped[0]

    # a polyheads checkpoint loads whole and strictly
    torch.save(model.state_dict(), tmp_path / "ours.pth")
    again = timm.create_model("resnet10t", num_classes=6, head="cosine", checkpoint_path=str(tmp_path / "ours.pth"))
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)
    # a checkpoint of another architecture is still an error
    torch.save(timm.create_model("resnet18", num_classes=6).state_dict(), tmp_path / "other.pth")
    with pytest.raises(RuntimeError, match="missing keys|unexpected keys|size mismatch"):
        timm.create_model("resnet10t", num_classes=6, head="cosine", checkpoint_path=str(tmp_path / "other.pth"))


def test_pretrained_from_local_file_keeps_the_head_initialisation(tmp_path):
    plain = timm.create_model("resnet10t", num_classes=1000)
    path = tmp_path / "weights.pth"
    torch.save(plain.state_dict(), path)
    model = timm.create_model("resnet10t", pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                              num_classes=6, head="standard")
    assert torch.equal(model.layer1[0].conv1.weight, plain.layer1[0].conv1.weight)
    assert type(model.fc).__name__ == "StandardHead" and model.fc.weight.shape == (6, 512)
