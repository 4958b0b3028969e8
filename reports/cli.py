"""``podbench report --results DIR --out OUT``: write the statistical report of a results directory.

``podbench report DIR`` (the folder as first argument) is the older form, still accepted.
"""

from __future__ import annotations

import argparse

from podbench.cli_args import add_results_argument, given_results
from podbench.fileio import local_path
from podbench.reports.records import METRICS

__all__ = ["add_report_arguments", "run_report"]


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the report command's arguments to ``parser``."""
    add_results_argument(
        parser,
        positional=True,
        what="results directory written by `podbench run` or `podbench tune` (holds runs/*.json)",
    )
    parser.add_argument(
        "--out", default=None, metavar="OUT", help="output directory (default: DIR/report)"
    )
    parser.add_argument(
        "--control",
        default=None,
        help="method (record label) every other is compared with "
        "(default: pod when present, else the label with the most runs)",
    )
    parser.add_argument(
        "--rope",
        type=float,
        default=1.0,
        help="half-width of the region of practical equivalence of the Bayesian test, in "
        "accuracy points (in the metric's unit for other metrics; default: 1.0)",
    )
    parser.add_argument(
        "--metric",
        default="final_test_acc",
        metavar="NAME",
        help=f"compared metric of the run records: one of {', '.join(METRICS)}, or a probe's "
        "value by its short name (ece, ace, cw_ece, nll, brier, auroc, aupr_in, aupr_out, "
        "fpr95, mca, ce_vs_softmax, rel_ce_vs_softmax; _raw for T = 1) or its column "
        "(evaluation.<probe>.<name>, e.g. evaluation.ood.near.auroc); "
        "its direction (higher or lower is better) comes with it (default: final_test_acc)",
    )
    parser.add_argument(
        "--alpha", type=float, default=0.05, help="significance level (default: 0.05)"
    )
    parser.add_argument(
        "--failed",
        default="worst",
        choices=("worst", "exclude"),
        help="diverged and failed runs: worst enters each with the worst value (chance "
        "accuracy, last rank in its block), exclude leaves them out (default: worst)",
    )
    parser.add_argument(
        "--difference",
        type=float,
        default=0.5,
        help="difference (accuracy points) the seeds-and-power table plans for: seeds needed to "
        "detect it at 80%% power (default: 0.5)",
    )
    parser.add_argument(
        "--target-fraction",
        type=float,
        default=0.99,
        help="convergence target per block, as a fraction of the best method's median final "
        "test accuracy (default: 0.99)",
    )


def run_report(args: argparse.Namespace) -> int:
    """Build the report; user mistakes raise podbench.errors.UserError (exit 2)."""
    from podbench.reports.build import build_report  # heavy imports only when the command runs

    path = build_report(
        given_results(args),
        None if args.out is None else local_path(args.out, "--out"),
        control=args.control,
        rope=args.rope,
        metric=args.metric,
        alpha=args.alpha,
        failed=args.failed,
        difference=args.difference,
        target_fraction=args.target_fraction,
    )
    print(f"report written: {path}")
    print(
        f"  also {path.with_name('report.tex')}, {path.with_name('stats.json')}, "
        f"{path.parent / 'figures'}/"
    )
    return 0
