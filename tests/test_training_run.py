"""End-to-end runs of the trainer on the bundled data (and tiny data the tests write): one epoch per
head, exact resume, optimiser groups, the data-driven head initialisation."""
import copy
import json
import pickle

import numpy as np
import pytest
import torch

import polyheads
from polyheads.training import build_optimizer, init_heads_from_data, load_config, train
from polyheads.training.checkpoint import load_checkpoint
from polyheads.training.trainer import build_model

QUICK = ["train_subset=2600", "test_subset=1000", "episodes_per_epoch=40", "epochs=1", "progress=false",
         "init_samples=500", "lr=0.1", "test_retrieval=false"]


@pytest.mark.parametrize("head", ["standard", "cosine", "normface"])
def test_one_epoch_on_the_bundled_data(tmp_path, head):
    cfg = load_config(None, [*QUICK, f"head={head}", f"output_dir={tmp_path}"])
    lines = []
    result = train(cfg, log=lines.append)
    assert {p.name for p in tmp_path.iterdir()} >= {"last.pt", "best.pt", "metrics.csv", "metrics.jsonl", "results.json",
                                                     "config.yaml"}
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["epoch"] == 0 and rows[0]["lr"] == 0.1
    assert any(line.startswith("epoch   1/1") for line in lines)
    # 40 episodes of 10 x 13 images already beat chance (0.1) by far (normface, the slowest: ~0.5)
    assert result.best_val > 0.35 and result.test["accuracy"] > 0.35
    assert abs(rows[0]["val_accuracy"] - result.best_val) < 1e-12
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["epochs_run"] == 1 and summary["data"]["train_classes"] == 10
    state = load_checkpoint(tmp_path / "best.pt")
    model = build_model(cfg, 10, 1)
    model.load_state_dict(state["model"])  # loadable into a fresh model
    assert polyheads.get_head(model).dim == 3  # embedding_dim of the config


def _tiny_cifar(root, rng):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": rng.integers(0, 256, (40, 3072), dtype=np.uint8), "labels": list(range(10)) * 4}, fh)


def test_resume_continues_exactly_with_augmentation(tmp_path, rng):
    """2 epochs straight == 1 epoch, then resume for the second: same weights, optimiser state and metrics
    (random crops, flips and occlusions included: the RNG states travel in the checkpoint)."""
    _tiny_cifar(tmp_path / "data", rng)
    common = ["dataset=cifar10", f"data_root={tmp_path / 'data'}", "model=convnet_mnist", "model_kwargs={img_size: 32}",
              "batch_classes=5", "batch_instances=4", "episodes_per_epoch=6", "progress=false", "head=cosine",
              "lr=0.1", "weight_decay=1.0e-3", "init_samples=50", "evaluate_test=false"]
    train(load_config(None, [*common, "epochs=2", f"output_dir={tmp_path / 'a'}"]), log=lambda _: None)
    train(load_config(None, [*common, "epochs=1", f"output_dir={tmp_path / 'b'}"]), log=lambda _: None)
    train(load_config(None, [*common, "epochs=2", f"output_dir={tmp_path / 'b'}"]), resume=tmp_path / "b",
          log=lambda _: None)
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    momentum_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values() if s.get("momentum_buffer") is not None]
    momentum_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values() if s.get("momentum_buffer") is not None]
    assert len(momentum_a) > 0 and all(torch.equal(x, y) for x, y in zip(momentum_a, momentum_b))
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith(("_s", "per_s"))} for r in rows]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"]) and len(b["history"]) == 2
    csv_epochs = [line.split(",")[0] for line in (tmp_path / "b" / "metrics.csv").read_text().splitlines()[1:]]
    assert csv_epochs == ["0", "1"]


def test_existing_run_folder_is_not_overwritten(tmp_path):
    cfg = load_config(None, ["dataset=digits", "model_kwargs={img_size: 8}", "batch_instances=4", "epochs=1",
                             "episodes_per_epoch=2", "progress=false", "evaluate_test=false", f"output_dir={tmp_path}"])
    train(cfg, log=lambda _: None)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, log=lambda _: None)


def test_optimizer_groups_follow_the_authors_code():
    model = polyheads.create_model("convnet_mnist", num_classes=10, head="cosine", head_kwargs={"dim": 3})
    opt = build_optimizer(model, lr=0.5, momentum=0.9, nesterov=True, weight_decay=5e-4, temperature_lr=0.001,
                          temperature_momentum=0.0, skip_weight_decay=["bias", "classifier"])
    head = polyheads.get_head(model)
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    tau = group_of[id(head.temperature.tau)]
    assert (tau["lr"], tau["momentum"], tau["nesterov"], tau["weight_decay"]) == (0.001, 0.0, False, 0.0)
    assert group_of[id(head.weight)]["weight_decay"] == 0.0  # class weights: no decay
    assert group_of[id(head.embedding.weight)]["weight_decay"] == 5e-4
    assert group_of[id(head.embedding.bias)]["weight_decay"] == 0.0
    conv = model.features[0]
    assert group_of[id(conv.weight)]["weight_decay"] == 5e-4 and group_of[id(conv.bias)]["weight_decay"] == 0.0
    assert group_of[id(model.features[1].weight)]["weight_decay"] == 0.0  # BatchNorm affine
    assert all(g["lr"] == 0.5 and g["nesterov"] for g in opt.param_groups if g is not tau)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


def test_init_from_data_sees_batch_statistics_and_leaves_the_model_unchanged(monkeypatch):
    torch.manual_seed(0)
    model = polyheads.create_model("convnet_mnist", num_classes=10, head="standard")
    batches = [(torch.rand(16, 1, 28, 28) * 3 + 1, torch.zeros(16, dtype=torch.long)) for _ in range(3)]
    reference_model = copy.deepcopy(model).train()
    with torch.no_grad():  # features as during training: BatchNorm normalises with each batch's statistics
        expected = torch.cat([reference_model.forward_head(reference_model.forward_features(x), pre_logits=True)
                              for x, _ in batches])
    seen = {}
    monkeypatch.setattr(polyheads.get_head(model), "init_from_data", lambda f: seen.setdefault("f", f))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    init_heads_from_data(model, batches)
    assert torch.allclose(seen["f"], expected, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running stats restored
    assert model.training


def test_open_set_run_validates_with_recall_at_1_in_the_heads_metric(tmp_path):
    """Fashion-MNIST classes 0-4 (two validate), 5-9 test; validation = leave-one-out Recall@1 in the
    head's own distance, checked against a brute-force cosine nearest neighbour."""
    cfg = load_config(None, [*QUICK, "protocol=open", "val_fraction=0.4", "head=cosine", "test_retrieval=true",
                             f"output_dir={tmp_path}"])
    result = train(cfg, log=lambda _: None)
    assert result.val_metric == "val_recall_at_1"
    assert set(result.test) >= {"map_at_r", "map_at_r_cosine"} and "accuracy" not in result.test
    from polyheads.training.datasets import build_data, collate_batched
    from polyheads.training.engine import predict

    data = build_data(cfg)
    model = build_model(cfg, data.num_classes, data.in_chans)
    model.load_state_dict(load_checkpoint(tmp_path / "last.pt")["model"])
    out = predict(model, torch.utils.data.DataLoader(data.val, batch_size=256, collate_fn=collate_batched))
    z = torch.nn.functional.normalize(polyheads.get_head(model).embed(out["features"]), dim=1)
    similarity = z @ z.T
    similarity.fill_diagonal_(-2.0)
    labels = out["labels"]
    expected = float((labels[similarity.argmax(1)] == labels).float().mean())
    assert 0.5 < expected < 1.0  # two classes: better than chance, not trivial
    assert result.best_val == pytest.approx(expected, abs=1e-6)


def test_pretrained_path_loads_the_backbone_and_freeze_bn_freezes_it(tmp_path):
    torch.manual_seed(1)
    plain = polyheads.create_model("convnet_mnist", num_classes=10)  # a plain timm model with its fc classifier
    torch.save({"state_dict": plain.state_dict()}, tmp_path / "backbone.pth")
    cfg = load_config(None, [f"pretrained_path={tmp_path / 'backbone.pth'}", "freeze_bn=true", "head=cosine"])
    model = build_model(cfg, num_classes=4, in_chans=1)
    assert torch.equal(model.features[0].weight, plain.features[0].weight)
    assert torch.equal(model.pre_logits[0].weight, plain.pre_logits[0].weight)
    frozen = model.features[1]
    assert type(frozen).__name__ == "FrozenBatchNorm" and torch.equal(frozen.running_var, plain.features[1].running_var)
    assert polyheads.get_head(model).num_classes == 4  # the old 10-way classifier is not used
    opt = build_optimizer(model, lr=0.1)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters())) == 4 + 2 + 4
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        build_model(load_config(None, [f"pretrained_path={tmp_path / 'missing.pth'}"]), 4, 1)
