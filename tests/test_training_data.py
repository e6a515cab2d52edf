"""Splits of seed 000 App. E.2, the local data readers (files written by the tests), the
augmentations, and the App. E.1 architectures / frozen BatchNorm."""
import pickle
from collections import Counter

import numpy as np
import pytest
import timm
import torch
from torch import nn

import polyheads
from polyheads.training.config import load_config
from polyheads.training.data import write_idx
from polyheads.training.datasets import build_data, load_cifar
from polyheads.training.modules import FrozenBatchNorm, freeze_batch_norm
from polyheads.training.splits import class_halves, class_split, stratified_split, stratified_subset
from polyheads.training.transforms import build_transforms


# ------------------------------------------------------------------------------------------ splits
def test_stratified_split_keeps_every_class_share(rng):
    y = rng.permutation(np.repeat(np.arange(6), [50, 80, 13, 200, 7, 33]))
    train, val = stratified_split(y, 0.15, seed=1)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(y)
    assert len(val) == round(0.15 * len(y))
    counts_all, counts_val = Counter(y.tolist()), Counter(y[val].tolist())
    for c, n in counts_all.items():
        assert abs(counts_val[c] - 0.15 * n) < 1.0  # within one image of the class's 15 %
    assert np.array_equal(stratified_split(y, 0.15, seed=1)[1], val)
    assert not np.array_equal(stratified_split(y, 0.15, seed=2)[1], val)


def test_fashion_mnist_validation_is_900_per_class():
    cfg = load_config(None, ["train_subset=null"])
    data = build_data(cfg)
    assert data.info["train"] == 51000 and data.info["val"] == 9000 and data.info["test"] == 10000
    assert np.bincount(data.val.labels.numpy()).tolist() == [900] * 10
    assert np.bincount(data.train_labels).tolist() == [5100] * 10


@pytest.mark.parametrize("classes, train_classes", [(98, 83), (100, 85), (11318, 9620)])
def test_open_set_class_split_gives_the_seeds_class_counts(classes, train_classes):
    """App. E.1: Y = 83 (Cars196), 85 (CUB), 9620 (SOP) after 15 % of the train classes validate."""
    y = np.repeat(np.arange(classes), 2)
    train, val = class_split(y, 0.15, seed=0)
    assert len(np.unique(y[train])) == train_classes
    assert not set(y[train]) & set(y[val])


def test_class_halves_first_half_trains():
    y = np.array([3, 0, 5, 1, 4, 2, 0, 5])
    train, test = class_halves(y)
    assert set(y[train]) == {0, 1, 2} and set(y[test]) == {3, 4, 5}


def test_open_set_on_the_bundled_data_is_class_disjoint():
    data = build_data(load_config(None, ["protocol=open", "train_subset=3000", "test_subset=1000", "val_fraction=0.4"]))
    # Fashion-MNIST classes 0-4 train (two of them validate: 0.4 * 5), 5-9 test
    assert data.num_classes == 3 and data.info["val_classes"] == 2 and data.info["test_classes"] == 5
    assert data.info["test"] == 1000
    with pytest.raises(ValueError, match="open-set validation gets 1 class"):  # round(0.15 * 5) = 1
        build_data(load_config(None, ["protocol=open", "train_subset=3000"]))


def test_stratified_subset():
    y = np.repeat(np.arange(4), 100)
    keep = stratified_subset(y, 40, seed=0)
    assert np.bincount(y[keep]).tolist() == [10] * 4


# ------------------------------------------------------------------------------------------ readers
def test_mnist_idx_files_in_torchvision_layout(tmp_path, rng):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = {s: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for s, n in (("train", 60), ("t10k", 20))}
    labels = {s: np.tile(np.arange(10, dtype=np.uint8), len(images[s]) // 10) for s in images}
    for s in images:
        write_idx(raw / f"{s}-images-idx3-ubyte.gz", images[s])
        write_idx(raw / f"{s}-labels-idx1-ubyte", labels[s])
    data = build_data(load_config(None, ["dataset=mnist", f"data_root={tmp_path}"]))
    assert data.info["train"] + data.info["val"] == 60 and data.info["test"] == 20
    x, y = data.test[3]
    assert torch.allclose(x[0], torch.from_numpy(images["t10k"][3]).float() / 255) and int(y) == 3


def _write_cifar(root, rng, per_batch=20):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = (np.arange(per_batch) % 10).tolist()
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": data, "labels": labels}, fh)
        batches[name] = (data, labels)
    return batches


def test_cifar_python_archive_layout(tmp_path, rng):
    batches = _write_cifar(tmp_path, rng)
    pools = load_cifar(tmp_path, 10)
    assert pools["train"][0].shape == (100, 3, 32, 32) and pools["test"][0].shape == (20, 3, 32, 32)
    # CIFAR rows are R(1024) G(1024) B(1024), each row-major 32 x 32
    row = batches["data_batch_2"][0][4]
    assert torch.equal(pools["train"][0][24, 1, 2, 5], torch.tensor(row[1024 + 2 * 32 + 5]))
    assert pools["train"][1][24] == batches["data_batch_2"][1][4]


def test_missing_data_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*never downloads"):
        load_cifar(tmp_path, 10)
    with pytest.raises(ValueError, match="needs data_root"):
        build_data(load_config(None, ["dataset=cifar100"]))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        build_data(load_config(None, ["dataset=cub200", f"data_root={tmp_path / 'nothing'}"]))


def _write_folder(root, classes, per_class, rng, size=12):
    from PIL import Image

    for c in range(classes):
        (root / f"class_{c:02d}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)).save(root / f"class_{c:02d}" / f"{i}.png")


def test_image_folder_open_set_split_and_augmentation(tmp_path, rng):
    _write_folder(tmp_path, classes=8, per_class=5, rng=rng)
    data = build_data(load_config(None, ["dataset=cars196", f"data_root={tmp_path}", "image_size=16", "val_fraction=0.5"]))
    assert data.protocol == "open"
    assert (data.num_classes, data.info["val_classes"], data.info["test_classes"]) == (2, 2, 4)
    names = lambda ds: {ds.base.classes[ds.base.samples[i][1]] for i in ds.indices}  # noqa: E731
    train, val, test = names(data.train), names(data.val), names(data.test)
    assert not (train & val) and not (train & test) and not (val & test)
    assert test == {f"class_{c:02d}" for c in range(4, 8)}
    x, y = data.train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= y < 2
    assert data.test[0][0].shape == (3, 16, 16)


def test_image_folder_with_given_train_and_test(tmp_path, rng):
    _write_folder(tmp_path / "train", classes=7, per_class=3, rng=rng)
    _write_folder(tmp_path / "test", classes=2, per_class=3, rng=rng)
    data = build_data(load_config(None, ["dataset=sop", f"data_root={tmp_path}", "image_size=8", "val_fraction=0.3"]))
    assert (data.num_classes, data.info["test"], data.info["test_classes"]) == (5, 6, 2)


# ------------------------------------------------------------------------------------------ transforms
def test_cifar_augmentation_occludes_one_8x8_patch():
    train, evaluation = build_transforms("cifar")
    image = torch.full((3, 32, 32), 0.7)  # constant: crops and flips keep it, so only the patch differs
    out = train(image)
    zero = (out == 0).all(dim=0)
    rows, cols = torch.nonzero(zero, as_tuple=True)
    assert int(zero.sum()) == 64 and int(rows.max() - rows.min()) == 7 and int(cols.max() - cols.min()) == 7
    expected = (0.7 - torch.tensor([0.4914, 0.4822, 0.4465])) / torch.tensor([0.2470, 0.2435, 0.2616])
    assert torch.allclose(out[:, ~zero].mean(1), expected, atol=1e-5)
    assert torch.allclose(evaluation(image)[:, 0, 0], expected, atol=1e-5)


def test_no_augmentation_means_identical_train_and_eval():
    train, evaluation = build_transforms("cub200", image_size=16, augment=False)
    assert train is evaluation
    assert build_transforms("none") == (None, None)


# ------------------------------------------------------------------------------------------ models
def test_resnet50_cifar_differs_from_resnet50_only_in_the_first_conv():
    ours = timm.create_model("resnet50_cifar", num_classes=10)
    reference = timm.create_model("resnet50", num_classes=10)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(reference) - n(ours) == 64 * 3 * (7 * 7 - 3 * 3)
    assert ours.conv1.kernel_size == (3, 3) and ours.conv1.stride == (1, 1)
    with torch.no_grad():
        feats = ours.forward_features(torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, 2048, 2, 2)  # stride 1 stem + max-pool, then /2 /2 /2


def test_resnet_cifar_takes_a_head():
    model = polyheads.create_model("resnet18_cifar", num_classes=7, head="cosine", head_kwargs={"dim": 16})
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 7)
    assert polyheads.get_head(model).dim == 16


@pytest.mark.parametrize("shape", [(5, 4), (5, 4, 3, 3)])
def test_frozen_batch_norm_equals_eval_mode_batch_norm(shape):
    bn = (nn.BatchNorm1d if len(shape) == 2 else nn.BatchNorm2d)(4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    frozen = FrozenBatchNorm.from_batch_norm(bn)
    x = torch.randn(shape)
    frozen.train()
    bn.eval()
    assert torch.allclose(frozen(x), bn(x), atol=1e-6)
    assert list(frozen.parameters()) == []


def test_freeze_batch_norm_leaves_heads_and_makes_training_stateless():
    model = polyheads.create_model("convnet_mnist", num_classes=10, head="standard")
    before = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert freeze_batch_norm(model) == before == 3
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.randn(8, 1, 28, 28))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
