"""The report's tables as rows of formatted text, shared by the HTML and the LaTeX output."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from podbench.reports.analysis import Analysis, BlockMethodSummary
from podbench.reports.records import TuningStudy

__all__ = [
    "BETTER_MARK",
    "RISING_MARK",
    "WORSE_MARK",
    "comparison_rows",
    "across_power_rows",
    "convergence_rows",
    "dataset_rows",
    "equivalence_rows",
    "excluded_rows",
    "fmt",
    "fmt_p",
    "geometry_rows",
    "improvement_rows",
    "main_table",
    "power_rows",
    "profile_rows",
    "secondary_tables",
    "still_improving_rows",
    "summary_rows",
    "tuning_rows",
    "within_rows",
]

BETTER_MARK, WORSE_MARK = "▲", "▼"
RISING_MARK = "†"  # a run in the cell was still improving when training stopped
Rows = list[dict[str, str]]


def fmt(x: float | None, digits: int = 2) -> str:
    """A number with fixed digits, or an en dash when there is none."""
    return "–" if x is None else f"{x:.{digits}f}"


def fmt_p(p: float | None) -> str:
    """A p-value for a table cell."""
    if p is None:
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _significance_marks(result: Analysis) -> dict[tuple[str, str], str]:
    marks = {}
    for w in result.within_blocks:
        for c in w.comparisons:
            if c.significant:
                marks[(w.block, c.label)] = BETTER_MARK if c.better else WORSE_MARK
    return marks


def _cell_note(c: BlockMethodSummary) -> str:
    """'(n/m)': only n of m runs enter; '(k worst)': k diverged/failed runs at the worst value."""
    notes = []
    if c.n != c.n_runs:
        notes.append(f"({c.n}/{c.n_runs})")
    if any(c.imputed):
        notes.append(f"({sum(c.imputed)} worst)")
    return " ".join(notes)


def main_table(result: Analysis) -> dict[str, Any]:
    """Blocks × methods: mean ± std, best in bold, marks for significance against the control."""
    labels = result.labels
    cells = {(r.block, r.label): r for r in result.per_block}
    marks = _significance_marks(result)
    higher = result.metric.higher_is_better
    rows = []
    for block in result.blocks:
        means = [c.mean for lab in labels if (c := cells.get((block, lab))) and c.mean is not None]
        best = (max(means) if higher else min(means)) if means else None
        if len(means) > 1 and np.allclose(means, means[0], rtol=0, atol=1e-9):
            best = None  # every method ties: none is best
        row_cells = []
        for lab in labels:
            c = cells.get((block, lab))
            if c is None:
                row_cells.append({"text": "not run", "bold": False, "mark": "", "note": ""})
                continue
            text = "–" if c.mean is None else fmt(c.mean)
            if c.std is not None:
                text += f" ± {c.std:.2f}"
            row_cells.append(
                {
                    "text": text + (RISING_MARK if any(c.still_improving) else ""),
                    "bold": c.mean is not None and best is not None and np.isclose(c.mean, best),
                    "mark": marks.get((block, lab), ""),
                    "note": _cell_note(c),
                }
            )
        rows.append({"block": block, "cells": row_cells})
    ranks = result.across_blocks.mean_ranks
    rank_row = None
    if ranks:
        best_rank = min(ranks.values())
        all_tied = len(set(ranks.values())) == 1  # no best mean rank then
        rank_row = [
            {"text": fmt(ranks.get(lab)), "bold": not all_tied and ranks.get(lab) == best_rank}
            for lab in labels
        ]
    return {"labels": labels, "rows": rows, "rank_row": rank_row}


def summary_rows(result: Analysis) -> Rows:
    """Per block and method: runs by status, mean, std and the 95% interval of the mean."""
    return [
        {
            "block": r.block,
            "method": r.label,
            "runs": str(r.n_runs),
            "completed": str(r.n_completed),
            "diverged": str(r.n_diverged),
            "failed": str(r.n_failed),
            "mean": fmt(r.mean),
            "std": fmt(r.std),
            "95% CI": "–" if r.ci_low is None else f"[{r.ci_low:.2f}, {r.ci_high:.2f}]",
        }
        for r in result.per_block
    ]


def comparison_rows(result: Analysis) -> Rows:
    """Across blocks, each method against the control: Wilcoxon, effect sizes, Bayesian test."""
    ctrl = result.control
    bayes = {b.label: b for b in result.across_blocks.bayesian}
    rows = []
    for w in result.across_blocks.wilcoxon:
        b = bayes.get(w.label)
        rows.append(
            {
                "method": w.label,
                f"diff vs {ctrl}": fmt(w.mean_diff),
                "W/T/L": f"{w.wins}/{w.ties}/{w.losses}",
                "Wilcoxon p": fmt_p(w.p),
                "Holm p": fmt_p(w.p_holm),
                "lowest attainable Holm p": fmt(w.min_p_holm, 3) if w.p is not None else "–",
                "rank-biserial": fmt(w.rank_biserial),
                "Cohen's dz": fmt(w.cohens_dz),
                "mass better": fmt(None if b is None else b.mass_other_better, 3),
                "mass in ROPE": fmt(None if b is None else b.mass_equivalent, 3),
                f"mass {ctrl} better": fmt(None if b is None else b.mass_control_better, 3),
                "P(ROPE most probable)": fmt(None if b is None else b.p_equivalent, 3),
            }
        )
    return rows


def equivalence_rows(result: Analysis) -> Rows:
    """Across blocks, each method against the control: TOST with its 90% interval."""
    ctrl = result.control
    return [
        {
            "method": e.label,
            f"diff vs {ctrl}": fmt(e.test.mean_diff),
            "bounds": f"±{e.test.bound:g}",
            f"{100 * e.test.confidence:g}% CI": "–"
            if e.test.ci_low is None
            else f"[{e.test.ci_low:+.2f}, {e.test.ci_high:+.2f}]",
            "TOST p": fmt_p(e.test.p),
            "equivalent": "yes" if e.test.equivalent else "no",
        }
        for e in result.across_blocks.equivalence
    ]


def across_power_rows(result: Analysis) -> Rows:
    """Per method: sd of its block differences and the across-block test's power."""
    pw = result.across_blocks.power
    if pw is None:
        return []
    return [
        {
            "method": c.label,
            "sd of block diffs": fmt(c.sd),
            **{f"power for {d}": fmt(v, 3) for d, v in c.power.items()},
        }
        for c in pw.comparisons
    ]


def dataset_rows(result: Analysis) -> Rows:
    """Over datasets (the blocks of each dataset averaged), each method against the control."""
    lev, ctrl = result.across_blocks.by_dataset, result.control
    if lev is None:
        return []
    return [
        {
            "method": w.label,
            "datasets": str(w.n_blocks),
            f"diff vs {ctrl}": fmt(w.mean_diff),
            "W/T/L": f"{w.wins}/{w.ties}/{w.losses}",
            "mean rank": fmt(lev.mean_ranks.get(w.label)),
            "Holm p": fmt_p(w.p_holm),
            "lowest attainable Holm p": fmt(w.min_p_holm, 3) if w.p is not None else "–",
        }
        for w in lev.wilcoxon
    ]


def within_rows(result: Analysis) -> Rows:
    """Within each block, each method's seeds against the control's (Welch, Holm)."""
    ctrl = result.control
    return [
        {
            "block": w.block,
            "method": c.label,
            "seeds": f"{c.n} vs {c.n_control}",
            f"diff vs {ctrl}": fmt(c.mean_diff),
            "Welch t": fmt(c.t, 3),
            "df": fmt(c.df, 1),
            "p": fmt_p(c.p),
            "Holm p": fmt_p(c.p_holm),
            "Cohen's d": fmt(c.cohens_d),
            "Cliff's delta": fmt(c.cliffs_delta),
            "note": c.note or "",
        }
        for w in result.within_blocks
        for c in w.comparisons
    ]


def excluded_rows(result: Analysis) -> Rows:
    """The runs that did not enter the statistics, with their error."""
    return [
        {
            "block": e.block,
            "method": e.label,
            "seed": str(e.seed),
            "status": e.status,
            "epoch": "–" if e.error_epoch is None else str(e.error_epoch),
            "error": f"{e.error_type or ''}: {e.error_message or ''}".strip(": ") or e.reason,
        }
        for e in result.excluded_runs
    ]


def _never(x: float | None, digits: int) -> str:
    return "never" if x is None else fmt(x, digits)


def convergence_rows(result: Analysis) -> Rows:
    """Per block and method: the target, runs reaching it, median epochs and seconds to it."""
    conv = result.convergence
    targets = {t.block: t for t in conv.targets}
    return [
        {
            "block": m.block,
            "method": m.label,
            "target (%)": fmt(targets[m.block].target),
            "reached": f"{m.n_reached}/{m.n_runs}",
            "epochs": _never(m.epochs, 1),
            "seconds": _never(m.seconds, 1) if m.seconds_recorded else "–",
            "ratio (epochs)": _never(m.ratio_epochs, 2),
            "ratio (seconds)": _never(m.ratio_seconds, 2) if m.seconds_recorded else "–",
        }
        for m in conv.methods
    ]


def profile_rows(result: Analysis) -> Rows:
    """Per method: benchmark score and share of blocks where it was fastest, per measure."""
    rows: dict[str, dict[str, str]] = {}
    for p in result.convergence.profiles:
        row = rows.setdefault(p.label, {"method": p.label})
        row[f"score ({p.measure})"] = fmt(p.score, 3)
        row[f"fastest ({p.measure})"] = fmt(p.fastest_share, 2)
    return list(rows.values())


def improvement_rows(result: Analysis) -> Rows:
    """Per method: IQM with its interval, and P(method > control) with its interval."""
    boot, ctrl = result.bootstrap, result.control
    improvement = {i.label: i for i in boot.improvement}
    rows = []
    for q in boot.iqm:
        i = improvement.get(q.label)
        rows.append(
            {
                "method": q.label,
                "runs": str(q.n_runs),
                "IQM (normalised)": fmt(q.estimate, 3),
                "IQM 95% CI": f"[{q.ci_low:.3f}, {q.ci_high:.3f}]",
                f"P(method > {ctrl})": "–" if i is None else fmt(i.estimate, 3),
                "P 95% CI": "–" if i is None else f"[{i.ci_low:.3f}, {i.ci_high:.3f}]",
                "resampled": q.resampling if i is None else f"{q.resampling} / {i.resampling}",
            }
        )
    return rows


def power_rows(result: Analysis) -> Rows:
    """Per block: seed standard deviation, seeds run, seeds needed and detectable difference."""
    pw = result.seed_power
    return [
        {
            "block": b.block,
            "seed sd": fmt(b.sd),
            "seeds run": str(b.seeds_run),
            f"seeds needed for {pw.difference:g}": "–"
            if b.seeds_needed is None
            else str(b.seeds_needed),
            "detectable with seeds run": fmt(b.min_detectable),
        }
        for b in pw.blocks
    ]


def still_improving_rows(result: Analysis) -> Rows:
    """The runs that were still improving when training stopped."""
    return [
        {"block": s.block, "method": s.label, "seed": str(seed)}
        for s in result.per_block
        for seed, rising in zip(s.value_seeds, s.still_improving, strict=True)
        if rising
    ]


def geometry_rows(result: Analysis) -> Rows:
    """Per block and method: the mean latent-geometry statistics."""
    return [
        {
            "block": g.block,
            "method": g.label,
            **{k.replace("_", " "): fmt(v, 3) for k, v in g.means.items()},
        }
        for g in result.geometry
    ]


def _best_settings(best: pd.Series, params: list[str]) -> str:
    return ", ".join(
        f"{c[len('params_') :]}={best[c]:.4g}"
        if isinstance(best[c], float)
        else f"{c[len('params_') :]}={best[c]}"
        for c in params
        if pd.notna(best[c])
    )


def tuning_rows(studies: list[TuningStudy]) -> Rows:
    """Per study and loss: trials by state and the best completed trial's value and settings."""
    rows = []
    for study in studies:
        trials = study.trials
        if trials is None or trials.empty or "value" not in trials:
            continue
        if "loss" not in trials:
            trials = trials.assign(loss=study.name)
        for loss, g in trials.groupby(trials["loss"].astype(str), sort=True):
            states = g["state"].astype(str).str.upper() if "state" in g else None
            done = g[states == "COMPLETE"] if states is not None else g
            done = done.dropna(subset=["value"])
            best = done.loc[done["value"].idxmax()] if not done.empty else None
            params = [c for c in g.columns if str(c).startswith("params_")]
            rows.append(
                {
                    "study": study.name,
                    "loss": loss,
                    "trials": str(len(g)),
                    "complete": str(len(done)),
                    "pruned": str(int((states == "PRUNED").sum())) if states is not None else "–",
                    "failed": str(int((states == "FAIL").sum())) if states is not None else "–",
                    "best value": fmt(None if best is None else float(best["value"]), 4),
                    "best settings": "–" if best is None else _best_settings(best, params),
                }
            )
    return rows


def secondary_tables(result: Analysis, studies: list[TuningStudy]) -> dict[str, Rows]:
    """Every table of the report other than the main one, by name."""
    return {
        "comparisons": comparison_rows(result),
        "tuning": tuning_rows(studies),
        "summary": summary_rows(result),
        "within": within_rows(result),
        "excluded": excluded_rows(result),
        "convergence": convergence_rows(result),
        "profiles": profile_rows(result),
        "improvement": improvement_rows(result),
        "equivalence": equivalence_rows(result),
        "across_power": across_power_rows(result),
        "datasets": dataset_rows(result),
        "power": power_rows(result),
        "still_improving": still_improving_rows(result),
        "geometry": geometry_rows(result),
    }
