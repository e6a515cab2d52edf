"""One configuration schema for every training run (seed 000 App. E, Tables 5-11).

A run is described by a flat YAML mapping whose keys are the fields of :class:`TrainConfig`
(``configs/default.yaml`` lists them all with comments). Loading validates every key and value:
an unknown key, a wrong type or a value out of range raises :class:`ConfigError` naming the key
and the file (or "command line" for overrides). Command-line overrides are ``key=value`` strings,
the value parsed as YAML (``lr=0.05``, ``nesterov=true``, ``head_kwargs.margin=0.3``,
``head_kwargs={dim: 3}``).

    cfg = load_config("configs/fashion_mnist/cosine.yaml", ["epochs=5", "seed=2"])
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .._checks import closest_matches

__all__ = ["TrainConfig", "ConfigError", "load_config", "parse_overrides", "apply_overrides", "config_to_dict",
           "DATASET_NAMES"]

#: data sets the trainer knows (see ``polyheads.training.datasets``)
DATASET_NAMES = ("fashion_mnist", "mnist", "cifar10", "cifar100", "cars196", "cub200", "sop", "folder", "digits")


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key and where it came from."""


@dataclass
class TrainConfig:
    """Every setting of a training run. Defaults: the bundled quick comparison on Fashion-MNIST."""

    # -- data (seed 000 App. E.2)
    dataset: str = "fashion_mnist"
    data_root: str | None = None          # folder with the files; None = the bundled location
    protocol: str | None = None           # "fixed" | "open"; None = the data set's own (App. E.2)
    image_size: int | None = None         # input side for folder data sets; None = the data set's own
    augment: bool = True                  # the data set's App. E.2 training augmentation
    val_fraction: float = 0.15            # fixed-set: of the training images; open-set: of the training classes
    split_seed: int = 0                   # the train/validation split is the same for every replication
    train_subset: int | None = None       # use only this many training images (stratified) -- quick runs
    test_subset: int | None = None        # evaluate on this many test images (stratified) -- quick runs
    # -- architecture (App. E.1)
    model: str = "convnet_mnist"          # any timm model name (polyheads registers convnet_mnist, resnet50_cifar)
    model_kwargs: dict = field(default_factory=dict)
    pretrained_path: str | None = None    # local backbone checkpoint (no hub); the old classifier is skipped
    freeze_bn: bool = False               # frozen BatchNorm statistics and affine parameters (open-set runs)
    head: str = "standard"
    head_kwargs: dict = field(default_factory=dict)
    embedding_dim: int | None = 3         # passed as dim= to heads that take one (unless head_kwargs sets it)
    # -- episodic batches (App. E.2): N classes x K instances
    batch_classes: int = 10
    batch_instances: int = 13
    episodes_per_epoch: int | None = 250  # None = len(train) // (N * K)
    eval_batch_size: int = 500
    num_workers: int = 0
    # -- optimisation (App. E.3, F)
    epochs: int = 3                       # the maximum; early stopping usually ends a run first
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    weight_decay_skip: list = field(default_factory=lambda: ["bias", "classifier"])
    temperature_lr: float | None = 0.001  # TLR: the learning rate of tau (beta = exp(tau))
    temperature_momentum: float | None = 0.0  # tau's momentum (0 in the authors' released code); None = momentum
    lr_patience: int = 15                 # halve the LR after this many epochs without improvement
    lr_factor: float = 0.5
    early_stop_patience: int = 35         # stop after this many epochs without improvement
    init_samples: int | None = 20000      # training images handed to head.init_from_data; None = all
    # -- runtime
    seed: int = 0
    device: str = "auto"                  # "auto" = cuda when available, else cpu
    amp: str = "auto"                     # "auto" (bf16 on CUDA, off on CPU) | "none" | "bf16" | "fp16"
    compile: bool = False                 # torch.compile the backbone
    output_dir: str | None = None         # None = runs/<dataset>/<head>/seed<seed>
    progress: bool = True                 # tqdm bars
    evaluate_test: bool = True            # evaluate the best weights on the test split at the end
    test_retrieval: bool = True           # include mAP@R (Table 4 columns) in the test evaluation

    def validate(self, source: str = "config") -> "TrainConfig":
        """Check every value; raise :class:`ConfigError` naming the key and ``source``."""
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), _hints()[f.name], source)

        def bad(key: str, message: str) -> ConfigError:
            return ConfigError(f"{source}: {key}: {message}")

        if self.dataset not in DATASET_NAMES:
            hint = closest_matches(self.dataset, DATASET_NAMES)
            raise bad("dataset", f"unknown data set {self.dataset!r}; one of {list(DATASET_NAMES)}"
                      + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        choices = {"protocol": (None, "fixed", "open"), "amp": ("auto", "none", "bf16", "fp16")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise bad(key, f"must be one of {list(allowed)}, got {getattr(self, key)!r}")
        for key in ("weight_decay_skip",):
            unknown = [v for v in getattr(self, key) if v not in ("bias", "classifier")]
            if unknown:
                raise bad(key, f"entries must be 'bias' or 'classifier', got {unknown}")
        positive = ["batch_classes", "batch_instances", "eval_batch_size", "epochs", "lr", "lr_patience",
                    "early_stop_patience", "episodes_per_epoch", "train_subset", "test_subset", "init_samples",
                    "image_size", "embedding_dim"]
        for key in positive:
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise bad(key, f"must be > 0, got {value}")
        non_negative = ["num_workers", "momentum", "weight_decay", "temperature_lr", "temperature_momentum", "seed",
                        "split_seed"]
        for key in non_negative:
            value = getattr(self, key)
            if value is not None and value < 0:
                raise bad(key, f"must be >= 0, got {value}")
        for key in ("momentum", "temperature_momentum"):
            value = getattr(self, key)
            if value is not None and value >= 1:
                raise bad(key, f"must be < 1, got {value}")
        if not 0 < self.val_fraction < 1:
            raise bad("val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        if not 0 < self.lr_factor < 1:
            raise bad("lr_factor", f"must be in (0, 1), got {self.lr_factor}")
        if self.device != "auto" and not self.device.split(":")[0] in ("cpu", "cuda", "mps", "xpu"):
            raise bad("device", f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        _check_head(self, source)
        return self

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """A plain, YAML/JSON-serialisable dict of ``config`` (what checkpoints store)."""
    return dataclasses.asdict(config)


_HINTS: dict[str, Any] = {}


def _hints() -> dict[str, Any]:
    if not _HINTS:
        _HINTS.update(typing.get_type_hints(TrainConfig))
    return _HINTS


def _type_label(hint: Any) -> str:
    args = typing.get_args(hint)
    if args:
        return " or ".join("null" if a is type(None) else a.__name__ for a in args)
    return hint.__name__


def _check_type(key: str, value: Any, hint: Any, source: str) -> None:
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
    for kind in allowed:
        if kind is type(None) and value is None:
            return
        if kind is bool and isinstance(value, bool):
            return
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if kind in (str, dict, list) and isinstance(value, kind):
            return
    raise ConfigError(f"{source}: {key}: expected {_type_label(hint)}, got {type(value).__name__} {value!r}")


def _check_head(config: TrainConfig, source: str) -> None:
    """The head must be registered and accept every key of ``head_kwargs``."""
    from ..registry import get_head_class, resolve_head_name

    try:
        name = resolve_head_name(config.head)
    except ValueError as exc:
        raise ConfigError(f"{source}: head: {exc}") from None
    try:
        signature = inspect.signature(get_head_class(name))
    except (TypeError, ValueError):
        return
    params = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = list(params)[2:]
    for key in config.head_kwargs:
        if key not in accepted:
            hint = closest_matches(str(key), accepted)
            raise ConfigError(
                f"{source}: head_kwargs: unknown key {key!r} for head {name!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; it accepts {accepted}"
            )


def _unknown_key(key: str, source: str) -> ConfigError:
    names = [f.name for f in fields(TrainConfig)]
    hint = closest_matches(key, names)
    return ConfigError(
        f"{source}: unknown key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        + f"; valid keys: {names}"
    )


def parse_overrides(overrides: Iterable[str]) -> list[tuple[str, Any]]:
    """``["lr=0.1", "head_kwargs.dim=3"]`` -> ``[("lr", 0.1), ("head_kwargs.dim", 3)]`` (values parsed as YAML)."""
    parsed = []
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"command line: override {item!r} must look like key=value")
        key, _, text = item.partition("=")
        key = key.strip()
        if not key:
            raise ConfigError(f"command line: override {item!r} has no key")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"command line: {key}: cannot parse value {text!r}: {exc}") from None
        parsed.append((key, value))
    return parsed


def _merge(data: dict[str, Any], key: str, value: Any, source: str) -> None:
    names = {f.name for f in fields(TrainConfig)}
    top, _, rest = key.partition(".")
    if top not in names:
        raise _unknown_key(top, source)
    if not rest:
        data[top] = value
        return
    current = data.get(top, getattr(TrainConfig(), top))
    if not isinstance(current, dict):
        raise ConfigError(f"{source}: {top} is not a mapping; {key!r} cannot set a sub-key")
    current = dict(current)
    current[rest] = value
    data[top] = current


def apply_overrides(config: TrainConfig, overrides: Iterable[str] | Mapping[str, Any], source: str = "command line") -> TrainConfig:
    """A new, validated config with ``overrides`` (``key=value`` strings or a mapping) applied."""
    data = config_to_dict(config)
    items = overrides.items() if isinstance(overrides, Mapping) else parse_overrides(overrides)
    for key, value in items:
        _merge(data, key, value, source)
    return TrainConfig(**data).validate(source)


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] | Mapping[str, Any] = ()) -> TrainConfig:
    """Read a YAML config (``None`` = the defaults), validate it, then apply ``overrides``."""
    if path is None:
        config = TrainConfig().validate("defaults")
    else:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"no config file at {path}")
        source = str(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from None
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping of key: value, got {type(raw).__name__}")
        data: dict[str, Any] = {}
        for key, value in raw.items():
            if not isinstance(key, str):
                raise ConfigError(f"{source}: keys must be strings, got {key!r}")
            _merge(data, key, value, source)
        config = TrainConfig(**data).validate(source)
    return apply_overrides(config, overrides) if overrides else config
