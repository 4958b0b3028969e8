"""``podbench validate``, ``podbench run`` and ``podbench results``.

Examples:
    podbench validate quickstart
    podbench run quickstart --results podbench-results/quickstart
    podbench run my-suite.yaml --set epochs=2 --set "seeds=[0,1]" --num-cpus 2
    podbench run my-suite.yaml --address 127.0.0.1:6379
    podbench results podbench-results/quickstart
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from podbench.errors import UserError

__all__ = [
    "add_results_arguments",
    "add_run_arguments",
    "add_validate_arguments",
    "run_results",
    "run_run",
    "run_validate",
]

DEFAULT_RESULTS_ROOT = Path("podbench-results")


def add_spec_arguments(
    parser: argparse.ArgumentParser,
    *,
    metavar: str = "SUITE",
    what: str = "a suite YAML file or a built-in suite name",
    example: str = "epochs=2",
) -> None:
    """The spec argument and its ``--set`` overrides, shared by run, validate and tune."""
    parser.add_argument("spec", metavar=metavar, help=what)
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help=f"override a field (dotted keys, YAML values), e.g. --set {example}; repeatable",
    )


def results_folder(given: str | Path | None, name: str) -> Path:
    """``--results`` or ``podbench-results/<name>``; an existing file there is a user error."""
    results = Path(given) if given else DEFAULT_RESULTS_ROOT / name
    if results.exists() and not results.is_dir():
        raise UserError(f"--results {results}: exists and is not a directory; give a folder path.")
    return results


def positive(value: int | None, flag: str) -> None:
    """A count flag must be 1 or more when given."""
    if value is not None and value < 1:
        raise UserError(f"{flag} {value}: must be a positive integer; e.g. {flag} 2.")


def _is_tune_file(spec: str) -> bool:
    """Tune files are built-in names starting with 'tune-' or YAML with a top-level 'n_trials'."""
    from podbench.specs import read_spec_mapping

    if spec.startswith("tune-") and not Path(spec).exists():
        return True
    if Path(spec).is_file():
        data, _ = read_spec_mapping(spec)
        return "n_trials" in data
    return False


# ---------------------------------------------------------------------------- validate


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser)


def run_validate(args: argparse.Namespace) -> int:
    from podbench import specs

    if _is_tune_file(args.spec):
        tune_spec = specs.load_tune(args.spec, args.overrides)
        print(f"{args.spec}: valid tune file ({type(tune_spec).__name__}).")
        return 0
    suite = specs.load_suite(args.spec, args.overrides)
    runs = suite.expand()
    labels = sorted({r.label for r in runs})
    print(
        f"{args.spec}: valid suite '{suite.name}' with {len(runs)} run(s): "
        f"{len(labels)} method(s) ({', '.join(labels)}) x {len(suite.datasets)} dataset(s) x "
        f"{len(suite.archs)} architecture(s) x {len(suite.seeds)} seed(s), "
        f"{suite.epochs} epoch(s) each."
    )
    return 0


# ---------------------------------------------------------------------------- run


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser)
    parser.add_argument(
        "--results", type=Path, default=None, metavar="DIR",
        help=f"results directory (default: {DEFAULT_RESULTS_ROOT}/<suite name>)",
    )
    parser.add_argument(
        "--address", default=None,
        help="address of a running Ray cluster (HOST:PORT or 'auto'); default: $RAY_ADDRESS when "
        "set, else an embedded local Ray",
    )
    parser.add_argument(
        "--max-concurrent", type=int, default=None, metavar="N",
        help="run at most N runs at once (default: as many as the resources allow)",
    )
    parser.add_argument(
        "--num-cpus", type=int, default=None, metavar="N",
        help="CPUs of the embedded Ray (default: all of this machine's)",
    )
    parser.add_argument(
        "--max-failures", type=int, default=2, metavar="N",
        help="retries of a run whose worker died (default 2)",
    )
    parser.add_argument("--no-report", action="store_true", help="do not write the report at the end")


def run_run(args: argparse.Namespace) -> int:
    from podbench.executor import run_suite
    from podbench.results import ResultsStore
    from podbench.specs import load_suite

    positive(args.max_concurrent, "--max-concurrent")
    positive(args.num_cpus, "--num-cpus")
    if args.max_failures < 0:
        raise UserError("--max-failures: must be 0 or more; e.g. --max-failures 2.")
    address = args.address or os.environ.get("RAY_ADDRESS") or None  # Ray's own convention
    suite = load_suite(args.spec, args.overrides)  # every check before anything is written
    runs = suite.expand()
    if not address:  # on a cluster the data lives on the workers, not necessarily here
        _check_data_present(suite, args.spec)
    results = results_folder(args.results, suite.name)
    store = ResultsStore(results)
    store.write_suite(suite.model_dump(mode="json"))  # with --set applied: rerunnable as is
    outcome = run_suite(
        runs, results, address=address, num_cpus=args.num_cpus,
        max_concurrent=args.max_concurrent, max_failures=args.max_failures,
    )
    table = store.write_table()
    print(
        f"results: {store.root} ({outcome['completed']} completed, {outcome['diverged']} diverged, "
        f"{outcome['failed']} failed, {outcome['skipped']} skipped as already done"
        + (f", {outcome['interrupted']} not run" if outcome["interrupted"] else "")
        + f"); table: {table}"
    )
    if not args.no_report:
        write_report(store.root)
    return 0 if outcome["failed"] == 0 and outcome["interrupted"] == 0 else 1


def _check_data_present(suite: Any, source: str) -> None:
    """Missing data fails here, with exit 2, rather than as one failed record per run."""
    from podbench.tasks import dataset_info, locate_dataset

    for i, ds in enumerate(suite.datasets):
        root = ds.data_root if ds.data_root is not None else suite.data_root
        found, looked = locate_dataset(ds.name, root)
        if found is None:
            info = dataset_info(ds.name)
            where = ", ".join(str(p) for p in looked) or "(no folder given)"
            raise UserError(
                f"{source}: field 'datasets.{i}': dataset '{ds.name}' was not found (looked in "
                f"{where}); {str(info.how_to_get).rstrip('.')}, or set datasets.{i}.data_root "
                "to its folder."
            )


def write_report(results: Path) -> None:
    """Write ``RESULTS/report`` after a run; a report that cannot be made never fails the runs."""
    from podbench.reports import build_report

    try:
        # control=None: `pod` when the suite has it, else the method with the most runs
        out = build_report(results, results / "report", control=None)
    except UserError as err:  # e.g. no completed run: the records themselves are fine
        print(f"report: not written ({err})")
        return
    print(f"report: {out}")


# ---------------------------------------------------------------------------- results


def add_results_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", type=Path, metavar="DIR", help="a results directory")
    parser.add_argument(
        "--write-csv", action="store_true", help="also (re)write DIR/results.csv from the records"
    )


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def run_results(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from podbench.results import ResultsStore

    store = ResultsStore.open_existing(args.results)
    summary = store.summary()
    if summary.empty:
        print(f"{args.results}: no run records yet.")
        return 0
    if args.write_csv:
        store.write_table()
    table = Table(title=f"{args.results}: final test accuracy per method (mean ± std over seeds)")
    for column in ("dataset", "arch", "method", "runs", "completed", "diverged", "failed",
                   "test acc", "± std", "best acc", "images/s"):
        table.add_column(column, justify="left" if column in ("dataset", "arch", "method") else "right")
    for row in summary.itertuples(index=False):
        table.add_row(
            str(row.dataset), str(row.arch), str(row.label), str(row.runs), str(row.completed),
            str(row.diverged), str(row.failed), _fmt(row.test_acc_mean), _fmt(row.test_acc_std),
            _fmt(row.best_test_acc_mean), _fmt(row.images_per_s, 0),
        )
    Console(file=sys.stdout, width=160).print(table)
    return 0
