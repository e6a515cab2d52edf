"""polyheads: give any timm model a classifier head of a chosen embedding geometry.

    import polyheads, timm
    model = timm.create_model("resnet50", num_classes=100, head="vmf")

Layers (imports point down): ``functional`` (pure tensor math) -> ``heads`` (nn.Modules, registered
by name) -> ``timm`` (attach a head to a timm model) -> ``metrics`` / ``training`` / ``tools``.
"""
from . import functional
from ._checks import set_validation, validation
from .heads import Head, InverseTemperature
from .registry import create_head, get_head_class, is_head, list_heads, register_head
from .timm import attach_head, create_model, get_head, get_heads, head_inputs, load_backbone_state_dict
from .version import __version__
from . import models  # registers polyheads' own timm architectures (seed 000 App. E.1)
from .criterion import HeadLoss

__all__ = [
    "__version__",
    "functional",
    "metrics",
    "evaluate",
    "HeadLoss",
    "Head",
    "InverseTemperature",
    "register_head",
    "create_head",
    "list_heads",
    "is_head",
    "get_head_class",
    "attach_head",
    "create_model",
    "get_head",
    "get_heads",
    "head_inputs",
    "load_backbone_state_dict",
    "set_validation",
    "validation",
]


def __getattr__(name: str):
    """``polyheads.metrics`` and ``polyheads.evaluate`` load scikit-learn (~0.6 s): import them on first use."""
    if name == "metrics":
        from . import metrics

        return metrics
    if name == "evaluate":
        from .evaluation import evaluate

        return evaluate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
