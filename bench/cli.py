"""The ``podbench`` command line.

Each sub-command lives in the room that owns it and exposes two functions:
``add_arguments(parser)`` and ``run(args) -> int``. This module only dispatches, and turns a
:class:`~podbench.errors.UserError` into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from podbench import __version__
from podbench.errors import UserError

# name -> (module, one-line help); modules are imported lazily so `podbench --help` is fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "losses": ("podbench.losses.cli", "list the registered loss plugins"),
    "tasks": ("podbench.tasks.cli", "list datasets (found or missing) and architectures"),
    "doctor": (
        "podbench.tasks.doctor",
        "what this machine offers: CPU bf16 (AMX, AVX-512), threads, GPUs",
    ),
    "probes": ("podbench.probes.cli", "list the evaluation probes a suite can select"),
    "validate": ("podbench.cli_run", "check a suite or tune file without running it"),
    "run": ("podbench.cli_run", "run a suite (a YAML file or a built-in name) on Ray"),
    "results": ("podbench.cli_run", "summarise a results directory"),
    "tune": ("podbench.cli_tune", "tune loss hyperparameters with Optuna on Ray"),
    "report": ("podbench.reports.cli", "write the statistical report of a results directory"),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="podbench",
        description="Benchmark and ablation harness for classification loss functions.",
    )
    parser.add_argument("--version", action="version", version=f"podbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:  # only the chosen command's module is imported
            module = importlib.import_module(module_name)
            adder = getattr(module, f"add_{name}_arguments", None) or module.add_arguments
            adder(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    selected = selected if selected in COMMANDS else None
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(COMMANDS[args.command][0])
    runner = getattr(module, f"run_{args.command}", None) or module.run
    try:
        return int(runner(args) or 0)
    except UserError as err:
        print(f"podbench {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"podbench {args.command}: interrupted; finished work is saved.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
