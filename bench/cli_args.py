"""Command-line arguments that several commands share, given the same way in each.

- the spec file and its ``--set`` overrides (``validate``, ``run``, ``tune``);
- the results folder: ``--results DIR`` in every command (``run``, ``tune``, ``results``,
  ``report``); ``results`` and ``report`` also take it as their first argument, the older form;
- the Ray cluster (``--address``, else ``$RAY_ADDRESS``, else an embedded Ray), ``--num-cpus`` and
  ``--max-concurrent`` (``run``, ``tune``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from podbench.errors import UserError
from podbench.fileio import local_path

__all__ = [
    "DEFAULT_RESULTS_ROOT",
    "add_ray_arguments",
    "add_results_argument",
    "add_spec_arguments",
    "given_results",
    "max_runs",
    "positive",
    "ray_address",
    "results_folder",
]

DEFAULT_RESULTS_ROOT = Path("podbench-results")


def add_spec_arguments(
    parser: argparse.ArgumentParser,
    *,
    metavar: str = "SUITE",
    what: str = "a suite YAML file or a built-in suite name",
    example: str = "epochs=2",
) -> None:
    """The spec argument and its ``--set`` overrides."""
    from podbench.runs import DEFAULT_MAX_RUNS

    parser.add_argument("spec", metavar=metavar, help=what)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a field (dotted keys, YAML values), e.g. --set {example}; repeatable",
    )
    parser.add_argument(
        "--max-runs",
        type=int,
        default=DEFAULT_MAX_RUNS,
        metavar="N",
        help=f"refuse a file that makes more than N runs or trials (default {DEFAULT_MAX_RUNS}), "
        "counted before any is built",
    )


def add_results_argument(
    parser: argparse.ArgumentParser,
    *,
    default: str | None = None,
    positional: bool = False,
    what: str = "results directory",
) -> None:
    """``--results DIR``; with ``positional``, DIR may also come first (the older form).

    Args:
        default: what an omitted folder means, for the help (None: the folder is required).
        positional: also accept the folder as the command's first argument.
        what: the folder's description in the help.
    """
    parser.add_argument(
        "--results",
        default=None,
        metavar="DIR",
        help=f"{what} (default: {default})" if default else what,
    )
    if positional:
        parser.add_argument(
            "results_dir",
            nargs="?",
            default=None,
            metavar="DIR",
            help="the results directory, as with --results DIR",
        )


def given_results(args: argparse.Namespace) -> Path:
    """The results folder of a command that reads one: ``--results DIR`` or its first argument."""
    first, flag = getattr(args, "results_dir", None), args.results
    first = None if first is None else local_path(first, "results folder")
    flag = None if flag is None else local_path(flag, "--results")
    if first is not None and flag is not None and first != flag:
        raise UserError(
            f"results folder given twice ({first} and --results {flag}); give it once, "
            "as --results DIR."
        )
    folder = flag if flag is not None else first
    if folder is None:
        raise UserError(
            f"no results folder given; add --results DIR, e.g. --results "
            f"{DEFAULT_RESULTS_ROOT}/quickstart."
        )
    return Path(folder)


def results_folder(given: str | Path | None, name: str) -> Path:
    """``--results`` or ``podbench-results/<name>``, created and checked writable.

    An existing file there, or a folder that cannot be created or written, is a user error.
    """
    results = local_path(given, "--results") if given else DEFAULT_RESULTS_ROOT / name
    if results.exists() and not results.is_dir():
        raise UserError(f"--results {results}: exists and is not a directory; give a folder path.")
    try:
        results.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=results):
            pass
    except OSError as err:
        raise UserError(
            f"--results {results}: cannot write there ({err.strerror or err}); give a folder you "
            "can write to, or fix its permissions."
        ) from None
    return results


def add_ray_arguments(
    parser: argparse.ArgumentParser,
    *,
    units: str,
    concurrency_default: str = "as many as the resources allow",
) -> None:
    """``--address``, ``--num-cpus`` and ``--max-concurrent``; ``units`` names what runs at once."""
    parser.add_argument(
        "--address",
        default=None,
        help="address of a running Ray cluster (HOST:PORT or 'auto'); default: $RAY_ADDRESS when "
        "set, else an embedded local Ray",
    )
    parser.add_argument(
        "--num-cpus",
        type=int,
        default=None,
        metavar="N",
        help="CPUs of the embedded Ray (default: all of this machine's)",
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        metavar="N",
        help=f"run at most N {units} at once (default: {concurrency_default})",
    )


def ray_address(given: str | None) -> str | None:
    """``--address``, else ``$RAY_ADDRESS`` (Ray's own convention), else None: an embedded Ray."""
    return given or os.environ.get("RAY_ADDRESS") or None


def max_runs(args: argparse.Namespace) -> int:
    """``--max-runs``, checked positive."""
    positive(args.max_runs, "--max-runs")
    return int(args.max_runs)


def positive(value: int | None, flag: str) -> None:
    """A count flag must be 1 or more when given."""
    if value is not None and value < 1:
        raise UserError(f"{flag} {value}: must be a positive integer; e.g. {flag} 2.")
