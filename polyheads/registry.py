"""The head registry: ``register_head`` / ``create_head`` / ``list_heads`` / ``is_head``.

Modelled on timm's model registry (``register_model``, ``create_model``, ``list_models``): heads
register themselves by name with a decorator when their module is imported; third-party packages add
heads without touching polyheads through the entry-point group ``polyheads.heads``::

    # in the plugin's setup.py / pyproject.toml
    entry_points={"polyheads.heads": ["myhead = mypkg.heads:MyHead"]}

Plugins are loaded lazily, once, the first time a name is looked up that is not registered yet
(or when :func:`list_heads` is called), so importing polyheads never imports them.
"""
from __future__ import annotations

import fnmatch
import inspect
import logging
import warnings
from importlib import metadata
from typing import Any, Callable, TypeVar

from ._checks import check_int, closest_matches

__all__ = ["register_head", "create_head", "list_heads", "is_head", "get_head_class", "resolve_head_name", "ENTRY_POINT_GROUP"]

_logger = logging.getLogger("polyheads")

ENTRY_POINT_GROUP = "polyheads.heads"

_HEADS: dict[str, Callable[..., Any]] = {}
_ALIASES: dict[str, str] = {}
_PLUGINS_LOADED = False

T = TypeVar("T")


def register_head(name: str, aliases: tuple[str, ...] | list[str] = (), override: bool = False) -> Callable[[T], T]:
    """Class decorator registering a head under ``name`` (and ``aliases``).

    Registering a name (or alias) that is already taken raises ``ValueError`` unless ``override=True``.
    The decorated object must be callable as ``cls(in_features, num_classes, **kwargs)``.
    """
    names = [name, *aliases]
    for n in names:
        if not isinstance(n, str) or not n or n != n.strip():
            raise ValueError(f"head names must be non-empty strings without surrounding spaces, got {n!r}")

    def decorator(obj: T) -> T:
        if not callable(obj):
            raise TypeError(f"register_head expects a class or factory, got {type(obj).__name__}")
        if not override:
            taken = [n for n in names if n in _HEADS or n in _ALIASES]
            if taken:
                owner = _HEADS.get(taken[0]) or _HEADS.get(_ALIASES.get(taken[0], ""))
                raise ValueError(
                    f"head name {taken[0]!r} is already registered (by {getattr(owner, '__qualname__', owner)}); "
                    "pass override=True to replace it"
                )
        for n in names:  # an override may turn a former alias into a name, or the reverse
            _HEADS.pop(n, None)
            _ALIASES.pop(n, None)
        _HEADS[name] = obj
        for alias in aliases:
            _ALIASES[alias] = name
        if isinstance(obj, type):
            obj.head_name = name  # type: ignore[attr-defined]
        return obj

    return decorator


def _load_plugins() -> None:
    """Import the entry points of group ``polyheads.heads`` once; a broken plugin only warns."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # a plugin must never break polyheads
            warnings.warn(f"polyheads: could not load head plugin {ep.name!r} ({ep.value}): {exc!r}", RuntimeWarning)
            continue
        if ep.name in _HEADS or ep.name in _ALIASES:
            if _HEADS.get(ep.name) is not obj:
                _logger.debug("plugin %s: name already registered, keeping the registered head", ep.name)
            continue
        register_head(ep.name)(obj)


def resolve_head_name(name: str) -> str:
    """The canonical registered name of ``name`` (aliases resolved); ``ValueError`` if unknown."""
    if not isinstance(name, str):
        raise TypeError(f"head name must be a string, got {type(name).__name__} {name!r}")
    if name not in _HEADS and name not in _ALIASES:
        _load_plugins()
    if name in _HEADS:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    known = sorted([*_HEADS, *_ALIASES])
    hint = closest_matches(name, known)
    did_you_mean = f" Closest matches: {hint}." if hint else ""
    raise ValueError(f"unknown head {name!r}.{did_you_mean} Registered heads: {known}")


def get_head_class(name: str) -> Callable[..., Any]:
    """The class (or factory) registered under ``name``."""
    return _HEADS[resolve_head_name(name)]


def is_head(name: str) -> bool:
    """Whether ``name`` is a registered head name or alias (plugins included)."""
    if not isinstance(name, str):
        return False
    try:
        resolve_head_name(name)
    except ValueError:
        return False
    return True


def list_heads(filter: str | list[str] = "*", include_aliases: bool = False) -> list[str]:
    """Sorted registered head names matching the glob ``filter`` (a pattern or a list of patterns),
    like ``timm.list_models``."""
    _load_plugins()
    patterns = [filter] if isinstance(filter, str) else list(filter)
    names = list(_HEADS) + (list(_ALIASES) if include_aliases else [])
    return sorted({n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)})


def create_head(name: str, in_features: int, num_classes: int, **kwargs: Any) -> Any:
    """Build the head registered as ``name`` for ``in_features`` inputs and ``num_classes`` classes.

    Unknown names raise ``ValueError`` listing the registered heads and the closest matches;
    keyword arguments the head does not take raise ``TypeError`` listing the ones it does.
    """
    factory = get_head_class(name)
    check_int("in_features", in_features, minimum=1)
    check_int("num_classes", num_classes, minimum=1)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins / C callables: let the call itself complain
        signature = None
    if signature is not None:
        try:
            signature.bind(in_features, num_classes, **kwargs)
        except TypeError as exc:
            accepted = [p for p in list(signature.parameters)[2:] if signature.parameters[p].kind is not inspect.Parameter.VAR_KEYWORD]
            raise TypeError(f"head {name!r}: {exc}. It accepts the keyword arguments {accepted}") from None
    return factory(in_features, num_classes, **kwargs)
