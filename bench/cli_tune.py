"""``podbench tune``: tune loss hyperparameters with Optuna on Ray, the same budget for every loss.

Examples:
    podbench tune tune-quickstart --num-cpus 2
    podbench tune tune-quickstart --set n_trials=20            # resumes, runs 8 more per loss
    podbench tune my-tune.yaml --storage postgresql://me@db/podbench --address auto
    podbench tune tune-quickstart --seeds 5                    # then rerun the best points
"""

from __future__ import annotations

import argparse

from podbench.cli_args import (
    DEFAULT_RESULTS_ROOT,
    add_ray_arguments,
    add_results_argument,
    add_spec_arguments,
    max_runs,
    positive,
    ray_address,
    results_folder,
)
from podbench.cli_run import check_data_present, check_fits, probe_datasets, write_report
from podbench.errors import UserError

__all__ = ["add_tune_arguments", "run_tune"]


def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(
        parser,
        metavar="TUNE_FILE",
        what="a tune YAML file or a built-in name (tune-quickstart, tune-pod-cifar10)",
        example="n_trials=8",
    )
    add_results_argument(
        parser,
        default=f"{DEFAULT_RESULTS_ROOT}/<study name>; outputs go to DIR/tune/<study>/",
    )
    parser.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="Optuna storage URL (default: sqlite:///DIR/tune/<study>/optuna.db); use a "
        "server database such as postgresql://... on a cluster",
    )
    add_ray_arguments(parser, units="trials", concurrency_default="the file's max_concurrent")
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help="afterwards, rerun each loss's best point over N seeds on the test set as ordinary "
        "suite runs (records in DIR/runs/, for the report)",
    )


def run_tune(args: argparse.Namespace) -> int:
    from podbench.results import ResultsStore
    from podbench.tuning import load_tune, rerun_best, run_study

    positive(args.num_cpus, "--num-cpus")
    positive(args.max_concurrent, "--max-concurrent")
    positive(args.seeds, "--seeds")
    overrides = list(args.overrides)
    if args.max_concurrent:
        overrides.append(f"max_concurrent={args.max_concurrent}")
    address = ray_address(args.address)
    limit = max_runs(args)
    spec = load_tune(args.spec, overrides, max_runs=limit)  # every check before anything starts
    if args.seeds and args.seeds * len(spec.losses) > limit:
        raise UserError(
            f"--seeds {args.seeds}: reruns {args.seeds * len(spec.losses):,} runs "
            f"({len(spec.losses)} loss(es)), more than --max-runs {limit}; give fewer seeds, "
            "or raise --max-runs if you mean it."
        )
    check_fits([spec], args.spec, address=address, num_cpus=args.num_cpus, what="trial")
    if not address:  # on a cluster the data lives on the workers, not necessarily here
        check_data_present(
            [("dataset", spec.dataset, spec.data_root, "data_root"), *probe_datasets(spec)],
            args.spec,
        )
    results = results_folder(args.results, spec.name)
    outcome = run_study(
        spec, results, storage=args.storage, address=address, num_cpus=args.num_cpus
    )
    for label, study in outcome.studies.items():
        states = [t.state.name.lower() for t in study.get_trials(deepcopy=False)]
        counts = ", ".join(
            f"{states.count(s)} {s}" for s in ("complete", "pruned", "fail") if states.count(s)
        )
        best = outcome.best.get(label)
        best_text = (
            f"best val acc {best['val_acc']:.4f} (trial {best['trial']})"
            if best
            else "no completed trial"
        )
        print(f"{label}: {outcome.ran.get(label, 0)} trial(s) run now; {counts}; {best_text}")
    folder = results / "tune" / spec.name
    print(
        f"tuning outputs: {folder} (trials.csv, best.yaml, importances.json); storage: {outcome.storage_url}"
    )
    if args.seeds:
        reruns = rerun_best(outcome, results, args.seeds, address=address, num_cpus=args.num_cpus)
        store = ResultsStore(results)
        table = store.write_table()
        print(
            f"best points over {args.seeds} seed(s): {reruns.get('completed', 0)} completed, "
            f"{reruns.get('diverged', 0)} diverged, {reruns.get('failed', 0)} failed, "
            f"{reruns.get('skipped', 0)} already done; table: {table}"
        )
        write_report(results)
        if reruns.get("failed", 0) or reruns.get("interrupted", 0):
            return 1
    return 0
