"""The loss registry: ``@register_loss`` beside each class, ``create_loss`` by name.

Built-in losses register when :mod:`podbench.losses` is imported; third-party losses through the
entry-point group ``podbench.losses`` (an entry point names a :class:`LossPlugin` subclass
decorated with :func:`register_loss`, or a module whose import registers some), loaded the first
time the registry is asked for names. The registry itself is a :class:`podbench.registry.Registry`
(:data:`LOSSES`), the same class the datasets and architectures use.

A loss's hyperparameters and their defaults are the keyword-only arguments of its ``__init__``:
they are declared once, in the signature.

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

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from podbench.errors import UserError
from podbench.losses.base import LossPlugin
from podbench.registry import Registry, closest_name

__all__ = [
    "ENTRY_POINT_GROUP",
    "LOSSES",
    "LossInfo",
    "create_loss",
    "describe_loss",
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
                    f"loss {self.name!r} has no variant {variant!r}{_hint(variant, self.variants)}; "
                    f"choose one of: {', '.join(sorted(self.variants)) or '(none)'}."
                )
            params.update(self.variants[variant])
        unknown = [k for k in hparams if k not in self.defaults]
        if unknown:
            bad = unknown[0]
            raise UserError(
                f"loss {self.name!r} has no hyperparameter {bad!r}{_hint(bad, self.defaults)}; "
                f"it takes: {', '.join(sorted(self.defaults)) or '(none)'}."
            )
        params.update(hparams)
        return params


LOSSES: Registry[LossInfo] = Registry(
    "loss",
    plural="losses",
    group=ENTRY_POINT_GROUP,
    decorator="register_loss",
    builtins=("podbench.losses",),
)
_MODEL_ARGS = ("num_classes", "feat_dim")  # given by the engine, not hyperparameters


def _hint(name: str, names: Mapping[str, Any]) -> str:
    match = closest_name(name, list(names))
    return f" (did you mean {match!r}?)" if match else ""


def _signature_defaults(name: str, cls: type[LossPlugin]) -> dict[str, Any]:
    """The hyperparameters of ``cls``: its ``__init__``'s keyword-only arguments and defaults.

    Raises:
        ValueError: an argument other than ``num_classes``/``feat_dim`` is not keyword-only, or a
            keyword-only argument has no default.
    """
    defaults: dict[str, Any] = {}
    for param in list(inspect.signature(cls.__init__).parameters.values())[1:]:  # after self
        if param.name in _MODEL_ARGS or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.kind is not param.KEYWORD_ONLY:
            raise ValueError(
                f"loss {name!r}: __init__ argument {param.name!r} must be "
                "keyword-only (after `*,`) to be a hyperparameter"
            )
        if param.default is param.empty:
            raise ValueError(
                f"loss {name!r}: hyperparameter {param.name!r} needs a default in "
                "__init__ (the published value)"
            )
        defaults[param.name] = param.default
    return defaults


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
    search_space: Mapping[str, Mapping[str, Any]] | None = None,
    variants: Mapping[str, Mapping[str, Any]] | None = None,
    fixed_centroids: bool = False,
    learnable_head: bool = True,
    aliases: tuple[str, ...] | list[str] = (),
) -> Callable[[P], P]:
    """Class decorator that registers a :class:`LossPlugin` under ``name``.

    The hyperparameters and their published defaults are read from the keyword-only arguments
    of the class's ``__init__`` (``def __init__(self, num_classes, feat_dim, *, s=30.0)``).

    Args:
        name: the name suites use (kebab-case: lower case, digits, dashes).
        description: one line for ``podbench losses``.
        reference: the paper (authors, title, venue, year).
        search_space: Optuna ranges, e.g. ``{"s": {"type": "float", "low": 8, "high": 64}}``.
        variants: named ablations, each a dict of hyperparameters over the defaults.
        fixed_centroids: the class centroids are fixed buffers, never trained.
        learnable_head: the plugin has parameters the optimiser trains.
        aliases: other names for the same loss.
    """

    def decorate(cls: P) -> P:
        if not (isinstance(cls, type) and issubclass(cls, LossPlugin)):
            raise TypeError(f"@register_loss({name!r}) must decorate a LossPlugin subclass")
        info = LOSSES.add(
            describe_loss(
                cls,
                name,
                description=description,
                reference=reference,
                search_space=search_space,
                variants=variants,
                fixed_centroids=fixed_centroids,
                learnable_head=learnable_head,
                aliases=aliases,
            ),
            owner=cls,
        )
        cls.loss_name = info.name
        return cls

    return decorate


def describe_loss(
    cls: type[LossPlugin],
    name: str,
    *,
    description: str,
    source: str = "podbench",
    **details: Any,
) -> LossInfo:
    """The checked :class:`LossInfo` of ``cls``: what :func:`register_loss` registers (``details``
    are its other keyword arguments); adapters of other libraries serve theirs through
    :meth:`LOSSES.serve_prefix <podbench.registry.Registry.serve_prefix>`.
    """
    unknown = set(details) - {
        "reference",
        "search_space",
        "variants",
        "fixed_centroids",
        "learnable_head",
        "aliases",
    }
    if unknown:
        raise TypeError(f"describe_loss() got unexpected keyword arguments {sorted(unknown)}")
    search_space = {k: dict(v) for k, v in (details.get("search_space") or {}).items()}
    variants = {k: dict(v) for k, v in (details.get("variants") or {}).items()}
    declared = _signature_defaults(name, cls)
    _check_space(name, search_space, declared)
    for vname, settings in variants.items():
        for param in settings:
            if param not in declared:
                raise ValueError(f"loss {name!r}: variant {vname!r} sets unknown {param!r}")
    return LossInfo(
        name=name,
        cls=cls,
        description=description,
        reference=details.get("reference", ""),
        defaults=MappingProxyType(declared),
        search_space=MappingProxyType(search_space),
        variants=MappingProxyType(variants),
        fixed_centroids=details.get("fixed_centroids", False),
        learnable_head=details.get("learnable_head", True),
        updates_per_batch=int(cls.updates_per_batch),
        aliases=tuple(details.get("aliases", ())),
        source=source,
    )


def load_entry_points(*, reload: bool = False) -> dict[str, str]:
    """Import the third-party plugins of the entry-point group ``podbench.losses``.

    Returns {entry-point name: reason} for the plugins that could not be loaded (they are also
    reported with a warning, and creating them raises a :class:`UserError` saying why).
    """
    return LOSSES.load_entry_points(reload=reload)


def list_losses(pattern: str | None = None) -> list[str]:
    """Sorted names of every registered loss, built-in and from entry points (not aliases).

    Args:
        pattern: keep only the names matching this glob (e.g. ``"*face"``).
    """
    return LOSSES.names(pattern)


def loss_info(name: str) -> LossInfo:
    """The :class:`LossInfo` of a loss, by name or alias."""
    return LOSSES.get(name)


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
    info = LOSSES.get(name)
    params = info.params_for(variant, **hparams)
    return info.cls(num_classes=num_classes, feat_dim=feat_dim, **params)
