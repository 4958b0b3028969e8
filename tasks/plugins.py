"""Third-party datasets and architectures, registered on import through entry points."""

from __future__ import annotations

import warnings
from importlib.metadata import entry_points


def load_entry_points(group: str, kind: str) -> None:
    """Import every entry point of ``group``; a broken plugin warns instead of breaking built-ins."""
    for ep in entry_points(group=group):
        try:
            ep.load()
        except Exception as err:  # a broken plugin must not break the built-ins
            warnings.warn(f"podbench {kind} plugin {ep.name!r} failed to load: {err}", stacklevel=3)
