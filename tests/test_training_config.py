"""Config schema: validation errors name the key and the file; overrides; the shipped configs."""
from pathlib import Path

import pytest

from polyheads.training.config import ConfigError, TrainConfig, apply_overrides, load_config, parse_overrides

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "cars196", "cub200", "sop")
LOSSES = ("standard", "poincare", "cosine", "arcface", "vmf")


def _write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_key_file_and_closest(tmp_path):
    path = _write(tmp_path, "dataset: mnist\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "'learning_rate'" in message and "valid keys" in message


def test_typo_suggests_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'epoch' \(did you mean 'epochs'\?\)"):
        load_config(_write(tmp_path, "epoch: 3\n"))


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("lr: fast\n", r"lr: expected float, got str"),
        ("epochs: 2.5\n", r"epochs: expected int, got float"),
        ("nesterov: 1\n", r"nesterov: expected bool, got int"),
        ("lr: -1\n", r"lr: must be > 0"),
        ("momentum: 1.0\n", r"momentum: must be < 1"),
        ("val_fraction: 0\n", r"val_fraction: must be in \(0, 1\)"),
        ("dataset: fashionmnist\n", r"unknown data set 'fashionmnist'.*did you mean 'fashion_mnist'"),
        ("amp: fp8\n", r"amp: must be one of"),
        ("head: cosin\n", r"head: unknown head 'cosin'.*cosine"),
        ("head: cosine\nhead_kwargs: {init_tua: 1.0}\n", r"head_kwargs: unknown key 'init_tua' for head 'cosine' \(did you mean 'init_tau'\?\)"),
        ("- a\n- b\n", r"expected a mapping"),
    ],
)
def test_bad_values_name_the_key_and_the_file(tmp_path, text, pattern):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_overrides_are_yaml_and_reach_sub_keys():
    assert parse_overrides(["lr=0.05", "nesterov=true", "head_kwargs={dim: 3}", "output_dir="]) == [
        ("lr", 0.05), ("nesterov", True), ("head_kwargs", {"dim": 3}), ("output_dir", None)]
    cfg = load_config(None, ["head=cosine", "head_kwargs.init_tau=1.5", "head_kwargs.scale=null", "epochs=7"])
    assert cfg.head_kwargs == {"init_tau": 1.5, "scale": None} and cfg.epochs == 7 and cfg.head == "cosine"
    assert apply_overrides(cfg, {"lr": 2}).lr == 2  # an int is a valid float


def test_override_errors_say_command_line():
    with pytest.raises(ConfigError, match=r"command line: unknown key 'lrr' \(did you mean 'lr'\?\)"):
        load_config(None, ["lrr=0.1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["lr"])
    with pytest.raises(ConfigError, match=r"command line: lr: expected float"):
        load_config(None, ["lr=abc"])
    with pytest.raises(ConfigError, match="not a mapping"):
        load_config(None, ["lr.x=1"])


def test_missing_file():
    with pytest.raises(ConfigError, match="no config file"):
        load_config("/nonexistent/run.yaml")


def test_default_yaml_documents_every_key_with_the_defaults():
    text = (CONFIGS / "default.yaml").read_text()
    keys = {line.split(":")[0] for line in text.splitlines() if line and not line.startswith((" ", "#"))}
    assert keys == set(TrainConfig.__dataclass_fields__)
    assert load_config(CONFIGS / "default.yaml") == TrainConfig()


def test_seed_tables_5_to_11_have_a_config_each():
    files = sorted(CONFIGS.glob("*/*.yaml"))
    assert {(f.parent.name, f.stem) for f in files} == {(d, h) for d in DATASETS for h in LOSSES}
    for f in files:
        cfg = load_config(f)
        assert (cfg.dataset, cfg.head) == (f.parent.name, f.stem)
        assert (cfg.lr_patience, cfg.early_stop_patience, cfg.lr_factor) == (15, 35, 0.5)


@pytest.mark.parametrize(
    "name, expected",
    [   # values read off seed 000 Tables 6, 8, 10 and 11 and App. E.1/E.2
        ("fashion_mnist/vmf", dict(lr=0.05, temperature_lr=0.001, momentum=0.99, nesterov=False, weight_decay=0.0,
                                   embedding_dim=3, batch_classes=10, batch_instances=13, head_kwargs={"lam": 0.4, "init_tau": 0.0})),
        ("cifar100/arcface", dict(lr=0.01, temperature_lr=0.0001, momentum=0.99, nesterov=True, weight_decay=5e-4,
                                  embedding_dim=128, batch_classes=32, batch_instances=8, model="resnet50_cifar",
                                  head_kwargs={"margin": 0.3, "margin_warmup_epochs": 100, "init_tau": 0.0})),
        ("cub200/cosine", dict(lr=0.001, temperature_lr=0.0001, momentum=0.9, nesterov=False, weight_decay=5e-4,
                               embedding_dim=512, batch_classes=32, batch_instances=4, freeze_bn=True,
                               head_kwargs={"init_tau": 2.773})),
        ("sop/poincare", dict(lr=0.0005, momentum=0.99, nesterov=False, weight_decay=1e-4, batch_instances=2,
                              head_kwargs={"c": 1e-5})),
    ],
)
def test_spot_values_of_the_seed_tables(name, expected):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert {k: getattr(cfg, k) for k in expected} == expected
