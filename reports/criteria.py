"""Criteria beyond accuracy: the probes' values as comparable metrics, training conditions as
blocks, the corruption errors relative to softmax, and the multi-criteria summary.

A probe's value is the column ``evaluation.<probe>.<...>.<kind>`` of the runs table; its last
part, the kind, says what it is and whether higher is better (:data:`KINDS`). ``--metric`` takes
such a column or the short name of a probe's headline value (``ece`` for
``evaluation.calibration.ece``, ``auroc`` for ``evaluation.ood.auroc``).

Runs trained under another condition (label noise, an open-set split) are other blocks: their
``dataset`` reads e.g. ``fashion-mnist [open 6/10, symmetric noise 0.4]``, and the plain name and
the condition stay in ``condition.*`` columns.

mCE and relative mCE (Hendrycks & Dietterich 2019) are against softmax, the loss named
``softmax`` in the same block (seeds averaged): with E the error (1 - accuracy) per corruption c
and severity s, ``mce`` = mean_c sum_s E_cs / sum_s E^softmax_cs and ``rel_mce`` =
mean_c sum_s (E_cs - E_clean) / sum_s (E^softmax_cs - E^softmax_clean), both as fractions
(shown in percent; softmax itself scores 100%).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from podbench.errors import UserError
from podbench.reports.records import MetricInfo, ResultsData

__all__ = [
    "BASELINE",
    "with_criteria",
    "KINDS",
    "SUMMARY_CRITERIA",
    "CriterionSummary",
    "add_conditions",
    "add_corruption_errors",
    "criterion_metric",
]

BASELINE = "softmax"  # the method mCE is relative to
EVALUATION = "evaluation."

# kind -> (title, unit, scale, higher is better); None: a value, not a criterion
KINDS: dict[str, tuple[str, str, float, bool | None]] = {
    "ece": ("expected calibration error (after temperature scaling)", "%", 100.0, False),
    "ece_raw": ("expected calibration error (T = 1)", "%", 100.0, False),
    "ace": ("adaptive calibration error (after temperature scaling)", "%", 100.0, False),
    "ace_raw": ("adaptive calibration error (T = 1)", "%", 100.0, False),
    "cw_ece": ("classwise calibration error (after temperature scaling)", "%", 100.0, False),
    "cw_ece_raw": ("classwise calibration error (T = 1)", "%", 100.0, False),
    "nll": ("negative log-likelihood (after temperature scaling)", "", 1.0, False),
    "nll_raw": ("negative log-likelihood (T = 1)", "", 1.0, False),
    "brier": ("Brier score (after temperature scaling)", "", 1.0, False),
    "brier_raw": ("Brier score (T = 1)", "", 1.0, False),
    "acc": ("accuracy", "%", 100.0, True),
    "mca": ("mean corruption accuracy", "%", 100.0, True),
    "mce": ("mCE (softmax = 100)", "%", 100.0, False),
    "rel_mce": ("relative mCE (softmax = 100)", "%", 100.0, False),
    "auroc": ("AUROC (in-distribution positive)", "%", 100.0, True),
    "aupr_in": ("AUPR-in (in-distribution positive)", "%", 100.0, True),
    "aupr_out": ("AUPR-out (OOD positive)", "%", 100.0, True),
    "fpr95": ("FPR at 95% TPR (in-distribution positive)", "%", 100.0, False),
    "temperature": ("fitted temperature", "", 1.0, None),
    "rate": ("label-noise rate", "", 1.0, None),
    "changed": ("share of training labels changed", "", 1.0, None),
}

# the multi-criteria summary's columns, when the runs recorded them
SUMMARY_CRITERIA = (
    "final_test_acc",
    "evaluation.calibration.ece",
    "evaluation.calibration.nll",
    "evaluation.calibration.brier",
    "evaluation.ood.auroc",
    "evaluation.ood.fpr95",
    "evaluation.corruptions.mca",
    "evaluation.corruptions.rel_mce",
)


def _title(column: str, kind: str) -> str:
    """``evaluation.ood.open-set.msp.auroc`` -> ``AUROC (...) [ood: open-set, msp]``."""
    parts = column.split(".")[1:-1]
    where = f" [{parts[0]}: {', '.join(parts[1:])}]" if len(parts) > 1 else ""
    return KINDS[kind][0] + where


def criterion_metric(name: str, columns: Any) -> MetricInfo:
    """The compared metric for ``--metric name``: a probe's column or its short name.

    Raises:
        UserError: no such column, a value that is not a criterion, or an ambiguous short name.
    """
    columns = [str(c) for c in columns]
    probe_columns = [c for c in columns if c.startswith(EVALUATION)]
    if name in columns:
        column = name
    else:
        candidates = [c for c in probe_columns if c.endswith("." + name)]
        shortest = min((c.count(".") for c in candidates), default=0)
        candidates = [c for c in candidates if c.count(".") == shortest]
        if len(candidates) != 1:
            known = sorted({c.split(".")[-1] for c in probe_columns if c.split(".")[-1] in KINDS
                            and KINDS[c.split(".")[-1]][3] is not None})
            if candidates:
                raise UserError(f"--metric {name!r} is ambiguous: give one of "
                                f"{', '.join(sorted(candidates))}.")
            raise UserError(
                f"--metric {name!r} is not recorded by these runs; use final_test_acc, "
                f"best_test_acc, wall_time_s, images_per_s, a geometry.* column"
                + (f", or a probe's value ({', '.join(known)} or a full evaluation.* column)"
                   if known else " (no run recorded probe values: add evaluate: to the suite)")
                + "."
            )
        column = candidates[0]
    kind = column.split(".")[-1]
    if not column.startswith(EVALUATION) or kind not in KINDS or KINDS[kind][3] is None:
        raise UserError(f"--metric {name!r}: {column} is a recorded value but not a criterion "
                        "with a better direction; choose another metric.")
    _, unit, scale, higher = KINDS[kind]
    return MetricInfo(column, _title(column, kind), unit, scale, bool(higher))


# -- conditions -------------------------------------------------------------------------------

def _condition(row: pd.Series) -> str:
    parts = []
    known = row.get("spec.open_set.known")
    if known is not None and pd.notna(known):
        parts.append(f"open {int(known)}, split {int(row.get('spec.open_set.seed', 0))}")
    kind = row.get("spec.label_noise.kind")
    if isinstance(kind, str):
        parts.append(f"{kind} noise {float(row['spec.label_noise.rate']):g}")
    return ", ".join(parts)


def add_conditions(runs: pd.DataFrame) -> pd.DataFrame:
    """Blocks per training condition: ``dataset`` gains the condition; ``condition.*`` columns
    keep the plain dataset, the condition and the noise rate (0 without noise)."""
    runs = runs.copy()
    conditions = runs.apply(_condition, axis=1) if len(runs) else pd.Series(dtype=str)
    runs["condition.dataset"] = runs["dataset"]
    runs["condition.name"] = conditions
    rate = runs.get("spec.label_noise.rate")
    runs["condition.noise_rate"] = 0.0 if rate is None else pd.to_numeric(rate).fillna(0.0)
    kind = runs.get("spec.label_noise.kind")
    runs["condition.noise_kind"] = None if kind is None else kind
    runs["dataset"] = [d if not c else f"{d} [{c}]" for d, c in zip(runs["dataset"], conditions,
                                                                     strict=True)]
    return runs


# -- corruption errors relative to softmax ----------------------------------------------------

_SEVERITY_COLUMN = re.compile(r"^evaluation\.corruptions\.(.+)\.s([1-5])\.acc$")


def add_corruption_errors(runs: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """``evaluation.corruptions.mce`` and ``.rel_mce`` of each run against ``baseline``'s
    seed-averaged errors in the same block (NaN where the block has no baseline run)."""
    cells: dict[str, list[str]] = {}
    for column in runs.columns:
        match = _SEVERITY_COLUMN.match(str(column))
        if match:
            cells.setdefault(match.group(1), []).append(column)
    clean = "evaluation.corruptions.clean.acc"
    if not cells or clean not in runs:
        return runs
    runs = runs.copy()
    mce = pd.Series(np.nan, index=runs.index)
    rel = pd.Series(np.nan, index=runs.index)
    done = runs[runs["status"] == "completed"]
    for (dataset, arch), block in runs.groupby(["dataset", "arch"]):
        base = done[(done["dataset"] == dataset) & (done["arch"] == arch)
                    & (done["label"] == baseline)]
        if base.empty:
            continue
        ratios, rel_ratios = [], []
        for columns in cells.values():
            err = 1.0 - block[columns].to_numpy(float)  # runs x severities
            base_err = 1.0 - base[columns].to_numpy(float).mean(axis=0)
            clean_err = 1.0 - block[clean].to_numpy(float)
            base_clean = 1.0 - float(base[clean].mean())
            with np.errstate(divide="ignore", invalid="ignore"):
                ratios.append(err.sum(axis=1) / base_err.sum())
                rel_ratios.append((err - clean_err[:, None]).sum(axis=1)
                                  / (base_err - base_clean).sum())
        with np.errstate(divide="ignore", invalid="ignore"):  # softmax at chance: undefined
            mce[block.index] = np.mean(ratios, axis=0)
            rel[block.index] = np.mean(rel_ratios, axis=0)
    runs["evaluation.corruptions.mce"] = mce
    runs["evaluation.corruptions.rel_mce"] = rel.where(np.isfinite(rel))
    return runs


# -- the multi-criteria summary ---------------------------------------------------------------

@dataclass(frozen=True)
class CriterionSummary:
    """One criterion over the methods: seed-averaged means over the complete blocks, mean
    ranks (1 = best) and the primary analysis's verdict against the control."""

    metric: MetricInfo
    n_blocks: int
    means: dict[str, float]
    mean_ranks: dict[str, float]
    best: str
    primary_analysis: str
    verdict: str


def with_criteria(data: ResultsData) -> ResultsData:
    """The report's view of the results: conditions as blocks (runs and history alike) and the
    corruption errors against softmax (results.csv keeps the records' own columns)."""
    runs = add_corruption_errors(add_conditions(data.runs))
    history = data.history.copy()
    if len(history):
        history["dataset"] = history["run_id"].map(dict(zip(runs["run_id"], runs["dataset"],
                                                            strict=True)))
    return dataclasses.replace(data, runs=runs, history=history)
