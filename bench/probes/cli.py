"""``podbench probes [--json]``: list the evaluation probes, their settings and defaults."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from podbench.probes.registry import PROBES, ProbeInfo, list_probes, probe_info

__all__ = ["add_probes_arguments", "run_probes"]


def add_probes_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``podbench probes``."""
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _settings(info: ProbeInfo) -> dict[str, Any]:
    fields = info.cls.Settings.model_fields
    return {
        name: (None if f.is_required() else f.get_default(call_default_factory=True))
        for name, f in fields.items()
    }


def run_probes(args: argparse.Namespace) -> int:
    """Print every registered probe with its description and settings (defaults)."""
    infos = [probe_info(n) for n in list_probes()]
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": i.name,
                        "description": i.description,
                        "source": i.source,
                        "settings": _settings(i),
                    }
                    for i in infos
                ],
                indent=2,
                default=str,
            )
        )
        return 0
    console = Console()
    table = Table(title="podbench probes (a suite's evaluate: entries)")
    for column in ("name", "description", "settings (defaults)"):
        table.add_column(column, overflow="fold")
    for info in infos:
        settings = ", ".join(f"{k}={v}" for k, v in _settings(info).items()) or "-"
        table.add_row(info.name, info.description, settings)
    console.print(table)
    for name, why in sorted(PROBES.load_entry_points().items()):
        console.print(f"[red]broken plugin {name}[/red]: {why}", highlight=False)
    return 0
