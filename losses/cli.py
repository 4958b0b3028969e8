"""``podbench losses [NAME]``: print the loss registry, or one loss in detail."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from podbench.errors import UserError
from podbench.losses import pml
from podbench.losses.registry import LossInfo, list_losses, load_entry_points, loss_info

__all__ = ["add_losses_arguments", "info_as_dict", "run_losses"]


def add_losses_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``podbench losses``."""
    parser.add_argument("name", nargs="?", help="show one loss in detail (name or alias)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _fmt(params: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "-"


def info_as_dict(info: LossInfo) -> dict[str, Any]:
    """A JSON-serialisable view of a loss's metadata."""
    return {
        "name": info.name,
        "aliases": list(info.aliases),
        "description": info.description,
        "reference": info.reference,
        "defaults": dict(info.defaults),
        "search_space": {k: dict(v) for k, v in info.search_space.items()},
        "variants": {k: dict(v) for k, v in info.variants.items()},
        "fixed_centroids": info.fixed_centroids,
        "learnable_head": info.learnable_head,
        "updates_per_batch": info.updates_per_batch,
        "source": info.source,
    }


def run_losses(args: argparse.Namespace) -> int:
    """Print every registered loss (name, description, defaults, variants) or one in detail."""
    names = [loss_info(args.name).name] if args.name else list_losses()
    infos = [loss_info(n) for n in names]
    console = Console(soft_wrap=not args.name)
    if args.json:
        print(json.dumps([info_as_dict(i) for i in infos], indent=2))
        return 0
    if args.name:
        info = infos[0]
        console.print(f"[bold]{info.name}[/bold]: {info.description}")
        rows = [
            ("aliases", ", ".join(info.aliases) or "-"),
            ("reference", info.reference or "-"),
            ("source", info.source),
            ("defaults", _fmt(info.defaults)),
            ("search space", _fmt({k: dict(v) for k, v in info.search_space.items()})),
            ("fixed centroids", str(info.fixed_centroids)),
            ("learnable head", str(info.learnable_head)),
            ("updates per batch", str(info.updates_per_batch)),
        ]
        for key, value in rows:
            console.print(f"  {key}: {value}", highlight=False)
        console.print("  variants:")
        for vname, settings in info.variants.items():
            console.print(f"    {vname}: {_fmt(settings)}", highlight=False)
        return 0
    table = Table(title="podbench losses", show_lines=False)
    # A name is copied into suite files: never wrap or cut it, whatever the terminal width.
    table.add_column("name", no_wrap=True)
    for column in ("description", "defaults", "variants"):
        table.add_column(column, overflow="fold")
    for info in infos:
        name = info.name + (f" ({', '.join(info.aliases)})" if info.aliases else "")
        table.add_row(name, info.description, _fmt(info.defaults), ", ".join(info.variants) or "-")
    console.print(table)
    for name, why in sorted(load_entry_points().items()):
        console.print(f"[red]broken plugin {name}[/red]: {why}", highlight=False)
    _print_libraries(console)
    return 0


def _print_libraries(console: Console) -> None:
    """What pytorch-metric-learning offers as pml: losses and what it leaves out, or what to install."""
    try:
        found = pml.discover()
    except UserError as err:
        console.print(f"[yellow]{pml.PREFIX}:[/yellow] {err}", highlight=False)
        return
    means = [n for n, spec in found.items() if spec.kind == "mean"]
    console.print(
        f"{pml.PREFIX}: {len(found)} losses of {loss_info(f'{pml.PREFIX}:{next(iter(found))}').source} "
        f"({len(means)} pair/tuple losses predict the nearest class mean of the training "
        "features, accumulated over each epoch's training batches; the others their class "
        "logits).",
        highlight=False,
    )
    for name, why in sorted(pml.left_out().items()):
        console.print(f"  left out: {name}: {why}", highlight=False)
