"""timm integration: put a polyheads head where a timm model's classifier was.

After ``import polyheads``::

    model = timm.create_model("resnet50", num_classes=100, head="vmf", head_kwargs={"dim": 512})

What is patched, and why
------------------------
``import polyheads`` replaces two names in the module ``timm.models._factory`` -- nothing else:

* ``model_entrypoint``: ``timm.create_model`` looks it up at call time to find the model's
  constructor. polyheads wraps the constructor it returns: the wrapper removes polyheads' own keyword
  arguments (``head``, ``polyhead``, ``head_kwargs``) so that no timm constructor ever sees them,
  builds the model (pretrained weights included), then attaches the head. Because ``create_model``
  resolves the name at call time, this also works for ``from timm import create_model`` done before
  ``import polyheads``. Calls without these arguments reach timm unchanged.
* ``load_checkpoint``: ``create_model(checkpoint_path=...)`` loads a checkpoint after construction.
  For a model with a polyheads head, a checkpoint of the plain timm model (with its old classifier)
  loads the backbone and skips the old classifier with one log line; a polyheads checkpoint loads
  whole, strictly.

Models whose constructor has a ``head`` parameter of its own (HRNet's ``head="incre"``) keep it:
``head=`` is taken by polyheads only when its value is a registered head name; ``polyhead=`` is the
spelling that can never collide. :func:`uninstall` restores timm's originals.

Where the head goes: the positions timm itself clears in ``reset_classifier(0)`` -- the modules it
turns into ``nn.Identity``. Their input is exactly what ``forward_head(x, pre_logits=True)`` returns,
for every family (``fc``, ``head.fc``, ``classifier``, LeViT's ``NormLinear``, the two heads of
distilled models, 1x1-convolution classifiers). ``reset_classifier(n)`` on such a model rebuilds the
same kind of head with the same keyword arguments.
"""
from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, Callable

import timm
import timm.models._factory as _factory
import torch
from timm.models import _registry
from torch import nn

from ._checks import check_int
from .heads.base import Head
from .registry import create_head, is_head, resolve_head_name

__all__ = [
    "attach_head",
    "create_model",
    "get_head",
    "get_heads",
    "head_inputs",
    "pre_logits",
    "install",
    "uninstall",
    "load_backbone_state_dict",
    "model_takes_own_head",
    "POLYHEADS_KWARGS",
]

_logger = logging.getLogger("polyheads")

#: keyword arguments of ``timm.create_model`` that belong to polyheads (removed before timm sees them)
POLYHEADS_KWARGS = ("head", "polyhead", "head_kwargs")

_ORIGINALS: dict[str, Callable[..., Any]] = {}


# ---------------------------------------------------------------------------------------------
# finding and replacing the classifier
# ---------------------------------------------------------------------------------------------
def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and leaf.isdigit():
        parent[int(leaf)] = module
    else:
        setattr(parent, leaf, module)


def _input_width(module: nn.Module | None, model: nn.Module) -> int:
    """The number of features the classifier at a position received."""
    if isinstance(module, Head):
        return module.in_features
    if module is not None:
        for m in module.modules():
            if isinstance(m, nn.Linear):
                return m.in_features
            if isinstance(m, nn.Conv2d):
                return m.in_channels
    width = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
    if not width:
        raise TypeError(f"cannot tell the classifier input width of {type(model).__name__}")
    return int(width)


def _param_placement(module: nn.Module | None, model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for source in (module, model):
        if source is None:
            continue
        for p in source.parameters():
            if p.is_floating_point():
                # head math is float32 (float64 only for a float64 model); never fp16/bf16 parameters
                dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
                return p.device, dtype
    return torch.device("cpu"), torch.float32


def _cleared_positions(model: nn.Module, reset_args: tuple = (), reset_kwargs: dict | None = None) -> dict[str, nn.Module | None]:
    """Clear the classifier(s) with timm's own ``reset_classifier(0)`` and return ``{path: removed module}``."""
    before = dict(model.named_modules())
    if callable(getattr(model, "reset_classifier", None)):
        model.reset_classifier(0, *reset_args, **(reset_kwargs or {}))
        after = dict(model.named_modules())
        cleared = {
            path: before[path]
            for path, m in after.items()
            if path and path in before and isinstance(m, nn.Identity) and not isinstance(before[path], nn.Identity)
        }
        if cleared:
            return cleared
    paths = getattr(model, "pretrained_cfg", {}).get("classifier") if hasattr(model, "pretrained_cfg") else None
    if isinstance(paths, str):
        paths = (paths,)
    if not paths:
        raise TypeError(
            f"{type(model).__name__} has no classifier polyheads can replace: expected a timm model "
            "(reset_classifier() or pretrained_cfg['classifier'])"
        )
    cleared = {}
    for path in paths:
        try:
            cleared[path] = model.get_submodule(path)
        except AttributeError:
            continue
    if not cleared:
        raise TypeError(f"{type(model).__name__}: none of its classifier paths {list(paths)} exists")
    return cleared


def _describe(module: nn.Module | None) -> str:
    if module is None:
        return "nothing"
    if isinstance(module, nn.Linear):
        return f"Linear({module.in_features}->{module.out_features})"
    if isinstance(module, nn.Conv2d):
        return f"Conv2d 1x1({module.in_channels}->{module.out_channels})"
    if isinstance(module, Head):
        return f"{type(module).__name__}({module.in_features}->{module.dim}->{module.num_classes})"
    return type(module).__name__


def _attach(
    model: nn.Module,
    name: str,
    num_classes: int,
    head_kwargs: dict[str, Any],
    reset_args: tuple = (),
    reset_kwargs: dict | None = None,
) -> nn.Module:
    name = resolve_head_name(name)
    previous_cfg, previous_classes = model.__dict__.get("polyheads_cfg"), getattr(model, "num_classes", None)
    model.__dict__["polyheads_cfg"] = None  # let reset_classifier below reach timm's own implementation
    cleared = _cleared_positions(model, reset_args, reset_kwargs)
    heads = {}
    try:
        for path, removed in cleared.items():
            head = create_head(name, _input_width(removed, model), num_classes, **head_kwargs)
            device, dtype = _param_placement(removed, model)
            heads[path] = head.to(device=device, dtype=dtype).train(model.training)
    except Exception:  # bad head arguments: give the model its classifier back before raising
        for path, removed in cleared.items():
            if removed is not None:
                _set_submodule(model, path, removed)
        model.num_classes = previous_classes
        model.__dict__["polyheads_cfg"] = previous_cfg
        raise
    for path, head in heads.items():
        _set_submodule(model, path, head)
    model.num_classes = num_classes
    model.__dict__["polyheads_cfg"] = {"head": name, "head_kwargs": dict(head_kwargs), "paths": list(heads)}
    _install_reset_hook(type(model))
    for path, removed in cleared.items():
        _logger.info(
            "polyheads: %s.%s %s replaced by head %r %s; the old classifier's weights are not used",
            type(model).__name__, path, _describe(removed), name, _describe(heads[path]),
        )
    return model


def attach_head(
    model: nn.Module,
    head: str,
    num_classes: int | None = None,
    head_kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Replace the classifier(s) of a timm ``model`` by polyheads head(s), in place; returns ``model``.

    Args:
        model: a timm model (anything with ``reset_classifier`` or ``pretrained_cfg['classifier']``).
        head: a registered head name (:func:`polyheads.list_heads`).
        num_classes: classes of the new head; default ``model.num_classes``.
        head_kwargs: keyword arguments of the head (``dim``, ``margin``, ...).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a timm model), got {type(model).__name__}")
    if head_kwargs is None:
        head_kwargs = {}
    if not isinstance(head_kwargs, Mapping):
        raise TypeError(f"head_kwargs must be a dict of the head's keyword arguments, got {type(head_kwargs).__name__}")
    name = resolve_head_name(head)
    if num_classes is None:
        num_classes = getattr(model, "num_classes", None)
        if num_classes is None:
            raise ValueError("num_classes is required: the model has no num_classes attribute")
    num_classes = check_int("num_classes", num_classes, minimum=0)
    if num_classes == 0:
        raise ValueError(
            "num_classes=0 makes a timm model a feature extractor without classifier; "
            f"head={name!r} needs num_classes >= 2"
        )
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 for a classifier head, got {num_classes}")
    return _attach(model, name, num_classes, dict(head_kwargs))


def _install_reset_hook(cls: type) -> None:
    """Make ``reset_classifier`` of this model class rebuild polyheads heads on instances that have
    them (instances without a head see timm's method unchanged)."""
    original = getattr(cls, "reset_classifier", None)
    if original is None or getattr(original, "_polyheads_hook", False):
        return

    @functools.wraps(original)
    def reset_classifier(self: nn.Module, num_classes: int, *args: Any, **kwargs: Any) -> Any:
        cfg = self.__dict__.get("polyheads_cfg")
        if not cfg:
            return original(self, num_classes, *args, **kwargs)
        if num_classes == 0:  # timm convention: a feature extractor; the head goes away
            self.__dict__["polyheads_cfg"] = None
            return original(self, 0, *args, **kwargs)
        check_int("num_classes", num_classes, minimum=2)
        _attach(self, cfg["head"], num_classes, cfg["head_kwargs"], args, kwargs)
        return None

    reset_classifier._polyheads_hook = True  # type: ignore[attr-defined]
    setattr(cls, "reset_classifier", reset_classifier)


def get_heads(model: nn.Module) -> list[Head]:
    """The polyheads heads of ``model`` (two for distilled models), in classifier order."""
    cfg = getattr(model, "polyheads_cfg", None)
    if cfg:
        return [model.get_submodule(p) for p in cfg["paths"]]
    return [m for m in model.modules() if isinstance(m, Head)]


def get_head(model: nn.Module) -> Head:
    """The (first) polyheads head of ``model``; ``ValueError`` if it has none."""
    if isinstance(model, Head):
        return model
    heads = get_heads(model)
    if not heads:
        raise ValueError(f"{type(model).__name__} has no polyheads head: create it with head=... or attach_head()")
    return heads[0]


def pre_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The pooled features a timm model's head receives: ``forward_head(forward_features(x), pre_logits=True)``."""
    return model.forward_head(model.forward_features(images), pre_logits=True)


def head_inputs(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Run ``model`` on ``images`` and return what each of its heads received, in head order.

    For one head this equals ``forward_head(forward_features(x), pre_logits=True)``. Models with two
    classifiers feed them different tensors (a distilled DeiT: the class and the distillation token;
    CrossViT: one branch each) while ``pre_logits=True`` returns their average or concatenation; this
    gives each head its own input, so each head's ``loss`` sees exactly what its ``forward`` sees.
    """
    heads = get_heads(model)
    if not heads:
        raise ValueError(f"{type(model).__name__} has no polyheads head")
    captured: dict[int, torch.Tensor] = {}

    def hook(index: int) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple) -> None:
            captured[index] = args[0]
        return record

    handles = [h.register_forward_pre_hook(hook(i)) for i, h in enumerate(heads)]
    try:
        model(images)
    finally:
        for handle in handles:
            handle.remove()
    missing = [i for i in range(len(heads)) if i not in captured]
    if missing:
        raise RuntimeError(f"{type(model).__name__}.forward did not call heads {missing}")
    return [captured[i] for i in range(len(heads))]


# ---------------------------------------------------------------------------------------------
# create_model and the timm patch
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def model_takes_own_head(model_name: str) -> bool:
    """Whether a timm model's constructor has a ``head`` parameter of its own (HRNet does)."""
    module_name = _registry._model_to_module.get(model_name)
    module = sys.modules.get(f"timm.models.{module_name}") if module_name else None
    if module is None:
        return False
    for obj in vars(module).values():
        if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == module.__name__:
            try:
                if "head" in inspect.signature(obj.__init__).parameters:
                    return True
            except (TypeError, ValueError):
                continue
    return False


def _pop_head_spec(model_name: str, kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """Remove polyheads' keyword arguments from ``kwargs``; return (head name, head kwargs) or None."""
    polyhead = kwargs.pop("polyhead", None)
    head_kwargs = kwargs.pop("head_kwargs", None)
    head = kwargs.get("head")
    own_head = model_takes_own_head(model_name)
    name = None
    if polyhead is not None:
        if head is not None and not own_head:
            raise ValueError(f"pass the head as head= or polyhead=, not both (got {head!r} and {polyhead!r})")
        name = resolve_head_name(polyhead)
    elif head is not None:
        if isinstance(head, str) and is_head(head):
            kwargs.pop("head")
            name = resolve_head_name(head)
        elif not own_head:
            kwargs.pop("head")
            name = resolve_head_name(head)  # raises: unknown name, with the closest matches
    if name is None:
        if head_kwargs is not None:
            raise ValueError("head_kwargs was given without a polyheads head (head=... or polyhead=...)")
        return None
    if head_kwargs is None:
        head_kwargs = {}
    if not isinstance(head_kwargs, Mapping):
        raise TypeError(f"head_kwargs must be a dict of the head's keyword arguments, got {type(head_kwargs).__name__}")
    if kwargs.get("features_only"):
        raise ValueError("features_only=True builds a feature extractor without classifier; it takes no head=")
    if kwargs.get("num_classes", None) == 0:
        raise ValueError(
            "num_classes=0 makes a timm model a feature extractor without classifier; "
            f"head={name!r} needs num_classes >= 2"
        )
    return name, dict(head_kwargs)


def _wrap_entrypoint(model_name: str, fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    if getattr(fn, "_polyheads_wrapped", False):
        return fn

    @functools.wraps(fn)
    def entrypoint(*args: Any, **kwargs: Any) -> nn.Module:
        spec = _pop_head_spec(model_name, kwargs)
        if spec is None:
            return fn(*args, **kwargs)
        name, head_kwargs = spec
        model = fn(*args, **kwargs)
        return attach_head(model, name, head_kwargs=head_kwargs)

    entrypoint._polyheads_wrapped = True  # type: ignore[attr-defined]
    return entrypoint


def _model_entrypoint(model_name: str, module_filter: str | None = None) -> Callable[..., nn.Module]:
    fn = _ORIGINALS["model_entrypoint"](model_name, module_filter=module_filter)
    return _wrap_entrypoint(model_name, fn)


def load_backbone_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Load ``state_dict`` into a model with polyheads heads.

    A polyheads checkpoint (every head tensor present with its shape) loads whole and strictly. A
    checkpoint of the plain timm model loads its backbone; the old classifier's entries at the
    heads' positions are skipped (one log line) and the heads keep their own initialisation.
    Any other mismatch raises like ``load_state_dict(strict=True)``. Returns the skipped keys.
    """
    cfg = getattr(model, "polyheads_cfg", None) or {}
    prefixes = tuple(f"{p}." for p in cfg.get("paths", []))
    own = model.state_dict()
    head_keys = [k for k in own if k.startswith(prefixes)]
    complete = all(k in state_dict and tuple(state_dict[k].shape) == tuple(own[k].shape) for k in head_keys)
    extra_in_head = [k for k in state_dict if k.startswith(prefixes) and k not in own]
    if complete and not extra_in_head:
        model.load_state_dict(state_dict, strict=True)
        return []
    skipped = [k for k in state_dict if k.startswith(prefixes)]
    backbone = {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}
    result = model.load_state_dict(backbone, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(prefixes)]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"Error(s) in loading state_dict for {type(model).__name__}: "
            f"missing keys {missing}, unexpected keys {list(result.unexpected_keys)}"
        )
    _logger.info(
        "polyheads: loaded the backbone; skipped %d classifier entries %s, the %r head keeps its own initialisation",
        len(skipped), skipped, cfg.get("head"),
    )
    return skipped


def _load_checkpoint(model: nn.Module, checkpoint_path: str, use_ema: bool = True, device: Any = "cpu",
                     strict: bool = True, remap: bool = False, filter_fn: Callable | None = None,
                     weights_only: bool = True) -> Any:
    original = _ORIGINALS["load_checkpoint"]
    is_numpy = os.path.splitext(str(checkpoint_path))[-1].lower() in (".npz", ".npy")
    if not getattr(model, "polyheads_cfg", None) or not strict or remap or filter_fn is not None or is_numpy:
        return original(model, checkpoint_path, use_ema=use_ema, device=device, strict=strict,
                        remap=remap, filter_fn=filter_fn, weights_only=weights_only)
    from timm.models import load_state_dict

    state_dict = load_state_dict(checkpoint_path, use_ema, device=device, weights_only=weights_only)
    return load_backbone_state_dict(model, state_dict)


def install() -> None:
    """Patch ``timm.models._factory`` so that ``timm.create_model`` understands ``head=`` (idempotent)."""
    if "model_entrypoint" not in _ORIGINALS:
        _ORIGINALS["model_entrypoint"] = _factory.model_entrypoint
        _ORIGINALS["load_checkpoint"] = _factory.load_checkpoint
    _factory.model_entrypoint = _model_entrypoint
    _factory.load_checkpoint = _load_checkpoint


def uninstall() -> None:
    """Restore timm's original ``model_entrypoint`` and ``load_checkpoint``."""
    if "model_entrypoint" in _ORIGINALS:
        _factory.model_entrypoint = _ORIGINALS["model_entrypoint"]
        _factory.load_checkpoint = _ORIGINALS["load_checkpoint"]


def create_model(
    model_name: str,
    pretrained: bool = False,
    *,
    head: str | None = None,
    head_kwargs: Mapping[str, Any] | None = None,
    polyhead: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model`` with a polyheads head: ``create_model("resnet50", num_classes=100, head="vmf")``.

    All other arguments (``pretrained``, ``checkpoint_path``, ``pretrained_cfg_overlay``, ``drop_rate``,
    ...) are timm's. ``head=None`` returns the plain timm model.
    """
    install()
    extra = {k: v for k, v in (("head", head), ("head_kwargs", head_kwargs), ("polyhead", polyhead)) if v is not None}
    return _factory.create_model(model_name, pretrained=pretrained, **extra, **kwargs)


install()
