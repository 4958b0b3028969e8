"""One registry class for every kind of plugin: losses, datasets, architectures, and the next kind.

A kind is one :class:`Registry` instance. Its ``register_<kind>`` decorator sits beside the
definition (as in timm) and calls :meth:`Registry.add` with a frozen dataclass of metadata (the
kind's "info": at least the fields ``name``, ``aliases`` and ``source``). Lookups go through
:meth:`Registry.get`, listings through :meth:`Registry.names`. The registry

- refuses a name (or alias) another definition already holds, in one sentence;
- answers an unknown name with one sentence naming the closest registered name;
- imports the kind's built-in modules, then its entry-point group, the first time it is asked
  (registration happens on import, so names are never missing because nothing imported them);
- records which distribution provides each entry (``info.source``) and which installed plugins
  are broken, without letting a broken plugin break the others.

Names are kebab-case: lower-case letters and digits joined by single dashes (``mobilenet-v2``).
This module imports neither torch nor any kind: a new kind needs no new machinery.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class ProbeInfo:
    ...     name: str
    ...     description: str
    ...     aliases: tuple[str, ...] = ()
    ...     source: str = "podbench"
    >>> PROBES: Registry[ProbeInfo] = Registry(
    ...     "probe", plural="probes", group="podbench.probes", decorator="register_probe")
    >>> def register_probe(name: str, *, description: str):
    ...     def decorate(cls):
    ...         PROBES.add(ProbeInfo(name, description), owner=cls)
    ...         return cls
    ...     return decorate
    >>> @register_probe("linear-probe", description="a linear classifier on frozen features")
    ... class LinearProbe: ...
    >>> PROBES.names()
    ['linear-probe']
    >>> PROBES.owner("linear-probe") is LinearProbe
    True
    >>> PROBES.get("linear_probe")
    Traceback (most recent call last):
    ...
    podbench.errors.UserError: unknown probe 'linear_probe' (did you mean 'linear-probe'?); registered probes are: linear-probe.
"""  # noqa: E501

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib
import importlib.metadata
import inspect
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from podbench.errors import UserError

__all__ = ["NAME_PATTERN", "Info", "Registry", "check_name", "closest_name"]

NAME_PATTERN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
BUILTIN_SOURCE = "podbench"
# the distribution whose entry point is being imported: whatever its import registers, in any
# registry, comes from it
_loading_dist: str | None = None


class Info(Protocol):
    """What a registry holds: a frozen dataclass with at least these fields."""

    @property
    def name(self) -> str: ...

    @property
    def aliases(self) -> tuple[str, ...]: ...

    @property
    def source(self) -> str: ...


InfoT = TypeVar("InfoT", bound=Info)
# resolves the rest of a prefixed name to the entry's (info, owner)
Resolver = Callable[[str], tuple[InfoT, object]]


def check_name(kind: str, name: object) -> str:
    """``name`` if it is kebab-case, else a :class:`UserError` that shows the kebab-case form."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        fixed = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-") or "my-name"
        raise UserError(
            f"{kind} name {name!r} is not kebab-case; use lower-case letters and digits joined "
            f"by single dashes, e.g. {fixed!r}."
        )
    return name


def closest_name(name: str, names: Sequence[str]) -> str | None:
    """The registered name closest to ``name`` (an old ``snake_case`` spelling first), or None."""
    kebab = re.sub(r"[\s_]+", "-", name.strip().lower())
    if kebab in names:
        return kebab
    match = difflib.get_close_matches(name.lower(), list(names), n=1, cutoff=0.5)
    return match[0] if match else None


def _load(ep: importlib.metadata.EntryPoint, dist: str) -> Any:
    """``ep.load()``, crediting what its import registers to ``dist``."""
    global _loading_dist
    outer, _loading_dist = _loading_dist, dist
    try:
        return ep.load()
    finally:
        _loading_dist = outer


def _defined_in(owner: object, module: object) -> bool:
    """Whether ``owner`` is defined in ``module`` (a module object) or one of its submodules."""
    if not inspect.ismodule(module):
        return False
    where = getattr(owner, "__module__", None) or ""
    return where == module.__name__ or where.startswith(module.__name__ + ".")


def _definition(owner: object) -> str:
    module = getattr(owner, "__module__", None) or "?"
    return f"{module}.{getattr(owner, '__qualname__', repr(owner))}"


@dataclass
class _Entry(Generic[InfoT]):
    info: InfoT
    owner: object  # the decorated definition: a class or a function


class Registry(Generic[InfoT]):
    """The named entries of one kind of plugin.

    Args:
        kind: the singular word used in messages ("loss", "dataset", "architecture").
        plural: the plural word ("losses", "datasets", "architectures").
        group: the entry-point group third-party packages register under (None: no plugins).
        decorator: the name of the kind's decorator, for the message about an undecorated plugin.
        builtins: modules whose import registers the built-in entries; imported on first use.
    """

    def __init__(
        self,
        kind: str,
        *,
        plural: str,
        group: str | None,
        decorator: str,
        builtins: Sequence[str] = (),
    ) -> None:
        self.kind = kind
        self.plural = plural
        self.group = group
        self.decorator = decorator
        self.builtins = tuple(builtins)
        self._entries: dict[str, _Entry[InfoT]] = {}
        self._aliases: dict[str, str] = {}  # every accepted name (names too) -> name
        self._broken: dict[str, str] = {}  # entry-point name -> why it could not be loaded
        self._loaded = False
        # prefix -> (resolve, listing) of another library's names, and the entries served so far
        self._prefixes: dict[str, tuple[Resolver[InfoT], Callable[[], list[str]] | None]] = {}
        self._served: dict[str, _Entry[InfoT]] = {}

    # -- registering ---------------------------------------------------------------------------

    def add(self, info: InfoT, *, owner: object) -> InfoT:
        """Register ``info`` (defined by ``owner``) under ``info.name`` and ``info.aliases``.

        Returns ``info`` with ``source`` set: the distribution whose entry point is being loaded,
        ``"podbench"`` for a built-in, else the owner's module.

        Raises:
            UserError: a name is not kebab-case, or another definition holds it already. The same
                definition registering again (a module imported twice) replaces its entry.
        """
        if not dataclasses.is_dataclass(info) or isinstance(info, type):
            raise TypeError(f"{self.kind} metadata must be a dataclass instance, got {info!r}")
        keys = (check_name(self.kind, info.name), *(check_name(self.kind, a) for a in info.aliases))
        if len(set(keys)) != len(keys):
            raise UserError(
                f"{self.kind} {info.name!r} lists a name twice among its aliases "
                f"{list(info.aliases)}; remove the repeated one."
            )
        for key in keys:
            holder = self._entries.get(self._aliases.get(key, ""))
            if holder is not None and _definition(holder.owner) != _definition(owner):
                raise UserError(
                    f"{self.kind} name {key!r} is already registered by "
                    f"{_definition(holder.owner)}; give {_definition(owner)} another name."
                )
        # the same definition again (a module imported twice, a reload): its entry is replaced
        self._forget(info.name)
        info = self._with_source(info, self._source_for(owner))
        self._entries[info.name] = _Entry(info, owner)
        for key in keys:
            self._aliases[key] = info.name
        return info

    def _forget(self, name: str) -> None:
        self._entries.pop(name, None)
        for key in [k for k, v in self._aliases.items() if v == name]:
            del self._aliases[key]

    def _source_for(self, owner: object) -> str:
        if _loading_dist is not None:
            return _loading_dist
        module = getattr(owner, "__module__", None) or "?"
        return BUILTIN_SOURCE if module.split(".")[0] == BUILTIN_SOURCE else module

    @staticmethod
    def _with_source(info: InfoT, source: str) -> InfoT:
        return info if info.source == source else dataclasses.replace(info, source=source)  # type: ignore[type-var]

    @contextmanager
    def scratch(self) -> Iterator[Registry[InfoT]]:
        """Within the block, registrations are kept; on exit the registry is as it was (tests)."""
        self._ensure_loaded()
        saved = (dict(self._entries), dict(self._aliases), dict(self._broken))
        try:
            yield self
        finally:
            self._entries, self._aliases, self._broken = saved

    def serve_prefix(
        self, prefix: str, resolve: Resolver[InfoT], listing: Callable[[], list[str]] | None = None
    ) -> None:
        """Serve the names ``<prefix>:<rest>``: another library's entries, in its own spelling.

        Such names are not kebab-case (``pml:ArcFaceLoss``, ``timm:resnet18``): they are the
        library's. ``resolve(rest)`` returns the entry's ``(info, owner)`` (``info.name`` is the
        full name) or raises a :class:`UserError` (no such name, or the library to install); it
        is called once per name. ``listing()`` returns the ``rest`` of every name :meth:`names`
        lists, or raises a UserError when the library is missing; None: the names are too many
        to list and are served on demand only.
        """
        self._prefixes[check_name(self.kind, prefix)] = (resolve, listing)

    def _listed(self) -> list[str]:
        names: list[str] = []
        for prefix, (_, listing) in self._prefixes.items():
            if listing is None:
                continue
            try:
                names.extend(f"{prefix}:{rest}" for rest in listing())
            except UserError:  # the library is not installed: none of its names is listed
                continue
        return names

    def _serve(self, name: str) -> _Entry[InfoT] | None:
        """The entry of a prefixed ``name``, resolved on first use; None: not a served prefix."""
        prefix, colon, rest = name.partition(":")
        if not colon or prefix not in self._prefixes:
            return None
        if name not in self._served:
            info, owner = self._prefixes[prefix][0](rest)
            self._served[name] = _Entry(info, owner)
        return self._served[name]

    # -- loading -------------------------------------------------------------------------------

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # first: a built-in module may look names up while it is imported
        for module in self.builtins:
            importlib.import_module(module)
        self._load_group()

    def load_entry_points(self, *, reload: bool = False) -> dict[str, str]:
        """Import the built-ins, then the plugins of the entry-point group (once, unless ``reload``).

        An entry point names a decorated definition or a module whose import registers some.

        Returns:
            {entry-point name: why it could not be loaded} for the broken plugins; each is also
            reported with a warning, and looking its name up raises a :class:`UserError` saying why.
        """
        if reload and self._loaded:
            self._load_group()
        self._ensure_loaded()
        return dict(self._broken)

    def _load_group(self) -> None:
        if self.group is None:
            return
        for ep in importlib.metadata.entry_points(group=self.group):
            dist = ep.dist.name if ep.dist is not None else "an unknown distribution"
            before = set(self._entries)
            try:
                obj = _load(ep, dist)
            except Exception as err:  # a broken plugin must not break the registry
                self._broke(
                    ep.name, f"importing {ep.value} from {dist} failed: {type(err).__name__}: {err}"
                )
                continue
            provided = set(self._entries) - before
            for name, entry in self._entries.items():  # also those imported before this loader ran
                if entry.owner is obj or _defined_in(entry.owner, obj):
                    provided.add(name)
                    entry.info = self._with_source(entry.info, dist)
            if provided or inspect.ismodule(obj):
                self._broken.pop(ep.name, None)
            else:
                self._broke(
                    ep.name, f"{ep.value} from {dist} is not decorated with @{self.decorator}"
                )

    def _broke(self, name: str, why: str) -> None:
        self._broken[name] = why
        warnings.warn(f"podbench {self.kind} plugin {name!r}: {why}", stacklevel=2)

    # -- looking up ----------------------------------------------------------------------------

    def names(self, pattern: str | None = None) -> list[str]:
        """Sorted registered names (not aliases), optionally those matching a glob ``pattern``."""
        self._ensure_loaded()
        names = sorted([*self._entries, *self._listed()])
        return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        if isinstance(name, str) and name not in self._aliases:
            try:
                return self._serve(name) is not None
            except UserError:  # not that library's name, or the library is missing
                return False
        return isinstance(name, str) and name in self._aliases

    def closest(self, name: str) -> str | None:
        """The registered name or alias closest to ``name``, or None when none is close."""
        self._ensure_loaded()
        return closest_name(name, list(self._aliases))

    def canonical(self, name: str) -> str:
        """The registered name of ``name`` (itself, or the name an alias stands for)."""
        return self.get(name).name

    def get(self, name: str) -> InfoT:
        """The metadata registered under ``name`` (or an alias of it).

        Raises:
            UserError: one sentence naming the closest registered name, or why an installed
                plugin of that name is broken.
        """
        return self._entry(name).info

    def owner(self, name: str) -> Any:
        """The definition (class or function) registered under ``name``."""
        return self._entry(name).owner

    def _entry(self, name: str) -> _Entry[InfoT]:
        self._ensure_loaded()
        if not isinstance(name, str):
            raise UserError(
                f"{self.kind} name must be a string, got {name!r}; use one of: "
                f"{', '.join(sorted(self._entries))}."
            )
        if name in self._aliases:
            return self._entries[self._aliases[name]]
        served = self._serve(name)  # another library's name (pml:, timm:), or its UserError
        if served is not None:
            return served
        if name in self._broken:
            raise UserError(
                f"{self.kind} {name!r} is installed but broken "
                f"({self._broken[name]}); reinstall or fix it."
            )
        near = self.closest(name)
        hint = f" (did you mean {near!r}?)" if near else ""
        raise UserError(
            f"unknown {self.kind} {name!r}{hint}; registered {self.plural} are: "
            f"{', '.join(sorted(self._entries))}."
        )
