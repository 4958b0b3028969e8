"""Criteria beyond accuracy: the probes' values as comparable metrics, training conditions as
blocks, the corruption errors relative to softmax, and the multi-criteria summary.

A probe's value is the column ``evaluation.<probe>.<...>.<kind>`` of the runs table; its last
part, the kind, says what it is and whether higher is better (:data:`KINDS`). ``--metric`` takes
such a column or the short name of a probe's value when one column has it at the fewest dots
(``ece`` for ``evaluation.calibration.ece``; ``auroc`` is ambiguous when both
``evaluation.ood.near.auroc`` and ``evaluation.ood.far.auroc`` were recorded).

Runs trained under another condition (label noise, an open-set split) are other blocks: their
``dataset`` reads e.g. ``fashion-mnist [open 6/10, symmetric noise 0.4]``, and the plain name and
the condition stay in ``condition.*`` columns.

Corruption errors against softmax. This is *not* Hendrycks & Dietterich's mCE, which
normalises by AlexNet's errors over the 15 benchmark corruptions: the baseline here is the loss
named ``softmax`` in the same block (seeds averaged), and the benchmark's corruptions
(frost left out) and the held-out extras are kept apart. With E the error (1 - accuracy) per
corruption c and severity s:

- ``ce_vs_softmax`` = mean_c sum_s E_cs / sum_s E^softmax_cs over the benchmark's corruptions,
  ``extras.ce_vs_softmax`` over the extras;
- ``rel_ce_vs_softmax`` = mean_c sum_s (E_cs - E_clean) / D_c with softmax's error rise
  D_c = sum_s (E^softmax_cs - E^softmax_clean), over the corruptions whose D_c is clearly
  positive: D_c > 2 SE(D_c), the standard error from the spread of softmax's seeds (sd / sqrt(R))
  and from the n test images the seeds share: sum_s |d_s| (1 - |d_s|) / n for the severities'
  mean rises d_s, the variance of a paired difference with the fewest images flipped that give
  it (the records keep accuracies, not each image's outcome, so this is a lower bound of the
  test-set term; without ``evaluation.corruptions.n`` the seeds' spread alone).
  A corruption that barely hurts softmax would divide by noise (a denominator near 0 or below it
  gives ratios of +-1000 %), so it is refused; ``rel_ce_vs_softmax_n`` says how many corruptions
  entered (``ce_vs_softmax_n`` alike) and :func:`corruption_denominators` lists every D_c, its SE
  and whether it entered. A block where none entered has no value.

All are fractions (shown in percent; softmax itself scores 100%).
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
    "corruption_denominators",
    "criterion_metric",
]

BASELINE = "softmax"  # the method the corruption errors are relative to
NOISE_Z = 2.0  # a denominator enters the relative error when it exceeds NOISE_Z standard errors
EVALUATION = "evaluation."

# kind -> (title, unit, scale, higher is better); None: a value, not a criterion
KINDS: dict[str, tuple[str, str, float, bool | None]] = {
    "ece": ("expected calibration error (after temperature scaling)", "%", 100.0, False),
    "ece_raw": ("expected calibration error (T = 1)", "%", 100.0, False),
    "ace": ("AdaECE, equal-count bins (after temperature scaling)", "%", 100.0, False),
    "ace_raw": ("AdaECE, equal-count bins (T = 1)", "%", 100.0, False),
    "cw_ece": ("classwise calibration error (after temperature scaling)", "%", 100.0, False),
    "cw_ece_raw": ("classwise calibration error (T = 1)", "%", 100.0, False),
    "nll": ("negative log-likelihood (after temperature scaling)", "", 1.0, False),
    "nll_raw": ("negative log-likelihood (T = 1)", "", 1.0, False),
    "brier": ("Brier score (after temperature scaling)", "", 1.0, False),
    "brier_raw": ("Brier score (T = 1)", "", 1.0, False),
    "acc": ("accuracy", "%", 100.0, True),
    "mca": ("mean corruption accuracy", "%", 100.0, True),
    "ce_vs_softmax": (
        "corruption error vs softmax (softmax = 100; not Hendrycks's mCE)",
        "%",
        100.0,
        False,
    ),
    "rel_ce_vs_softmax": (
        "relative corruption error vs softmax (softmax = 100; corruptions "
        "whose softmax error rise exceeds 2 SE)",
        "%",
        100.0,
        False,
    ),
    "ce_vs_softmax_n": ("corruptions in the corruption error vs softmax", "", 1.0, None),
    "rel_ce_vs_softmax_n": (
        "corruptions in the relative corruption error vs softmax",
        "",
        1.0,
        None,
    ),
    "n": ("images measured", "", 1.0, None),
    "auroc": ("AUROC (in-distribution positive)", "%", 100.0, True),
    "aupr_in": ("AUPR-in (in-distribution positive, average precision)", "%", 100.0, True),
    "aupr_out": ("AUPR-out (OOD positive, average precision)", "%", 100.0, True),
    "fpr95": ("FPR at 95% TPR (in-distribution positive)", "%", 100.0, False),
    "openood_aupr_in": ("AUPR-in, OpenOOD (trapezoids)", "%", 100.0, True),
    "openood_aupr_out": ("AUPR-out, OpenOOD (trapezoids)", "%", 100.0, True),
    "openood_fpr95": (
        "FPR at 95% TPR, OpenOOD (OOD positive: ID flagged at 95% of OOD caught)",
        "%",
        100.0,
        False,
    ),
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
    "evaluation.ood.near.auroc",
    "evaluation.ood.far.auroc",
    "evaluation.ood.near.fpr95",
    "evaluation.ood.far.fpr95",
    "evaluation.corruptions.mca",
    "evaluation.corruptions.rel_ce_vs_softmax",
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
            known = sorted(
                {
                    c.split(".")[-1]
                    for c in probe_columns
                    if c.split(".")[-1] in KINDS and KINDS[c.split(".")[-1]][3] is not None
                }
            )
            if candidates:
                raise UserError(
                    f"--metric {name!r} is ambiguous: give one of {', '.join(sorted(candidates))}."
                )
            raise UserError(
                f"--metric {name!r} is not recorded by these runs; use final_test_acc, "
                f"best_test_acc, wall_time_s, images_per_s, a geometry.* column"
                + (
                    f", or a probe's value ({', '.join(known)} or a full evaluation.* column)"
                    if known
                    else " (no run recorded probe values: add evaluate: to the suite)"
                )
                + "."
            )
        column = candidates[0]
    kind = column.split(".")[-1]
    if not column.startswith(EVALUATION) or kind not in KINDS or KINDS[kind][3] is None:
        raise UserError(
            f"--metric {name!r}: {column} is a recorded value but not a criterion "
            "with a better direction; choose another metric."
        )
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
    runs["dataset"] = [
        d if not c else f"{d} [{c}]" for d, c in zip(runs["dataset"], conditions, strict=True)
    ]
    return runs


# -- corruption errors relative to softmax ----------------------------------------------------

_SEVERITY_COLUMN = re.compile(r"^evaluation\.corruptions\.(.+)\.s([1-5])\.acc$")
CLEAN = "evaluation.corruptions.clean.acc"
IMAGES = "evaluation.corruptions.n"
# the column prefix of each group of corruptions: the benchmark's and the held-out extras
GROUPS = (("evaluation.corruptions.", True), ("evaluation.corruptions.extras.", False))


def _severity_columns(runs: pd.DataFrame) -> dict[str, list[str]]:
    cells: dict[str, list[str]] = {}
    for column in runs.columns:
        match = _SEVERITY_COLUMN.match(str(column))
        if match:
            cells.setdefault(match.group(1), []).append(str(column))
    return cells


def _is_benchmark(name: str) -> bool:
    from podbench.probes.corruptions import BENCHMARK

    return name in BENCHMARK


def _denominator(base: pd.DataFrame, columns: list[str]) -> tuple[float, float]:
    """Softmax's seed-averaged error rise D = sum_s (E_s - E_clean) and its standard error."""
    err = 1.0 - base[columns].to_numpy(float)  # seeds x severities
    clean = 1.0 - base[CLEAN].to_numpy(float)
    rise = (err - clean[:, None]).sum(axis=1)
    var = float(np.var(rise, ddof=1)) / len(rise) if len(rise) > 1 else 0.0
    n = pd.to_numeric(base[IMAGES], errors="coerce").mean() if IMAGES in base else np.nan
    if np.isfinite(n) and n > 0:
        # the test images, shared by the seeds (not divided by R): each severity's rise d_s is a
        # paired difference on the same images; with the fewest flips that give it (the records
        # keep accuracies, not each image's outcome) its variance is |d_s| (1 - |d_s|) / n
        d = np.abs((err - clean[:, None]).mean(axis=0))
        var += float((d * (1 - d)).sum()) / n
    return float(rise.mean()), var**0.5


def corruption_denominators(runs: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """Per block and corruption: softmax's error rise ``rise`` (D_c), its standard error ``se``,
    ``entered`` (D_c > 2 SE), ``benchmark`` (else an extra) and ``seeds``."""
    rows = []
    cells = _severity_columns(runs)
    if not cells or CLEAN not in runs:
        return pd.DataFrame(
            columns=["dataset", "arch", "corruption", "benchmark", "rise", "se", "entered", "seeds"]
        )
    done = runs[runs["status"] == "completed"]
    for (dataset, arch), block in done.groupby(["dataset", "arch"]):
        base = block[block["label"] == baseline].dropna(subset=[CLEAN])
        if base.empty:
            continue
        for name, columns in cells.items():
            mine = base.dropna(subset=columns)
            if mine.empty:
                continue
            rise, se = _denominator(mine, columns)
            rows.append(
                {
                    "dataset": dataset,
                    "arch": arch,
                    "corruption": name,
                    "benchmark": _is_benchmark(name),
                    "rise": rise,
                    "se": se,
                    "entered": bool(rise > 0 and rise > NOISE_Z * se),
                    "seeds": len(mine),
                }
            )
    return pd.DataFrame(rows)


def _block_errors(
    block: pd.DataFrame, base: pd.DataFrame, cells: dict[str, list[str]], entered: set[str]
) -> dict[str, np.ndarray]:
    """{column: (runs x corruptions) ratios} of one block, NaN where a corruption is out."""
    out: dict[str, np.ndarray] = {}
    clean = 1.0 - block[CLEAN].to_numpy(float)
    for prefix, benchmark in GROUPS:
        names = [n for n in cells if _is_benchmark(n) == benchmark]
        ce = np.full((len(block), len(names)), np.nan)
        rel = np.full((len(block), len(names)), np.nan)
        for j, name in enumerate(names):
            err = 1.0 - block[cells[name]].to_numpy(float)
            base_err = (1.0 - base[cells[name]].to_numpy(float)).mean(axis=0)
            if base_err.sum() > 0:
                ce[:, j] = err.sum(axis=1) / base_err.sum()
            if name in entered:
                base_rise = (base_err - (1.0 - float(base[CLEAN].mean()))).sum()
                rel[:, j] = (err - clean[:, None]).sum(axis=1) / base_rise
        out[prefix + "ce_vs_softmax"], out[prefix + "rel_ce_vs_softmax"] = ce, rel
    return out


def add_corruption_errors(runs: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """``evaluation.corruptions[.extras].ce_vs_softmax`` and ``.rel_ce_vs_softmax`` of each run
    against ``baseline``'s seed-averaged errors in the same block, with the counts of corruptions
    that entered (``..._n``); NaN where the block has no baseline run or no corruption entered."""
    cells = _severity_columns(runs)
    if not cells or CLEAN not in runs:
        return runs
    runs = runs.copy()
    denominators = corruption_denominators(runs, baseline)
    done = runs[runs["status"] == "completed"]
    new = {
        f"{prefix}{kind}": pd.Series(np.nan, index=runs.index)
        for prefix, _ in GROUPS
        for kind in ("ce_vs_softmax", "rel_ce_vs_softmax", "ce_vs_softmax_n", "rel_ce_vs_softmax_n")
    }
    for (dataset, arch), block in runs.groupby(["dataset", "arch"]):
        base = done[
            (done["dataset"] == dataset) & (done["arch"] == arch) & (done["label"] == baseline)
        ]
        if base.empty or denominators.empty:
            continue
        here = denominators[(denominators["dataset"] == dataset) & (denominators["arch"] == arch)]
        entered = set(here.loc[here["entered"], "corruption"])
        for column, values in _block_errors(block, base, cells, entered).items():
            counts = np.isfinite(values).sum(axis=1).astype(float)
            counts[counts == 0] = np.nan  # no corruption entered (or the run has no values)
            new[column][block.index] = np.nansum(values, axis=1) / counts
            new[column + "_n"][block.index] = counts
    for prefix, benchmark in GROUPS:  # the columns of each group that has corruptions
        if any(_is_benchmark(n) == benchmark for n in cells):
            for column in [
                c for c in new if c.startswith(prefix) and c[len(prefix) :].count(".") == 0
            ]:
                runs[column] = new[column]
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
        history["dataset"] = history["run_id"].map(
            dict(zip(runs["run_id"], runs["dataset"], strict=True))
        )
    return dataclasses.replace(data, runs=runs, history=history)
