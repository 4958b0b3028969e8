"""The loss registry: ``@register_loss`` beside each class, ``create_loss`` by name.

Built-in losses register when :mod:`podbench.losses` is imported; third-party losses through the
entry-point group ``podbench.losses`` (an entry point names a :class:`LossPlugin` subclass
decorated with :func:`register_loss`, or a module whose import registers some), loaded the first
time the registry is asked for names.

Example:
    >>> from podbench.losses import create_loss, list_losses, loss_info
    >>> "pod" in list_losses()
    True
    >>> loss_info("am-softmax").name
    'cosface'
    >>> loss = create_loss("pod", num_classes=10, feat_dim=16, variant="no-sc")
    >>> loss.sc_weight
    0.0
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import inspect
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from podbench.errors import UserError
from podbench.losses.base import LossPlugin

__all__ = [
    "ENTRY_POINT_GROUP",
    "LossInfo",
    "create_loss",
    "list_losses",
    "load_entry_points",
    "loss_info",
    "register_loss",
]

ENTRY_POINT_GROUP = "podbench.losses"
_SPACE_TYPES = {"float", "int", "categorical"}

P = TypeVar("P", bound=type[LossPlugin])


@dataclass(frozen=True)
class LossInfo:
    """Metadata recorded beside a loss class by :func:`register_loss`."""

    name: str
    cls: type[LossPlugin]
    description: str
    reference: str
    defaults: Mapping[str, Any]
    search_space: Mapping[str, Mapping[str, Any]]
    variants: Mapping[str, Mapping[str, Any]]
    fixed_centroids: bool
    learnable_head: bool
    updates_per_batch: int
    aliases: tuple[str, ...] = ()
    source: str = "podbench"  # or the distribution that provides the class
    extra: Mapping[str, Any] = field(default_factory=dict)

    def params_for(self, variant: str | None = None, **hparams: Any) -> dict[str, Any]:
        """Defaults, then the variant's settings, then ``hparams``; unknown names are errors."""
        params = dict(self.defaults)
        if variant is not None:
            if variant not in self.variants:
                raise UserError(
                    f"loss {self.name!r} has no variant {variant!r}{_closest(variant, self.variants)}; "
                    f"choose one of: {', '.join(sorted(self.variants)) or '(none)'}."
                )
            params.update(self.variants[variant])
        unknown = [k for k in hparams if k not in self.defaults]
        if unknown:
            bad = unknown[0]
            raise UserError(
                f"loss {self.name!r} has no hyperparameter {bad!r}{_closest(bad, self.defaults)}; "
                f"it takes: {', '.join(sorted(self.defaults)) or '(none)'}."
            )
        params.update(hparams)
        return params


_REGISTRY: dict[str, LossInfo] = {}
_ALIASES: dict[str, str] = {}
_BROKEN: dict[str, str] = {}  # entry-point name -> why it could not be loaded
_entry_points_loaded = False


def _closest(name: str, names: Mapping[str, Any] | list[str]) -> str:
    match = difflib.get_close_matches(name, list(names), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _source_of(cls: type) -> str:
    """``podbench`` for built-ins, else the class's module (entry points refine it)."""
    return "podbench" if cls.__module__.split(".")[0] == "podbench" else cls.__module__


def _check_space(
    name: str, space: Mapping[str, Mapping[str, Any]], defaults: Mapping[str, Any]
) -> None:
    for param, spec in space.items():
        if param not in defaults:
            raise ValueError(f"loss {name!r}: search space names {param!r}, not a hyperparameter")
        kind = spec.get("type")
        if kind not in _SPACE_TYPES:
            raise ValueError(f"loss {name!r}: search space {param!r} has type {kind!r}")
        if kind == "categorical" and not spec.get("choices"):
            raise ValueError(f"loss {name!r}: categorical {param!r} needs choices")
        if kind in ("float", "int") and not spec["low"] < spec["high"]:
            raise ValueError(f"loss {name!r}: search space {param!r} needs low < high")


def register_loss(
    name: str,
    *,
    description: str,
    reference: str = "",
    defaults: Mapping[str, Any] | None = None,
    search_space: Mapping[str, Mapping[str, Any]] | None = None,
    variants: Mapping[str, Mapping[str, Any]] | None = None,
    fixed_centroids: bool = False,
    learnable_head: bool = True,
    aliases: tuple[str, ...] | list[str] = (),
) -> Callable[[P], P]:
    """Class decorator that registers a :class:`LossPlugin` under ``name``.

    Args:
        name: the name suites use (lower case, dashes).
        description: one line for ``podbench losses``.
        reference: the paper (authors, title, venue, year).
        defaults: every hyperparameter of ``__init__`` with its published default.
        search_space: Optuna ranges, e.g. ``{"s": {"type": "float", "low": 8, "high": 64}}``.
        variants: named ablations, each a dict of hyperparameters over the defaults.
        fixed_centroids: the class centroids are fixed buffers, never trained.
        learnable_head: the plugin has parameters the optimiser trains.
        aliases: other names for the same loss.
    """
    defaults = dict(defaults or {})
    search_space = {k: dict(v) for k, v in (search_space or {}).items()}
    variants = {k: dict(v) for k, v in (variants or {}).items()}

    def decorate(cls: P) -> P:
        if not (isinstance(cls, type) and issubclass(cls, LossPlugin)):
            raise TypeError(f"@register_loss({name!r}) must decorate a LossPlugin subclass")
        init_params = inspect.signature(cls.__init__).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in init_params.values())
        for param in defaults:
            if param not in init_params and not takes_any:
                raise ValueError(f"loss {name!r}: default {param!r} is not an __init__ argument")
        _check_space(name, search_space, defaults)
        for vname, settings in variants.items():
            for param in settings:
                if param not in defaults:
                    raise ValueError(f"loss {name!r}: variant {vname!r} sets unknown {param!r}")
        info = LossInfo(
            name=name,
            cls=cls,
            description=description,
            reference=reference,
            defaults=MappingProxyType(defaults),
            search_space=MappingProxyType(search_space),
            variants=MappingProxyType(variants),
            fixed_centroids=fixed_centroids,
            learnable_head=learnable_head,
            updates_per_batch=int(cls.updates_per_batch),
            aliases=tuple(aliases),
            source=_source_of(cls),
        )
        for key in (name, *info.aliases):
            existing = _REGISTRY.get(_ALIASES.get(key, key))
            # Re-importing the same module (pytest importlib mode, reloads) re-registers: allowed.
            if existing is not None and (
                existing.cls.__module__,
                existing.cls.__qualname__,
            ) != (cls.__module__, cls.__qualname__):
                raise ValueError(
                    f"loss name {key!r} is already registered by "
                    f"{existing.cls.__module__}.{existing.cls.__qualname__}"
                )
        _REGISTRY[name] = info
        _ALIASES[name] = name
        for alias in info.aliases:
            _ALIASES[alias] = name
        cls.loss_name = name
        return cls

    return decorate


def load_entry_points(*, reload: bool = False) -> dict[str, str]:
    """Import the third-party plugins of the entry-point group ``podbench.losses``.

    Returns {entry-point name: reason} for the plugins that could not be loaded (they are also
    reported with a warning, and creating them raises a :class:`UserError` saying why).
    """
    global _entry_points_loaded
    if _entry_points_loaded and not reload:
        return dict(_BROKEN)
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "an unknown distribution"
        before = set(_REGISTRY)
        try:
            obj = ep.load()
        except Exception as err:  # a broken plugin must not break the registry
            _BROKEN[ep.name] = (
                f"importing {ep.value} from {dist} failed: {type(err).__name__}: {err}"
            )
            warnings.warn(f"podbench loss plugin {ep.name!r}: {_BROKEN[ep.name]}", stacklevel=2)
            continue
        provided = set(_REGISTRY) - before
        if isinstance(obj, type) and vars(obj).get("loss_name") in _REGISTRY:
            provided.add(vars(obj)["loss_name"])
        for name in provided:  # record which distribution provides the loss
            _REGISTRY[name] = dataclasses.replace(_REGISTRY[name], source=dist)
        registered = vars(obj).get("loss_name") in _REGISTRY if isinstance(obj, type) else True
        if isinstance(obj, type) and issubclass(obj, LossPlugin) and not registered:
            _BROKEN[ep.name] = f"{ep.value} from {dist} is not decorated with @register_loss"
            warnings.warn(f"podbench loss plugin {ep.name!r}: {_BROKEN[ep.name]}", stacklevel=2)
        else:
            _BROKEN.pop(ep.name, None)
    return dict(_BROKEN)


def _resolve(name: str) -> LossInfo:
    if not isinstance(name, str):
        raise UserError(f"loss name must be a string, got {name!r}; use one of list_losses().")
    load_entry_points()  # once per process; later calls return at once
    if name in _ALIASES:
        return _REGISTRY[_ALIASES[name]]
    if name in _BROKEN:
        raise UserError(
            f"loss {name!r} is installed but broken ({_BROKEN[name]}); reinstall or fix it."
        )
    raise UserError(
        f"unknown loss {name!r}{_closest(name, list(_ALIASES))}; "
        f"registered losses are: {', '.join(sorted(_REGISTRY))}."
    )


def list_losses() -> list[str]:
    """Sorted names of every registered loss, built-in and from entry points (not aliases)."""
    load_entry_points()
    return sorted(_REGISTRY)


def loss_info(name: str) -> LossInfo:
    """The :class:`LossInfo` of a loss, by name or alias."""
    return _resolve(name)


def create_loss(
    name: str,
    *,
    num_classes: int,
    feat_dim: int,
    variant: str | None = None,
    **hparams: Any,
) -> LossPlugin:
    """Create a registered loss with its defaults, then ``variant``'s settings, then ``hparams``.

    Raises:
        UserError: unknown loss, variant or hyperparameter (naming the closest match), or a
            hyperparameter value the loss rejects.
    """
    info = _resolve(name)
    params = info.params_for(variant, **hparams)
    return info.cls(num_classes=num_classes, feat_dim=feat_dim, **params)
