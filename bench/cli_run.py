"""``podbench validate``, ``podbench run`` and ``podbench results``.

Examples:
    podbench validate quickstart
    podbench run quickstart --results podbench-results/quickstart
    podbench run my-suite.yaml --set epochs=2 --set "seeds=[0,1]" --num-cpus 2
    podbench run my-suite.yaml --address 127.0.0.1:6379
    podbench results --results podbench-results/quickstart
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from podbench.cli_args import (
    DEFAULT_RESULTS_ROOT,
    add_ray_arguments,
    add_results_argument,
    add_spec_arguments,
    given_results,
    max_runs,
    positive,
    ray_address,
    results_folder,
)
from podbench.errors import UserError
from podbench.fileio import local_path

if TYPE_CHECKING:
    from podbench.runs import RunSettings

__all__ = [
    "add_results_arguments",
    "add_run_arguments",
    "add_validate_arguments",
    "run_results",
    "run_run",
    "run_validate",
]


def _is_tune_file(spec: str) -> bool:
    """Tune files are built-in names starting with 'tune-' or YAML with a top-level 'n_trials'."""
    from podbench.spec_files import read_spec_mapping

    path = Path(spec)
    try:
        if path.is_file():
            data, _ = read_spec_mapping(spec, kind="suite or tune")
            return "n_trials" in data
        return spec.startswith("tune-") and not path.exists()
    except OSError:  # a folder on the way cannot be entered: loading it as a suite says so
        return False


# ---------------------------------------------------------------------------- validate


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser)


def run_validate(args: argparse.Namespace) -> int:
    from podbench.suite_spec import load_suite

    if _is_tune_file(args.spec):
        from podbench.tuning import load_tune

        tune_spec = load_tune(args.spec, args.overrides, max_runs=max_runs(args))
        print(f"{args.spec}: valid tune file ({type(tune_spec).__name__}).")
        return 0
    suite = load_suite(args.spec, args.overrides, max_runs=max_runs(args))
    runs = suite.expand()
    labels = sorted({r.label for r in runs})
    blocks = sorted({(r.dataset, r.arch) for r in runs})
    epochs = sorted({r.epochs for r in runs})
    # datasets may have their own archs and epochs: count the blocks the runs form
    epoch_text = str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]}"
    print(
        f"{args.spec}: valid suite '{suite.name}' with {len(runs)} run(s): "
        f"{len(labels)} method(s) ({', '.join(labels)}) x {len(blocks)} block(s) "
        "(dataset x architecture) x "
        + (f"{len(suite.label_noise)} label-noise level(s) x " if suite.label_noise else "")
        + f"{len(suite.seeds)} seed(s), {epoch_text} epoch(s) each"
        + (f"; probes: {', '.join(e.name for e in suite.evaluate)}" if suite.evaluate else "")
        + "."
    )
    from podbench.recipe import warmup_warnings

    for warning in warmup_warnings(runs):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- run


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser)
    add_results_argument(parser, default=f"{DEFAULT_RESULTS_ROOT}/<suite name>")
    add_ray_arguments(parser, units="runs")
    parser.add_argument(
        "--max-failures",
        type=int,
        default=2,
        metavar="N",
        help="retries of a run whose worker died (default 2)",
    )
    parser.add_argument(
        "--no-report", action="store_true", help="do not write the report at the end"
    )


def run_run(args: argparse.Namespace) -> int:
    from podbench.executor import run_suite
    from podbench.results import ResultsStore
    from podbench.runs import check_joins_results
    from podbench.suite_spec import load_suite

    positive(args.max_concurrent, "--max-concurrent")
    positive(args.num_cpus, "--num-cpus")
    if args.max_failures < 0:
        raise UserError("--max-failures: must be 0 or more; e.g. --max-failures 2.")
    address = ray_address(args.address)
    # every check before anything is written
    suite = load_suite(args.spec, args.overrides, max_runs=max_runs(args))
    runs = suite.expand()
    given = local_path(args.results, "--results") if args.results else None
    done = ResultsStore(given or DEFAULT_RESULTS_ROOT / suite.name)  # read, not created
    todo = [run for run in runs if not done.has_final(run.run_id)]
    if todo:  # runs already done ask nothing of the cluster
        check_fits(todo, args.spec, address=address, num_cpus=args.num_cpus)
    if not address:  # on a cluster the data lives on the workers, not necessarily here
        check_data_present(
            [
                (
                    f"datasets.{i}",
                    ds.name,
                    suite.data_root if ds.data_root is None else ds.data_root,
                    f"datasets.{i}.data_root",
                )
                for i, ds in enumerate(suite.datasets)
            ]
            + probe_datasets(suite),
            args.spec,
        )
    results = results_folder(given, suite.name)
    check_joins_results(runs, results, args.spec)
    store = ResultsStore(results)
    store.write_suite(suite.model_dump(mode="json"))  # with --set applied: rerunnable as is
    outcome = run_suite(
        runs,
        results,
        address=address,
        num_cpus=args.num_cpus,
        max_concurrent=args.max_concurrent,
        max_failures=args.max_failures,
    )
    table = store.write_table()
    print(
        f"results: {store.root} ({outcome.completed} completed, {outcome.diverged} diverged, "
        f"{outcome.failed} failed, {outcome.skipped} skipped as already done"
        + (f", {outcome.interrupted} not run" if outcome.interrupted else "")
        + (f", {outcome.elsewhere} trained by another driver" if outcome.elsewhere else "")
        + f"); table: {table}"
    )
    if not args.no_report:
        write_report(store.root)
    return 0 if outcome.ok else 1


def check_fits(
    runs: Sequence[RunSettings],
    source: str,
    *,
    address: str | None,
    num_cpus: int | None,
    what: str = "run",
) -> None:
    """Every run fits a node of the Ray it will run on (see :mod:`podbench.resources`)."""
    from podbench.resources import check_resources, cluster_capacity, local_capacity

    capacity = cluster_capacity(address, num_cpus) if address else local_capacity(num_cpus)
    check_resources(runs, capacity, source, what=what)


def check_data_present(datasets: Sequence[tuple[str, str, str | None, str]], source: str) -> None:
    """Missing data fails here, with exit 2, rather than as one failed record per run.

    Args:
        datasets: (field, dataset name, data root or None, the field that sets the root).
        source: the spec file, for the message.
    """
    from podbench.tasks import dataset_info, locate_dataset

    for field, name, root, root_field in datasets:
        found, looked = locate_dataset(name, root)
        if found is None:
            info = dataset_info(name)
            where = ", ".join(str(p) for p in looked) or "(no folder given)"
            raise UserError(
                f"{source}: field '{field}': dataset '{name}' was not found (looked in "
                f"{where}); {str(info.how_to_get).rstrip('.')}, or set {root_field} "
                "to its folder."
            )


def probe_datasets(settings: RunSettings) -> list[tuple[str, str, str | None, str]]:
    """The datasets the probes read besides the run's (far-OOD sets), for check_data_present."""
    out = []
    for i, entry in enumerate(settings.evaluate):
        extra = entry.probe_settings()
        for j, name in enumerate(extra.get("datasets") or []):
            out.append(
                (
                    f"evaluate.{i}.datasets.{j}",
                    str(name),
                    extra.get("data_root"),
                    f"evaluate.{i}.data_root",
                )
            )
    return out


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
    add_results_argument(parser, positional=True)
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

    results = given_results(args)
    store = ResultsStore.open_existing(results)
    console = Console(file=sys.stdout, width=160)
    summary = store.summary()
    if summary.empty:
        print(f"{results}: no run records yet.")
    else:
        if args.write_csv:
            store.write_table()
        table = Table(title=f"{results}: final test accuracy per method (mean ± std over seeds)")
        for column in (
            "dataset",
            "arch",
            "method",
            "runs",
            "completed",
            "diverged",
            "failed",
            "test acc",
            "± std",
            "best acc",
            "images/s",
        ):
            table.add_column(
                column, justify="left" if column in ("dataset", "arch", "method") else "right"
            )
        for row in summary.itertuples(index=False):
            table.add_row(
                str(row.dataset),
                str(row.arch),
                str(row.label),
                str(row.runs),
                str(row.completed),
                str(row.diverged),
                str(row.failed),
                _fmt(row.test_acc_mean),
                _fmt(row.test_acc_std),
                _fmt(row.best_test_acc_mean),
                _fmt(row.images_per_s, 0),
            )
        console.print(table)
    _print_in_progress(store, console)
    return 0


def _print_in_progress(store: Any, console: Any) -> None:
    """The runs being trained on this folder now: who holds them, since when."""
    from rich.table import Table

    from podbench.claims import describe

    claims = store.claims()
    rows = [describe(claims, info) for info in claims.all_current()]
    if not rows:
        return
    table = Table(
        title=f"in progress: {len(rows)} run(s) claimed by the processes training "
        "them (stale: its holder died; the next driver takes it over)"
    )
    for column in ("run", "what", "state", "host", "pid", "driver", "since", "heartbeat"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["key"],
            r["what"],
            r["state"],
            r["host"],
            str(r["pid"]),
            r["driver"],
            r["since"],
            f"{r['heartbeat_age_s']:.0f} s ago",
        )
    console.print(table)
