"""``podbench tasks``: every dataset (found, missing or malformed, and where it looked) and every
architecture with its parameter count."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from podbench.errors import UserError
from podbench.tasks import timm_archs
from podbench.tasks.archs import ARCHS, arch_info, list_archs
from podbench.tasks.cache import cache_dir
from podbench.tasks.datasets import DATASETS, dataset_info, list_datasets, locate_dataset
from podbench.tasks.devices import cpu_features
from podbench.tasks.doctor import cpu_line

__all__ = ["add_tasks_arguments", "arch_rows", "dataset_rows", "run_tasks"]


def add_tasks_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``podbench tasks``."""
    parser.add_argument(
        "--data-root",
        default=None,
        metavar="PATH",
        help="look for the datasets here (default: $PODBENCH_DATA, then each "
        "dataset's default places)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=32,
        metavar="PX",
        help="input size the parameter counts are for (default 32)",
    )
    parser.add_argument(
        "--channels",
        type=int,
        default=3,
        choices=(1, 3),
        help="input channels the parameter counts are for (default 3)",
    )
    parser.add_argument(
        "--feat-dim",
        type=int,
        default=128,
        metavar="D",
        help="latent dimension the parameter counts are for (default 128)",
    )
    parser.add_argument(
        "--timm",
        default=None,
        metavar="PATTERN",
        help="also list timm's networks matching PATTERN (e.g. 'resnet*'), as "
        "timm:<model> with their parameter counts",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def dataset_rows(data_root: str | None = None) -> list[dict]:
    """One dict per dataset: facts, status (found | missing | malformed | built-in), where."""
    rows = []
    for name in list_datasets():
        info = dataset_info(name)
        row: dict[str, Any] = {
            "name": name,
            "classes": info.num_classes,
            "channels": info.channels,
            "image_size": info.image_size,
            "train": info.train_size,
            "test": info.test_size,
            "latent_dim": info.latent_dim,
            "batch_size": info.batch_size,
            "description": info.description,
        }
        try:
            found, looked = locate_dataset(name, data_root)
        except UserError as err:
            row.update(status="malformed", where=str(err), looked=[])
        else:
            if not info.needs_files:
                row.update(status="built-in", where=info.how_to_get, looked=[])
            elif found is not None:
                row.update(
                    status="found",
                    where=f"{found.path} ({found.layout})",
                    looked=[str(p) for p in looked],
                )
            else:
                row.update(
                    status="missing",
                    looked=[str(p) for p in looked],
                    where="looked in "
                    + (", ".join(str(p) for p in looked) or "no folder (give --data-root)")
                    + f"; expected {info.expected}; {info.how_to_get}",
                )
        rows.append(row)
    return rows


def arch_rows(
    in_channels: int = 3, image_size: int = 32, feat_dim: int = 128, extra: Sequence[str] = ()
) -> list[dict]:
    """One dict per architecture (registered, then ``extra`` names such as ``timm:resnet18``)
    with its parameter counts for the given input."""
    rows: list[dict[str, Any]] = []
    for name in [*list_archs(), *extra]:
        try:
            info = arch_info(
                name, in_channels=in_channels, image_size=image_size, feat_dim=feat_dim
            )
        except UserError as err:  # e.g. too small an input for this network
            rows.append(
                {
                    "name": name,
                    "params": None,
                    "backbone_params": None,
                    "description": str(err),
                    "reference": "",
                }
            )
            continue
        rows.append(
            {
                "name": name,
                "params": info.param_count,
                "backbone_params": info.backbone_params,
                "min_image_size": info.min_image_size,
                "description": info.description,
                "reference": info.reference,
            }
        )
    return rows


def _fmt(value: object) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def run_tasks(args: argparse.Namespace) -> int:
    """Print the datasets and architectures; exit status 0."""
    for field in ("image_size", "feat_dim"):
        if getattr(args, field) < 1:
            raise UserError(
                f"--{field.replace('_', '-')} must be a positive integer, "
                f"got {getattr(args, field)}."
            )
    datasets = dataset_rows(args.data_root)
    extra: list[str] = []
    if args.timm:
        extra = [f"{timm_archs.PREFIX}:{m}" for m in timm_archs.list_models(args.timm)]
        if not extra:
            raise UserError(
                f"--timm {args.timm!r} matches no timm model; give a shell pattern "
                "such as 'resnet*' or '*vit*'."
            )
    archs = arch_rows(args.channels, args.image_size, args.feat_dim, extra)
    if args.json:
        json.dump(
            {"datasets": datasets, "archs": archs, "cpu": cpu_features().as_dict()},
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
        return 0

    from rich.console import Console
    from rich.table import Table

    console = Console()
    colour = {"found": "green", "built-in": "green", "missing": "yellow", "malformed": "red"}
    table = Table(title="Datasets")
    for col, justify in (
        ("dataset", "left"),
        ("status", "left"),
        ("classes", "right"),
        ("size", "right"),
        ("train", "right"),
        ("test", "right"),
        ("d / batch", "right"),
    ):
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    table.add_column("where", overflow="fold")
    for r in datasets:
        size = "-" if r["image_size"] is None else f"{r['channels']}x{r['image_size']}"
        where = (
            "\n".join(r["looked"]) or "(no folder: give --data-root)"
            if r["status"] == "missing"
            else r["where"]
        )
        table.add_row(
            r["name"],
            f"[{colour[r['status']]}]{r['status']}[/]",
            _fmt(r["classes"]),
            size,
            _fmt(r["train"]),
            _fmt(r["test"]),
            f"{_fmt(r['latent_dim'])} / {_fmt(r['batch_size'])}",
            where,
        )
    console.print(table)
    missing = [r for r in datasets if r["status"] in ("missing", "malformed")]
    for r in missing:
        info = dataset_info(r["name"])
        text = (
            f"expected {info.expected}; {info.how_to_get}."
            if r["status"] == "missing"
            else r["where"]
        )
        console.print(f"[bold]{r['name']}[/] ({r['status']}): {text}", highlight=False)
    if missing:
        console.print()

    table = Table(
        title=f"Architectures (parameters for {args.channels}x{args.image_size}² "
        f"input, d={args.feat_dim})"
    )
    for col, justify in (
        ("arch", "left"),
        ("parameters", "right"),
        ("backbone", "right"),
        ("description", "left"),
    ):
        table.add_column(col, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in archs:
        table.add_row(r["name"], _fmt(r["params"]), _fmt(r["backbone_params"]), r["description"])
    console.print(table)
    version = timm_archs.timm_version()
    if version is None:
        console.print(
            f"timm: not installed; `{timm_archs.INSTALL}` adds its networks as timm:<model>.",
            highlight=False,
        )
    elif not args.timm:
        console.print(
            f"timm {version}: {len(timm_archs.list_models())} more networks as "
            "timm:<model> (random init); --timm 'PATTERN' lists them with their "
            "parameter counts.",
            highlight=False,
        )
    env_root = os.environ.get("PODBENCH_DATA")
    root = args.data_root or (
        f"$PODBENCH_DATA={env_root}"
        if env_root
        else "default places only (give --data-root or $PODBENCH_DATA)"
    )
    console.print(
        f"data root: {root}; decoded-data cache: {cache_dir()} ($PODBENCH_CACHE)", highlight=False
    )
    console.print(
        cpu_line(cpu_features()) + " (`podbench doctor` measures the gain)", highlight=False
    )
    for registry in (DATASETS, ARCHS):
        for name, why in sorted(registry.load_entry_points().items()):
            console.print(
                f"[red]broken {registry.kind} plugin {name}[/red]: {why}", highlight=False
            )
    return 0
