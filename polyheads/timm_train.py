"""Run timm's own ``train.py`` with a polyheads head, unchanged::

    python -m polyheads.timm_train --train-script pytorch-image-models/train.py --head arcface \\
        --head-kwargs '{"margin": 0.3}' -- /data/imagenet --model resnet50 --num-classes 1000 --amp

timm's ``train.py`` is not part of the ``timm`` package (neither the wheel nor the sdist ships it): it
lives in a clone of https://github.com/huggingface/pytorch-image-models, which ``--train-script`` points
to (or the environment variable ``POLYHEADS_TIMM_TRAIN_SCRIPT``). Everything after ``--`` is the script's
own command line.

What this runner does, before the script's ``main()`` runs and without editing the file:

1. **Loads the script as a module** (its ``if __name__ == "__main__"`` block does not fire), so its
   import-time bindings exist -- ``from timm.models import create_model``, the loss classes, ``timm.task``'s
   ``ClassificationTask`` -- and then **replaces those bound names in the script's namespace**. A patch of
   ``timm.create_model`` made after the script imported it would never reach the script; replacing the
   script's own global does. (``import polyheads`` alone already makes ``--model-kwargs head=NAME`` work,
   because polyheads patches the entry-point lookup ``create_model`` performs at call time; the runner
   adds the criterion and the hooks below.)
2. ``create_model``: its first call gets ``polyhead=NAME, head_kwargs=...``. A model with two heads
   (distilled DeiT / LeViT) is switched to ``set_distilled_training(True)`` so that training returns one
   logits tensor per head.
3. **The criterion**: the loss train.py built from its flags becomes :class:`polyheads.HeadLoss` of the
   model -- ``nn.CrossEntropyLoss`` -> ``HeadLoss()``, ``LabelSmoothingCrossEntropy`` (``--smoothing``) ->
   ``HeadLoss(label_smoothing=ε)``, ``SoftTargetCrossEntropy`` (``--mixup`` / ``--cutmix``) -> ``HeadLoss()``
   on probability targets, for the heads that accept them (otherwise a clear error before the first step).
   ``--bce-loss`` / ``--jsd-loss`` are refused: they are other objectives. Task-based scripts
   (timm >= 1.0.2x: ``ClassificationTask(criterion=...)``) and older ones (``train_one_epoch(..., loss_fn,
   ...)``) are both handled. Validation keeps train.py's ``nn.CrossEntropyLoss`` on the eval-mode output:
   the predictive negative log-likelihood, comparable across heads.
4. ``train_one_epoch``: every head's ``on_epoch_start(epoch)`` (margin warm-up, SphereFace's λ), and
   before the first epoch ``init_from_data`` on ``--init-batches`` training batches for heads that have
   one (vMF's α, seed 000 App. D) unless a checkpoint already set it.
5. ``create_optimizer_v2``: a model with manifold parameters (``poincare``) gets geoopt's Riemannian
   version of the optimizer timm built (SGD -> ``RiemannianSGD``, Adam/AdamW -> ``RiemannianAdam``, same
   parameter groups); other optimizers are refused for it.

Flags that cannot work with a polyheads head are refused up front: ``--model-dtype float16/bfloat16``
(it casts the head; use ``--amp``), ``--torchscript``, ``--head-init-scale`` / ``--head-init-bias``
(heads have their own initialisation), ``--bce-loss``, ``--jsd-loss``.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import inspect
import itertools
import json
import logging
import os
import sys
from types import ModuleType
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .criterion import HeadLoss, unwrap_model
from .heads.base import Head
from .registry import list_heads, resolve_head_name
from .timm import get_heads

__all__ = ["load_train_script", "patch_train_script", "to_head_loss", "run", "main", "TimmTrainError", "TRAIN_SCRIPT_ENV"]

_logger = logging.getLogger("polyheads")

#: environment variable naming timm's train.py when --train-script is not given
TRAIN_SCRIPT_ENV = "POLYHEADS_TIMM_TRAIN_SCRIPT"

_SCRIPT_MODULE = "polyheads_timm_train_script"


class TimmTrainError(ValueError):
    """A train.py setting that cannot work with a polyheads head (reported without a traceback)."""


def load_train_script(path: str | os.PathLike) -> ModuleType:
    """Import timm's ``train.py`` (or a script of the same structure) as a module without running
    ``main()``: its top-level imports bind their names, nothing else happens."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"train script {path!r} does not exist. timm's train.py is not part of the timm package: clone "
            "https://github.com/huggingface/pytorch-image-models and pass --train-script <clone>/train.py "
            f"(or set {TRAIN_SCRIPT_ENV})"
        )
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)  # as `python train.py` would: the script may import its neighbours
    spec = importlib.util.spec_from_file_location(_SCRIPT_MODULE, path)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has a loader
        raise ImportError(f"cannot import {path!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_SCRIPT_MODULE] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "main", None)):
        raise TimmTrainError(f"{path!r} has no main() function: is it timm's train.py?")
    return module


# ---------------------------------------------------------------------------------------------
# the criterion
# ---------------------------------------------------------------------------------------------
def _soft_target_check(criterion: HeadLoss) -> None:
    refused = criterion.soft_target_refusals()
    if refused:
        name, why = next(iter(refused.items()))
        raise TimmTrainError(
            f"--mixup / --cutmix make probability targets, which head {name!r} refuses: {why}. Heads that accept "
            f"them: {', '.join(HeadLoss.soft_target_heads())} (and the polytope heads with margin=0.0). "
            "Drop --mixup/--cutmix (label smoothing alone is --smoothing)"
        )


def to_head_loss(criterion: Any, model: nn.Module) -> HeadLoss:
    """The :class:`~polyheads.HeadLoss` that replaces the loss train.py built from its flags.

    ``nn.CrossEntropyLoss`` (``label_smoothing`` kept), timm's ``LabelSmoothingCrossEntropy`` (its
    ``smoothing``) and ``SoftTargetCrossEntropy`` (mixup / cutmix targets) map to ``HeadLoss``; anything
    else (``BinaryCrossEntropy``, ``JsdCrossEntropy``, weighted or non-mean losses) raises ``ValueError``.
    """
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if isinstance(criterion, HeadLoss):
        return criterion
    if isinstance(criterion, nn.CrossEntropyLoss):
        if criterion.weight is not None or criterion.reduction != "mean" or criterion.ignore_index >= 0:
            raise TimmTrainError(
                "the training loss is a CrossEntropyLoss with class weights, ignore_index or a non-mean "
                "reduction; HeadLoss computes the head's own mean objective"
            )
        return HeadLoss(model, label_smoothing=criterion.label_smoothing)
    if isinstance(criterion, LabelSmoothingCrossEntropy):
        return HeadLoss(model, label_smoothing=float(criterion.smoothing))
    if isinstance(criterion, SoftTargetCrossEntropy):
        loss = HeadLoss(model)
        _soft_target_check(loss)
        return loss
    raise TimmTrainError(
        f"the training loss {type(criterion).__name__} is another objective than the head's own "
        "(--bce-loss, --jsd-loss, ...): a polyheads head trains with HeadLoss (cross-entropy with or without "
        "--smoothing, or --mixup/--cutmix targets for the heads that accept them)"
    )


# ---------------------------------------------------------------------------------------------
# patching the script's namespace
# ---------------------------------------------------------------------------------------------
class _Session:
    """What the patches share: the head to install and the model it went into."""

    def __init__(self, head: str | None, head_kwargs: dict[str, Any], init_batches: int) -> None:
        self.head = head
        self.head_kwargs = head_kwargs
        self.init_batches = init_batches
        self.model: nn.Module | None = None
        self.initialised = False
        self.converted: dict[int, HeadLoss] = {}

    def require_model(self) -> nn.Module:
        if self.model is None:
            raise TimmTrainError(
                "the model has no polyheads head: pass --head NAME to polyheads.timm_train "
                f"(registered: {', '.join(list_heads())}) or --model-kwargs head=NAME to train.py"
            )
        return self.model

    def head_loss(self, criterion: Any) -> HeadLoss:
        key = id(criterion)
        if key not in self.converted:
            try:
                loss = to_head_loss(criterion, self.require_model())
            except TimmTrainError:
                raise
            except ValueError as error:  # a head refusing label smoothing / probability targets
                hint = ""
                if "label_smoothing" in str(error):
                    hint = " -- train.py's --smoothing defaults to 0.1: pass --smoothing 0"
                raise TimmTrainError(f"{error}{hint}") from error
            self.converted[key] = loss
            _logger.info("polyheads: training loss %s -> %r", type(criterion).__name__, loss)
        return self.converted[key]


def _wrap_create_model(original: Callable[..., nn.Module], session: _Session) -> Callable[..., nn.Module]:
    @functools.wraps(original)
    def create_model(*args: Any, **kwargs: Any) -> nn.Module:
        first = session.model is None
        if first and session.head is not None:
            if kwargs.get("head") is not None or kwargs.get("polyhead") is not None:
                raise TimmTrainError("pass the head once: --head to polyheads.timm_train or --model-kwargs head=... to train.py")
            kwargs["polyhead"] = session.head
            kwargs["head_kwargs"] = dict(session.head_kwargs)
        model = original(*args, **kwargs)
        heads = get_heads(model)
        if first and heads:
            session.model = model
            if len(heads) > 1 and callable(getattr(model, "set_distilled_training", None)):
                model.set_distilled_training(True)  # training returns (logits, logits_dist): one per head
            _logger.info(
                "polyheads: %s with head(s) %s", type(model).__name__,
                ", ".join(f"{h.head_name!r} ({h.in_features}->{h.dim}->{h.num_classes})" for h in heads),
            )
        return model

    return create_model


def _wrap_task(cls: type, session: _Session) -> type:
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if getattr(self, "criterion", None) is not None:
            self.criterion = session.head_loss(self.criterion)

    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__, "__qualname__": cls.__qualname__})


def _initialise_heads(session: _Session, model: nn.Module, loader: Any) -> None:
    session.initialised = True
    heads = get_heads(session.require_model())
    pending = [
        h for h in heads
        if type(h).init_from_data is not Head.init_from_data and not bool(getattr(h, "alpha_from_data", False))
    ]
    if not pending or session.init_batches == 0 or loader is None:
        return
    from .training.engine import init_heads_from_data

    raw = unwrap_model(session.require_model())
    device = next(raw.parameters()).device
    batches = itertools.islice(iter(loader), session.init_batches)
    init_heads_from_data(raw, batches, device=device)
    _logger.info(
        "polyheads: init_from_data on %d training batch(es) for head(s) %s",
        session.init_batches, ", ".join(h.head_name for h in pending),
    )


def _wrap_train_one_epoch(original: Callable[..., Any], session: _Session) -> Callable[..., Any]:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def train_one_epoch(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind_partial(*args, **kwargs)
        epoch = int(bound.arguments.get("epoch", 0))
        if not session.initialised:
            _initialise_heads(session, bound.arguments.get("model"), bound.arguments.get("loader"))
        for head in get_heads(session.require_model()):
            head.on_epoch_start(epoch)
        if "loss_fn" in bound.arguments:  # scripts before timm.task: the loss is an argument
            bound.arguments["loss_fn"] = session.head_loss(bound.arguments["loss_fn"])
        return original(*bound.args, **bound.kwargs)

    return train_one_epoch


def _riemannian(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    import geoopt

    defaults = optimizer.defaults
    if isinstance(optimizer, torch.optim.SGD):
        keys = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
        return geoopt.optim.RiemannianSGD(optimizer.param_groups, **{k: defaults[k] for k in keys}, stabilize=10)
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        keys = ("lr", "betas", "eps", "weight_decay", "amsgrad")
        return geoopt.optim.RiemannianAdam(optimizer.param_groups, **{k: defaults[k] for k in keys}, stabilize=10)
    raise TimmTrainError(
        f"the model has manifold parameters (the poincare head's offsets) and --opt built {type(optimizer).__name__}; "
        "use --opt sgd / momentum / adam / adamw (they get geoopt's Riemannian versions)"
    )


def _wrap_create_optimizer(original: Callable[..., torch.optim.Optimizer]) -> Callable[..., torch.optim.Optimizer]:
    @functools.wraps(original)
    def create_optimizer_v2(model_or_params: Any, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        optimizer = original(model_or_params, *args, **kwargs)
        import geoopt

        if any(isinstance(p, geoopt.ManifoldParameter) for g in optimizer.param_groups for p in g["params"]):
            optimizer = _riemannian(optimizer)
            _logger.info("polyheads: manifold parameters -> %s", type(optimizer).__name__)
        return optimizer

    return create_optimizer_v2


#: train.py flags a polyheads head cannot work with, and why
_REFUSED_FLAGS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("--model-dtype", lambda v: v not in (None, "", "float32"),
     "casts the whole model, head included, to fp16/bf16; heads keep float32 parameters -- use --amp"),
    ("--torchscript", bool, "heads are not TorchScript-able; use --torchcompile"),
    ("--head-init-scale", lambda v: v is not None, "heads initialise themselves (they have no .bias)"),
    ("--head-init-bias", lambda v: v is not None, "heads initialise themselves (they have no .bias)"),
    ("--bce-loss", bool, "binary cross-entropy is another objective than the head's own"),
    ("--jsd-loss", bool, "the JSD/AugMix loss is another objective than the head's own"),
)


def _wrap_parse_args(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def _parse_args(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        parsed = result[0] if isinstance(result, tuple) else result
        for flag, refused, why in _REFUSED_FLAGS:
            value = getattr(parsed, flag.lstrip("-").replace("-", "_"), None)
            if refused(value):
                shown = flag if isinstance(value, bool) else f"{flag} {value}"
                raise TimmTrainError(f"{shown}: {why}")
        return result

    return _parse_args


def patch_train_script(
    module: ModuleType, head: str | None = None, head_kwargs: dict[str, Any] | None = None, *, init_batches: int = 10
) -> _Session:
    """Replace the names timm's ``train.py`` bound at import time (see the module docstring) in
    ``module``'s namespace. Returns the session object that records the model."""
    if head is not None:
        head = resolve_head_name(head)
    session = _Session(head, dict(head_kwargs or {}), init_batches)
    namespace = vars(module)
    if not callable(namespace.get("create_model")):
        raise TimmTrainError(
            "the train script binds no create_model at import time (`from timm.models import create_model`): "
            "is it timm's train.py?"
        )
    namespace["create_model"] = _wrap_create_model(namespace["create_model"], session)
    if not callable(namespace.get("train_one_epoch")):
        raise TimmTrainError("the train script has no train_one_epoch(): is it timm's train.py?")
    namespace["train_one_epoch"] = _wrap_train_one_epoch(namespace["train_one_epoch"], session)
    if callable(namespace.get("_parse_args")):
        namespace["_parse_args"] = _wrap_parse_args(namespace["_parse_args"])
    if callable(namespace.get("create_optimizer_v2")):
        namespace["create_optimizer_v2"] = _wrap_create_optimizer(namespace["create_optimizer_v2"])
    try:
        from timm.task import TrainingTask
    except ImportError:  # pragma: no cover - timm before the task API
        TrainingTask = None
    if TrainingTask is not None:
        for name, value in list(namespace.items()):
            if isinstance(value, type) and issubclass(value, TrainingTask):
                namespace[name] = _wrap_task(value, session)
    return session


def run(
    train_script: str | os.PathLike,
    train_args: Sequence[str],
    head: str | None = None,
    head_kwargs: dict[str, Any] | None = None,
    *,
    init_batches: int = 10,
) -> Any:
    """Run ``train_script``'s ``main()`` with ``train_args`` as its command line and the patches of
    :func:`patch_train_script`. Returns what ``main()`` returns."""
    module = load_train_script(train_script)
    patch_train_script(module, head, head_kwargs, init_batches=init_batches)
    saved = sys.argv
    sys.argv = [os.fspath(train_script), *train_args]
    try:
        return module.main()
    finally:
        sys.argv = saved


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m polyheads.timm_train",
        description="Run timm's train.py with a polyheads head and the head's own objective (HeadLoss). "
        "Arguments after -- go to train.py.",
        allow_abbrev=False,
    )
    parser.add_argument("--train-script", default=os.environ.get(TRAIN_SCRIPT_ENV),
                        help=f"path to train.py of a pytorch-image-models clone (default: ${TRAIN_SCRIPT_ENV})")
    parser.add_argument("--head", default=None, help=f"head name: {', '.join(list_heads())}")
    parser.add_argument("--head-kwargs", default="{}", help='the head\'s keyword arguments as JSON, e.g. \'{"margin": 0.3}\'')
    parser.add_argument("--init-batches", type=int, default=10,
                        help="training batches for init_from_data (vMF's α) before the first epoch; 0 skips (default 10)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        split = argv.index("--")
        ours, train_args = argv[:split], argv[split + 1:]
        parser = _parser()
        options = parser.parse_args(ours)
    else:
        parser = _parser()
        options, train_args = parser.parse_known_args(argv)
    if not options.train_script:
        parser.error(
            "--train-script is required: timm's train.py is not part of the timm package; clone "
            f"https://github.com/huggingface/pytorch-image-models and pass its train.py (or set {TRAIN_SCRIPT_ENV})"
        )
    try:
        head_kwargs = json.loads(options.head_kwargs)
    except json.JSONDecodeError as error:
        parser.error(f"--head-kwargs must be a JSON object, got {options.head_kwargs!r} ({error})")
    if not isinstance(head_kwargs, dict):
        parser.error(f"--head-kwargs must be a JSON object, got {options.head_kwargs!r}")
    if options.init_batches < 0:
        parser.error(f"--init-batches must be >= 0, got {options.init_batches}")
    try:
        run(options.train_script, train_args, options.head, head_kwargs, init_batches=options.init_batches)
    except (TimmTrainError, FileNotFoundError) as error:
        print(f"polyheads.timm_train: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
