"""Which runs enter the statistics, with which value: the first step after loading the records.

A diverged or failed run counts against its method by default (policy ``worst``): it enters with
the worst value, chance accuracy 1/K for accuracies, so it ranks last in its block. A loss that
diverges on hard settings is then not compared only where it survived, which would favour
unstable losses. Policy ``exclude`` leaves such runs out (and says so). Either way every run that
does not enter is listed, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

from podbench.errors import UserError
from podbench.reports.records import MetricInfo, ResultsData

__all__ = [
    "FAILED_POLICIES",
    "ExcludedRun",
    "FailureHandling",
    "Observations",
    "block_key",
    "check_failed_policy",
    "observations",
]

FAILED_POLICIES = ("worst", "exclude")
FailedPolicy = Literal["worst", "exclude"]
NOT_COMPLETED = ("diverged", "failed")


def block_key(dataset: str, arch: str) -> str:
    """The name of a (dataset, architecture) block."""
    return f"{dataset} / {arch}"


def check_failed_policy(failed: str) -> FailedPolicy:
    """The policy for diverged and failed runs, or a one-sentence UserError."""
    if failed not in FAILED_POLICIES:
        raise UserError(
            f"--failed {failed!r} is not a policy; use worst (diverged and failed runs enter "
            "with the worst value) or exclude (they are left out)."
        )
    return failed  # type: ignore[return-value]


@dataclass(frozen=True)
class ExcludedRun:
    """A run that did not complete or recorded no value, how it was counted, and why."""

    run_id: str
    label: str
    block: str
    seed: int
    status: str
    error_type: str | None
    error_message: str | None
    error_epoch: int | None
    reason: str
    counted_as: float | None  # the worst value it entered with; None when left out


WorstBasis = Literal["chance", "accuracy floor", "worst recorded", "none"]


@dataclass(frozen=True)
class FailureHandling:
    """How diverged and failed runs entered the statistics."""

    policy: FailedPolicy
    basis: WorstBasis
    worst_values: dict[str, float | None]  # per block, in the metric's report unit
    n_counted: int  # diverged/failed runs that entered with the worst value
    n_left_out: int  # runs that did not enter at all


@dataclass
class Observations:
    """The runs with their block and compared value (not written; the steps' common input).

    ``used`` holds the runs that enter, with ``value`` (report unit), ``imputed`` (a diverged
    or failed run entered with the worst value) and ``still_improving`` (False where unknown).
    """

    runs: pd.DataFrame
    used: pd.DataFrame
    labels: list[str]  # the control first, then the others sorted
    blocks: list[tuple[str, str]]
    metric: MetricInfo
    excluded: list[ExcludedRun]
    failure: FailureHandling
    still_improving_recorded: bool  # the records carry the still_improving flag


def _num_classes(data: ResultsData) -> dict[str, int]:
    """Classes per run_id, from the runs table or the records (absent in older records)."""
    out: dict[str, int] = {}
    if "num_classes" in data.runs:
        for run_id, k in zip(data.runs["run_id"], data.runs["num_classes"], strict=True):
            if pd.notna(k):
                out[str(run_id)] = int(k)
    for rec in data.records:
        spec: Any = rec.get("spec") or {}
        k = rec.get("num_classes", spec.get("num_classes") if isinstance(spec, dict) else None)
        if isinstance(k, int) and k > 0:
            out.setdefault(str(rec["run_id"]), k)
    return out


def _still_improving(data: ResultsData) -> dict[str, bool]:
    """run_id -> still improving when training stopped, for the runs whose record says."""
    pairs: Iterable[tuple[Any, Any]]
    if "still_improving" in data.runs:
        pairs = zip(data.runs["run_id"], data.runs["still_improving"], strict=True)
    else:  # a loader that does not flatten the field yet: read it from the records
        pairs = ((r["run_id"], r.get("still_improving")) for r in data.records)
    return {str(i): bool(v) for i, v in pairs if v is not None and not pd.isna(v)}


def _worst_values(
    data: ResultsData, completed: pd.DataFrame, metric: MetricInfo
) -> tuple[dict[tuple[str, str], float | None], WorstBasis]:
    """Per block, the value a diverged or failed run enters with, and what it is."""
    runs = data.runs
    blocks = sorted({(d, a) for d, a in zip(runs["dataset"], runs["arch"], strict=True)})
    if metric.name.endswith("_acc"):
        classes = _num_classes(data)
        worst: dict[tuple[str, str], float | None] = {}
        known = True
        for d, a in blocks:
            ids = runs.loc[(runs["dataset"] == d) & (runs["arch"] == a), "run_id"]
            ks = {classes[i] for i in ids if i in classes}
            known = known and len(ks) == 1
            worst[(d, a)] = metric.scale / ks.pop() if len(ks) == 1 else 0.0
        # Chance needs the number of classes; older records lack it, then 0 is the floor.
        return worst, "chance" if known else "accuracy floor"
    worst = {}
    for d, a in blocks:
        here = completed[(completed["dataset"] == d) & (completed["arch"] == a)]["value"]
        best_worst = here.min() if metric.higher_is_better else here.max()
        worst[(d, a)] = None if here.empty else float(best_worst)
    return worst, "worst recorded"


def _excluded(row: Any, metric: MetricInfo, counted_as: float | None) -> ExcludedRun:
    if row.status != "completed":
        reason = f"run {row.status}"
    else:
        reason = f"no {metric.name} recorded"
    return ExcludedRun(
        run_id=row.run_id,
        label=row.label,
        block=block_key(row.dataset, row.arch),
        seed=int(row.seed),
        status=row.status,
        error_type=row.error_type,
        error_message=row.error_message,
        error_epoch=None if pd.isna(row.error_epoch) else int(row.error_epoch),
        reason=reason,
        counted_as=counted_as,
    )


def observations(
    data: ResultsData, metric: MetricInfo, control: str, failed: FailedPolicy = "worst"
) -> Observations:
    """Which runs enter the statistics and with which value, under the failure policy.

    Completed runs that recorded the metric enter with it (scaled to the report unit). Under
    ``worst`` a diverged or failed run enters with its block's worst value; under ``exclude`` it
    is left out. A completed run without the metric is left out under both.
    """
    runs = data.runs.copy()
    flags = _still_improving(data)
    runs["still_improving"] = runs["run_id"].map(lambda i: flags.get(str(i), False))
    labels = sorted(runs["label"].unique())
    if control in labels:
        labels = [control] + [lab for lab in labels if lab != control]
    blocks = sorted({(d, a) for d, a in zip(runs["dataset"], runs["arch"], strict=True)})
    completed = runs[(runs["status"] == "completed") & runs[metric.name].notna()].copy()
    completed["value"] = completed[metric.name] * metric.scale
    completed["imputed"] = False
    worst, basis = _worst_values(data, completed, metric)
    not_completed = runs[runs["status"].isin(NOT_COMPLETED)]
    imputed = not_completed.iloc[0:0].assign(value=0.0, imputed=True)
    if failed == "worst":
        blocks_of = zip(not_completed["dataset"], not_completed["arch"], strict=True)
        values = [worst[b] for b in blocks_of]
        imputed = not_completed.assign(value=values, imputed=True).dropna(subset=["value"])
    used = pd.concat([completed, imputed]).sort_index()
    used["imputed"] = used["imputed"].astype(bool)
    excluded = [
        _excluded(r, metric, worst[(r.dataset, r.arch)] if r.Index in imputed.index else None)
        # dotted columns (error.type) as identifiers (error_type): itertuples needs them
        for r in runs[~runs.index.isin(completed.index)]
        .rename(columns=lambda c: str(c).replace(".", "_"))
        .itertuples()
    ]
    failure = FailureHandling(
        policy=failed,
        basis=basis if failed == "worst" else "none",
        worst_values={block_key(*b): v for b, v in worst.items()},
        n_counted=int(len(imputed)),
        n_left_out=int(len(runs) - len(used)),
    )
    return Observations(runs, used, labels, blocks, metric, excluded, failure, bool(flags))
