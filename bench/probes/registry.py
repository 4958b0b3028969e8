"""The probe registry: ``@register_probe`` beside each probe class, ``create_probe`` by name.

Built-in probes register when :mod:`podbench.probes.builtin` is imported (the first lookup does
that); third-party probes through the entry-point group ``podbench.probes`` (an entry point
names a :class:`~podbench.probes.base.Probe` subclass decorated with :func:`register_probe`, or a
module whose import registers some). The registry is a :class:`podbench.registry.Registry`, the
class the losses, datasets and architectures use.

Example:
    >>> from podbench.probes import list_probes
    >>> list_probes()
    ['calibration', 'corruptions', 'ood']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError

from podbench.errors import UserError
from podbench.probes.base import Probe
from podbench.registry import Registry

__all__ = [
    "PROBES",
    "ProbeInfo",
    "create_probe",
    "list_probes",
    "probe_info",
    "probe_settings",
    "register_probe",
]

ENTRY_POINT_GROUP = "podbench.probes"

P = TypeVar("P", bound=type[Probe])


@dataclass(frozen=True)
class ProbeInfo:
    """Metadata recorded beside a probe class by :func:`register_probe`."""

    name: str
    cls: type[Probe]
    description: str
    aliases: tuple[str, ...] = ()
    source: str = "podbench"


PROBES: Registry[ProbeInfo] = Registry(
    "probe",
    plural="probes",
    group=ENTRY_POINT_GROUP,
    decorator="register_probe",
    builtins=("podbench.probes.builtin",),
)


def register_probe(
    name: str, *, description: str, aliases: tuple[str, ...] = ()
) -> Callable[[P], P]:
    """Class decorator that registers a :class:`Probe` subclass under ``name``."""

    def decorate(cls: P) -> P:
        if not (isinstance(cls, type) and issubclass(cls, Probe)):
            raise TypeError(f"register_probe expects a Probe subclass, got {cls!r}")
        PROBES.add(ProbeInfo(name, cls, description, tuple(aliases)), owner=cls)
        return cls

    return decorate


def list_probes(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered probes (optionally those matching a glob)."""
    return PROBES.names(pattern)


def probe_info(name: str) -> ProbeInfo:
    """The metadata of probe ``name`` (or an alias); a UserError naming the closest otherwise."""
    return PROBES.get(name)


def probe_settings(name: str, settings: Mapping[str, Any], where: str = "evaluate") -> Any:
    """Validate ``settings`` against probe ``name``'s ``Settings`` (one sentence per mistake)."""
    cls = probe_info(name).cls
    try:
        return cls.Settings.model_validate(dict(settings))
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            known = ", ".join(cls.Settings.model_fields) or "(none)"
            msg = f"the {name} probe has no setting {field!r}; its settings are: {known}"
        raise UserError(f"{where}.{field}: {msg}.") from None


def create_probe(
    name: str, settings: Mapping[str, Any] | None = None, where: str = "evaluate"
) -> Probe:
    """An instance of probe ``name`` with ``settings`` validated by its ``Settings`` model."""
    return probe_info(name).cls(probe_settings(name, settings or {}, where))
