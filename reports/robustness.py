"""The report's sections beyond accuracy: the multi-criteria summary and its figures.

Every criterion gets the statistics accuracy gets (:mod:`podbench.reports.analysis`: blocks with
seeds averaged, mean ranks, the tests across or within blocks against the control). Figures:
reliability diagrams, ROC curves of the OOD sets, accuracy against corruption severity and
accuracy against the label-noise rate. All read the runs table only.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from podbench.reports import figures as figs
from podbench.reports.analysis import (
    across_blocks,
    block_table,
    choose_primary,
    per_block,
    within_blocks,
)
from podbench.reports.criteria import (
    SUMMARY_CRITERIA,
    CriterionSummary,
    corruption_denominators,
    criterion_metric,
)
from podbench.reports.observations import FailedPolicy, observations
from podbench.reports.records import METRICS, MetricInfo, ResultsData
from podbench.reports.stats import mean_ranks
from podbench.reports.tables import fmt

__all__ = [
    "criteria_rows",
    "denominators_note",
    "criteria_summary",
    "noise_figure",
    "reliability_figure",
    "roc_figure",
    "robustness_figures",
    "severity_figure",
]


def _verdict(
    obs: Any, table: Any, control: str, alpha: float, rope: float, metric: MetricInfo
) -> tuple[str, str]:
    """(primary analysis, one sentence of its outcome against the control)."""
    basis = choose_primary(table, control, alpha)
    if basis.analysis == "across-blocks":
        across = across_blocks(table, control, alpha, rope, metric.higher_is_better)
        better = [w.label for w in across.wilcoxon if w.significant and w.better]
        worse = [w.label for w in across.wilcoxon if w.significant and not w.better]
    else:
        pairs = [
            (w.block, c)
            for w in within_blocks(obs, per_block(obs), control, alpha)
            for c in w.comparisons
        ]
        better = [f"{c.label} ({b})" for b, c in pairs if c.significant and c.better]
        worse = [f"{c.label} ({b})" for b, c in pairs if c.significant and not c.better]
    test = (
        "Wilcoxon–Holm across blocks"
        if basis.analysis == "across-blocks"
        else "Welch–Holm within blocks"
    )
    parts = []
    if better:
        parts.append(f"significantly better than {control}: {', '.join(better)}")
    if worse:
        parts.append(f"significantly worse than {control}: {', '.join(worse)}")
    if not parts:
        parts.append(f"no method differs significantly from {control}")
    return basis.analysis, f"{'; '.join(parts)} ({test}, α = {alpha:g})"


def criteria_summary(
    data: ResultsData, control: str, *, alpha: float, rope: float, failed: FailedPolicy
) -> list[CriterionSummary]:
    """One :class:`CriterionSummary` per criterion of :data:`SUMMARY_CRITERIA` the runs recorded
    (only when some run recorded a probe value: accuracy alone is the main report)."""
    columns = set(data.runs.columns)
    if not any(c.startswith("evaluation.") for c in columns):
        return []
    out = []
    for name in SUMMARY_CRITERIA:
        if name not in columns or data.runs[name].notna().sum() == 0:
            continue
        metric = METRICS[name] if name in METRICS else criterion_metric(name, columns)
        obs = observations(data, metric, control, failed)
        table = block_table(obs, control, alpha)
        if table.means.empty:
            continue
        oriented = table.means * (1.0 if metric.higher_is_better else -1.0)
        ranks = mean_ranks(oriented, higher_is_better=True)
        primary, verdict = _verdict(obs, table, control, alpha, rope, metric)
        if name.endswith(".rel_ce_vs_softmax"):
            verdict += denominators_note(
                data.runs, benchmark=not name.endswith(".extras.rel_ce_vs_softmax")
            )
        means = table.means.mean(axis=0)
        out.append(
            CriterionSummary(
                metric=metric,
                n_blocks=len(table.means),
                means={lab: float(v) for lab, v in means.items()},
                mean_ranks={lab: float(v) for lab, v in ranks.items()},
                best=str(ranks.idxmin()),
                primary_analysis=primary,
                verdict=verdict,
            )
        )
    return out


def denominators_note(runs: pd.DataFrame, benchmark: bool = True) -> str:
    """Which corruptions entered the relative corruption error, per block, and the refused ones
    with softmax's error rise D +- SE (points summed over severities)."""
    table = corruption_denominators(runs)
    if table.empty:
        return ""
    table = table[table["benchmark"] == benchmark]
    parts = []
    for (dataset, arch), block in table.groupby(["dataset", "arch"]):
        refused = [
            f"{r.corruption} (D = {100 * r.rise:.2f} ± {100 * r.se:.2f})"
            for r in block.itertuples()
            if not r.entered
        ]
        part = f"{dataset} / {arch}: {int(block['entered'].sum())} of {len(block)} corruptions"
        parts.append(part + (f", refused {', '.join(refused)}" if refused else ""))
    return (
        ("; corruptions entered (softmax's error rise D > 2 SE, points): " + "; ".join(parts))
        if parts
        else ""
    )


def criteria_rows(summary: list[CriterionSummary], labels: list[str]) -> list[dict[str, str]]:
    """Methods x criteria: the mean over complete blocks (seeds averaged) and the mean rank."""
    rows = []
    for lab in labels:
        if not any(lab in s.means for s in summary):
            continue
        row = {"method": lab}
        for s in summary:
            arrow = "↑" if s.metric.higher_is_better else "↓"
            key = f"{s.metric.title} {arrow}"
            row[key] = (
                f"{fmt(s.means[lab])} (rank {s.mean_ranks[lab]:.2f})" if lab in s.means else "–"
            )
        rows.append(row)
    return rows


# -- figures ----------------------------------------------------------------------------------


def _completed(data: ResultsData, column_prefix: str) -> pd.DataFrame:
    runs = data.runs
    cols = [c for c in runs.columns if str(c).startswith(column_prefix)]
    if not cols:
        return runs.iloc[0:0]
    return runs[(runs["status"] == "completed") & runs[cols].notna().any(axis=1)]


def _first_block(runs: pd.DataFrame) -> tuple[str, str]:
    """The block a one-block figure shows: the cleanest condition (lowest noise rate) first."""
    rate = runs.get("condition.noise_rate", pd.Series(0.0, index=runs.index)).fillna(0.0)
    keys = sorted(zip(rate, runs["dataset"], runs["arch"], strict=True))
    return keys[0][1], keys[0][2]


def reliability_figure(data: ResultsData, labels: list[str]) -> Figure | None:
    """Per method: accuracy against confidence per bin, pooled over the method's runs in the
    first block with calibration values, after temperature scaling (bars) and at T = 1 (line)."""
    runs = _completed(data, "evaluation.calibration.reliability.")
    if runs.empty:
        return None
    dataset, arch = _first_block(runs)
    runs = runs[(runs["dataset"] == dataset) & (runs["arch"] == arch)]
    bins = sorted(
        {
            int(m.group(1))
            for c in runs.columns
            if (m := re.match(r"evaluation\.calibration\.reliability\.(\d+)\.share$", str(c)))
        }
    )
    shown = [lab for lab in labels if lab in set(runs["label"])]
    fig, axes = figs._grid(len(shown), 3.4, 3.2)
    edges = np.linspace(0, 1, len(bins) + 1)
    for ax, lab in zip(axes.flat, shown, strict=False):
        mine = runs[runs["label"] == lab]
        for suffix, style in (("", "bars"), ("_raw", "line")):
            base = f"evaluation.calibration.reliability{suffix}"
            share = np.array(
                [mine[f"{base}.{m:02d}.share"].fillna(0).to_numpy(float) for m in bins]
            )
            acc = np.array([mine[f"{base}.{m:02d}.acc"].fillna(0).to_numpy(float) for m in bins])
            pooled = (share * acc).sum(axis=1) / np.where(
                share.sum(axis=1) > 0, share.sum(axis=1), np.nan
            )
            if style == "bars":
                ax.bar(
                    edges[:-1],
                    np.nan_to_num(pooled),
                    width=np.diff(edges),
                    align="edge",
                    alpha=0.6,
                    edgecolor="black",
                    linewidth=0.4,
                    label="after TS",
                )
            else:
                centres = (edges[:-1] + edges[1:]) / 2
                ax.plot(centres, pooled, "o-", markersize=3, color="crimson", label="T = 1")
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
        ece = mine.get("evaluation.calibration.ece")
        title = lab if ece is None else f"{lab} (ECE {100 * float(ece.mean()):.1f}%)"
        ax.set(title=title, xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    axes.flat[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Reliability diagrams, {dataset} / {arch}", fontsize=10)
    fig.tight_layout()
    return fig


def roc_figure(data: ResultsData, labels: list[str]) -> Figure | None:
    """One panel per OOD set (first block with them): the mean ROC curve of each method."""
    pattern = re.compile(r"^evaluation\.ood\.(.+)\.([a-z-]+)\.roc\.tpr_at_fpr(\d{3})$")
    runs = _completed(data, "evaluation.ood.")
    found: dict[tuple[str, str], list[tuple[float, str]]] = {}
    for c in runs.columns:
        m = pattern.match(str(c))
        if m:
            found.setdefault((m.group(1), m.group(2)), []).append((int(m.group(3)) / 100, str(c)))
    if runs.empty or not found:
        return None
    dataset, arch = _first_block(runs)
    runs = runs[(runs["dataset"] == dataset) & (runs["arch"] == arch)]
    palette = figs._palette(labels)
    fig, axes = figs._grid(len(found), 3.6, 3.3)
    for ax, ((ood, score), points) in zip(axes.flat, sorted(found.items()), strict=False):
        points.sort()
        fpr = [p for p, _ in points]
        for lab in labels:
            mine = runs[runs["label"] == lab]
            if mine.empty:
                continue
            tpr = mine[[c for _, c in points]].mean(axis=0).to_numpy(float)
            auroc = mine.get(f"evaluation.ood.{ood}.{score}.auroc")
            name = lab if auroc is None else f"{lab} ({100 * float(auroc.mean()):.1f})"
            ax.plot(fpr, tpr, "-", color=palette[lab], label=name)
        ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=0.8)
        ax.set(
            title=f"{ood} ({score})",
            xlabel="FPR (OOD accepted)",
            ylabel="TPR (in-distribution accepted)",
            xlim=(0, 1),
            ylim=(0, 1.01),
        )
        ax.legend(fontsize=6, title="method (AUROC %)", title_fontsize=6, loc="lower right")
    fig.suptitle(f"ROC curves, in-distribution positive, {dataset} / {arch}", fontsize=10)
    fig.tight_layout()
    return fig


def severity_figure(data: ResultsData, labels: list[str]) -> Figure | None:
    """Per block: accuracy averaged over the corruptions against severity (0 = clean)."""
    pattern = re.compile(r"^evaluation\.corruptions\.(.+)\.s([1-5])\.acc$")
    runs = _completed(data, "evaluation.corruptions.")
    by_severity: dict[int, list[str]] = {}
    for c in runs.columns:
        m = pattern.match(str(c))
        if m:
            by_severity.setdefault(int(m.group(2)), []).append(str(c))
    if runs.empty or not by_severity:
        return None
    blocks = sorted(set(zip(runs["dataset"], runs["arch"], strict=True)))
    palette = figs._palette(labels)
    fig, axes = figs._grid(len(blocks), 4.2, 3.2)
    severities = sorted(by_severity)
    for ax, (dataset, arch) in zip(axes.flat, blocks, strict=False):
        here = runs[(runs["dataset"] == dataset) & (runs["arch"] == arch)]
        for lab in labels:
            mine = here[here["label"] == lab]
            if mine.empty:
                continue
            ys = [100 * float(mine["evaluation.corruptions.clean.acc"].mean())]
            ys += [100 * float(mine[by_severity[s]].mean(axis=1).mean()) for s in severities]
            ax.plot([0, *severities], ys, "o-", markersize=3, color=palette[lab], label=lab)
        ax.set(
            title=f"{dataset} / {arch}",
            xlabel="severity (0 = clean)",
            ylabel="accuracy over corruptions (%)",
        )
    figs._legend_outside(axes.flat[min(len(blocks), axes.size) - 1], "method")
    fig.tight_layout()
    return fig


def noise_figure(data: ResultsData, labels: list[str]) -> Figure | None:
    """Clean test accuracy against the label-noise rate, per plain dataset, architecture and
    noise kind (rate 0: the clean runs of the same condition otherwise)."""
    runs = data.runs
    if "condition.noise_rate" not in runs or not (runs["condition.noise_rate"] > 0).any():
        return None
    runs = runs[(runs["status"] == "completed") & runs["final_test_acc"].notna()].copy()
    runs["condition.without_noise"] = [
        re.sub(r"(, )?\w+ noise [0-9.e-]+", "", str(c)) for c in runs["condition.name"]
    ]
    groups = []
    for (dataset, arch, rest), here in runs.groupby(
        ["condition.dataset", "arch", "condition.without_noise"]
    ):
        for kind in sorted(here["condition.noise_kind"].dropna().unique()):
            sel = here[(here["condition.noise_kind"] == kind) | (here["condition.noise_rate"] == 0)]
            groups.append((f"{dataset}{f' [{rest}]' if rest else ''} / {arch}, {kind}", sel))
    if not groups:
        return None
    palette = figs._palette(labels)
    fig, axes = figs._grid(len(groups), 4.2, 3.2)
    for ax, (title, sel) in zip(axes.flat, groups, strict=False):
        for lab in labels:
            mine = sel[sel["label"] == lab]
            if mine.empty:
                continue
            curve = mine.groupby("condition.noise_rate")["final_test_acc"].mean() * 100
            ax.plot(
                curve.index, curve.to_numpy(), "o-", markersize=3, color=palette[lab], label=lab
            )
        ax.set(title=title, xlabel="label-noise rate", ylabel="clean test accuracy (%)")
    figs._legend_outside(axes.flat[len(groups) - 1], "method")
    fig.tight_layout()
    return fig


def robustness_figures(data: ResultsData, labels: list[str]) -> list[tuple[str, str, Any]]:
    """(file name, title, figure or None) of the figures beyond accuracy."""
    return [
        ("reliability", "Reliability diagrams (calibration)", reliability_figure(data, labels)),
        ("roc", "ROC curves of open-set and far-OOD detection", roc_figure(data, labels)),
        (
            "corruption_severity",
            "Accuracy against corruption severity",
            severity_figure(data, labels),
        ),
        (
            "label_noise",
            "Clean test accuracy against the label-noise rate",
            noise_figure(data, labels),
        ),
    ]
