"""From run records to every statistic of the report, in small typed steps.

The unit of comparison is a (dataset, architecture) block with the seeds averaged first (Demšar
2006). Steps: which runs enter (:func:`observations`), per block and method
(:func:`per_block`), seeds within each block (:func:`within_blocks`), the blocks × methods table
and which analysis it supports (:func:`block_table`, :func:`choose_primary`), the tests across
blocks (:func:`across_blocks`), convergence and latent geometry. :func:`analyse` runs them all
and returns one :class:`Analysis`, which build.py writes as stats.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
import scikit_posthocs as sp

from podbench.reports.records import GEOMETRY_KEYS, MetricInfo, ResultsData
from podbench.reports.stats import (
    BAYES_SAMPLES,
    BAYES_SEED,
    Friedman,
    SeedComparison,
    SignedRankComparison,
    bayesian_signed_rank,
    describe,
    epochs_to_fraction,
    friedman_iman_davenport,
    mean_ranks,
    nemenyi_critical_difference,
    welch_vs_control,
    wilcoxon_vs_control,
)

__all__ = [
    "MIN_BLOCKS",
    "AcrossBlocks",
    "Analysis",
    "BlockTable",
    "Observations",
    "PrimaryBasis",
    "across_blocks",
    "analyse",
    "block_table",
    "choose_primary",
    "convergence",
    "geometry",
    "observations",
    "per_block",
    "within_blocks",
]

# Demšar (2006): with fewer data sets the Friedman/Wilcoxon p-values cannot reach usual levels.
MIN_BLOCKS = 5
WELCH_TEST = "Welch's t-test (two-sided) against the control, Holm within the block"


def block_key(dataset: str, arch: str) -> str:
    """The name of a (dataset, architecture) block."""
    return f"{dataset} / {arch}"


@dataclass(frozen=True)
class ExcludedRun:
    """A run that does not enter the statistics, and why."""

    run_id: str
    label: str
    block: str
    seed: int
    status: str
    error_type: str | None
    error_message: str | None
    error_epoch: int | None
    reason: str


@dataclass
class Observations:
    """The runs of a results directory with their block and the compared value (not written)."""

    runs: pd.DataFrame  # every run, every status
    used: pd.DataFrame  # the runs that enter the statistics, with a ``value`` column
    labels: list[str]  # the control first, then the others sorted
    blocks: list[tuple[str, str]]
    metric: MetricInfo
    excluded: list[ExcludedRun]


def observations(data: ResultsData, metric: MetricInfo, control: str) -> Observations:
    """Which runs enter the statistics: completed runs that recorded the metric, scaled.

    Runs that did not complete (or completed without the metric) are listed, never dropped.
    """
    runs = data.runs
    labels = sorted(runs["label"].unique())
    if control in labels:
        labels = [control] + [lab for lab in labels if lab != control]
    blocks = sorted({(d, a) for d, a in zip(runs["dataset"], runs["arch"], strict=True)})
    used = runs[(runs["status"] == "completed") & runs[metric.name].notna()].copy()
    used["value"] = used[metric.name] * metric.scale
    excluded = [
        ExcludedRun(
            run_id=r.run_id,
            label=r.label,
            block=block_key(r.dataset, r.arch),
            seed=int(r.seed),
            status=r.status,
            error_type=r.error_type,
            error_message=r.error_message,
            error_epoch=None if pd.isna(r.error_epoch) else int(r.error_epoch),
            reason=f"run {r.status}" if r.status != "completed" else f"no {metric.name} recorded",
        )
        # the record's error.type column is error_type here (itertuples needs identifiers)
        for r in runs[~runs.index.isin(used.index)]
        .rename(columns=lambda c: c.replace(".", "_"))
        .itertuples()
    ]
    return Observations(runs, used, labels, blocks, metric, excluded)


@dataclass(frozen=True)
class BlockMethodSummary:
    """One method in one block: its runs by status and the values that enter, summarised."""

    dataset: str
    arch: str
    block: str
    label: str
    n_runs: int
    n_completed: int
    n_diverged: int
    n_failed: int
    seeds: list[int]
    values: list[float]
    n: int
    mean: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None


def _block_values(obs: Observations, dataset: str, arch: str, label: str) -> list[float]:
    used = obs.used
    here = used[(used["dataset"] == dataset) & (used["arch"] == arch) & (used["label"] == label)]
    return [float(v) for v in here.sort_values("seed")["value"]]


def per_block(obs: Observations) -> list[BlockMethodSummary]:
    """Per block and method that has runs there: counts by status and the summary of values."""
    out = []
    runs = obs.runs
    for dataset, arch in obs.blocks:
        in_block = runs[(runs["dataset"] == dataset) & (runs["arch"] == arch)]
        for label in obs.labels:
            lab_runs = in_block[in_block["label"] == label]
            if lab_runs.empty:
                continue
            vals = _block_values(obs, dataset, arch, label)
            status = lab_runs["status"]
            out.append(
                BlockMethodSummary(
                    dataset=dataset,
                    arch=arch,
                    block=block_key(dataset, arch),
                    label=label,
                    n_runs=int(len(lab_runs)),
                    n_completed=int((status == "completed").sum()),
                    n_diverged=int((status == "diverged").sum()),
                    n_failed=int((status == "failed").sum()),
                    seeds=sorted(int(s) for s in lab_runs["seed"]),
                    values=vals,
                    **vars(describe(vals)),
                )
            )
    return out


@dataclass(frozen=True)
class WithinBlock:
    """The seeds of each method against the control's in one block."""

    block: str
    dataset: str
    arch: str
    test: str
    comparisons: list[SeedComparison]
    note: str | None


def within_blocks(obs: Observations, control: str, alpha: float) -> list[WithinBlock]:
    """Welch's t-test of every method against the control in every block, Holm per block."""
    summaries = per_block(obs)
    out = []
    for dataset, arch in obs.blocks:
        key = block_key(dataset, arch)
        family = {s.label: s.values for s in summaries if s.block == key and s.values}
        note = None
        comps: list[SeedComparison] = []
        if control not in family:
            note = f"the control {control!r} has no completed run in this block"
        elif len(family) < 2:
            note = "only the control has completed runs in this block"
        else:
            comps = welch_vs_control(
                family, control, alpha, higher_is_better=obs.metric.higher_is_better
            )
        out.append(WithinBlock(key, dataset, arch, WELCH_TEST, comps, note))
    return out


@dataclass(frozen=True)
class IncompleteBlock:
    """A block left out of the tests across blocks, and the methods it lacks."""

    block: str
    missing: list[str]


@dataclass(frozen=True)
class MethodLeftOut:
    """A method left out of the tests across blocks, and where it has no value."""

    label: str
    blocks_without_completed_run: list[str]


@dataclass
class BlockTable:
    """Blocks × methods of block means that Demšar's tests need (complete, no gaps)."""

    means: pd.DataFrame  # index (dataset, arch), columns: methods in label order
    incomplete_blocks: list[IncompleteBlock]
    methods_left_out: list[MethodLeftOut]


def block_table(obs: Observations, control: str) -> BlockTable:
    """Seeds averaged per block; incomplete blocks dropped if enough remain, else the methods
    missing somewhere (both choices are reported, never silent)."""
    labels, blocks = obs.labels, obs.blocks
    means = obs.used.groupby(["dataset", "arch", "label"])["value"].mean().unstack("label")
    means = means.reindex(columns=[lab for lab in labels if lab in means.columns])
    complete = means.dropna(axis=0, how="any")
    dropped: list[str] = []
    if len(complete) < MIN_BLOCKS:
        by_method = means.dropna(axis=1, how="any")
        if len(by_method) >= MIN_BLOCKS and by_method.shape[1] >= 2 and control in by_method:
            dropped = [lab for lab in means.columns if lab not in by_method.columns]
            complete = by_method

    def has_value(block: tuple[str, str], lab: str) -> bool:
        return block in means.index and lab in means.columns and pd.notna(means.loc[block, lab])

    incomplete = [
        IncompleteBlock(block_key(*b), [lab for lab in labels if not has_value(b, lab)])
        for b in blocks
        if b not in complete.index
    ]
    left_out = [
        MethodLeftOut(lab, [block_key(*b) for b in blocks if not has_value(b, lab)])
        for lab in dropped
    ]
    methods = [lab for lab in labels if lab in complete.columns]
    return BlockTable(complete[methods], incomplete, left_out)


@dataclass(frozen=True)
class PrimaryBasis:
    """Which analysis is primary and the facts that decided it (the report words them)."""

    analysis: Literal["across-blocks", "within-blocks"]
    why: Literal["enough-blocks", "control-missing", "too-few-methods", "too-few-blocks"]
    n_blocks: int
    min_blocks: int


def choose_primary(table: BlockTable, control: str) -> PrimaryBasis:
    """Across blocks when enough complete blocks hold the control and another method."""
    n, k = table.means.shape
    if control not in table.means.columns:
        return PrimaryBasis("within-blocks", "control-missing", n, MIN_BLOCKS)
    if k < 2:
        return PrimaryBasis("within-blocks", "too-few-methods", n, MIN_BLOCKS)
    if n < MIN_BLOCKS:
        return PrimaryBasis("within-blocks", "too-few-blocks", n, MIN_BLOCKS)
    return PrimaryBasis("across-blocks", "enough-blocks", n, MIN_BLOCKS)


@dataclass(frozen=True)
class Nemenyi:
    """Nemenyi's post-hoc test: critical difference and pairwise p-values."""

    q_alpha: float
    cd: float
    alpha: float
    p_values: dict[str, dict[str, float]]


@dataclass(frozen=True)
class BayesianComparison:
    """The Bayesian signed-rank posterior of one method against the control."""

    label: str
    rope: float
    p_control_better: float
    p_equivalent: float
    p_other_better: float


@dataclass
class AcrossBlocks:
    """The blocks × methods table and, when it is the primary analysis, the tests over it."""

    n_blocks: int
    k_methods: int
    methods: list[str]
    blocks: list[str]
    block_means: dict[str, dict[str, float]]
    incomplete_blocks: list[IncompleteBlock]
    methods_left_out: list[MethodLeftOut]
    friedman: Friedman | None = None
    mean_ranks: dict[str, float] | None = None
    nemenyi: Nemenyi | None = None
    wilcoxon: list[SignedRankComparison] = field(default_factory=list)
    bayesian: list[BayesianComparison] = field(default_factory=list)


def describe_table(table: BlockTable) -> AcrossBlocks:
    """The table across blocks without any test (when the analysis is within blocks)."""
    means = table.means
    methods = list(means.columns)
    return AcrossBlocks(
        n_blocks=len(means),
        k_methods=len(methods),
        methods=methods,
        blocks=[block_key(*b) for b in means.index],
        block_means={
            block_key(*b): {lab: float(means.loc[b, lab]) for lab in methods} for b in means.index
        },
        incomplete_blocks=table.incomplete_blocks,
        methods_left_out=table.methods_left_out,
    )


def _nemenyi(oriented: pd.DataFrame, alpha: float) -> Nemenyi:
    methods = list(oriented.columns)
    cd = nemenyi_critical_difference(len(methods), len(oriented), alpha)
    pmat = sp.posthoc_nemenyi_friedman(oriented.to_numpy(float))
    pmat.index = pmat.columns = methods
    p_values = {a: {b: float(pmat.loc[a, b]) for b in methods} for a in methods}
    return Nemenyi(cd.q_alpha, cd.cd, alpha, p_values)


def across_blocks(
    table: BlockTable, control: str, alpha: float, rope: float, higher_is_better: bool
) -> AcrossBlocks:
    """Mean ranks, Friedman/Iman–Davenport and Nemenyi (k ≥ 3), Wilcoxon–Holm and the Bayesian
    signed-rank test of every method against the control, over the complete blocks."""
    out = describe_table(table)
    oriented = table.means * (1.0 if higher_is_better else -1.0)
    ranks = mean_ranks(oriented, higher_is_better=True)
    out.mean_ranks = {lab: float(ranks[lab]) for lab in out.methods}
    if out.k_methods >= 3:
        out.friedman = friedman_iman_davenport(oriented)
        out.nemenyi = _nemenyi(oriented, alpha)
    out.wilcoxon = wilcoxon_vs_control(
        table.means, control, alpha, higher_is_better=higher_is_better
    )
    for lab in out.methods:
        if lab != control:
            post = bayesian_signed_rank(oriented[control], oriented[lab], rope)
            out.bayesian.append(BayesianComparison(lab, rope, **vars(post)))
    return out


@dataclass(frozen=True)
class ConvergenceRun:
    """Epochs a run needed to reach 95% of its own final test accuracy."""

    run_id: str
    label: str
    block: str
    seed: int
    epochs_to_95pct: int | None
    epochs: int


def convergence(data: ResultsData, obs: Observations) -> list[ConvergenceRun]:
    """Per used run with a history: epochs to 95% of its final test accuracy."""
    hist = data.history
    order = {lab: i for i, lab in enumerate(obs.labels)}
    used = obs.used.assign(_order=obs.used["label"].map(order)).sort_values(
        ["dataset", "arch", "_order", "seed"]
    )
    out = []
    for r in used.itertuples():
        h = hist[hist["run_id"] == r.run_id].sort_values("epoch")
        if h.empty or pd.isna(r.final_test_acc):
            continue
        out.append(
            ConvergenceRun(
                run_id=r.run_id,
                label=r.label,
                block=block_key(r.dataset, r.arch),
                seed=int(r.seed),
                epochs_to_95pct=epochs_to_fraction(h["test_acc"].tolist(), float(r.final_test_acc)),
                epochs=int(len(h)),
            )
        )
    return out


@dataclass(frozen=True)
class GeometryRow:
    """Mean latent-geometry statistics of one method's completed runs in one block."""

    block: str
    label: str
    means: dict[str, float | None]


def geometry(obs: Observations) -> list[GeometryRow]:
    """Per block and method: the mean of each latent-geometry statistic over completed runs."""
    order = {lab: i for i, lab in enumerate(obs.labels)}
    completed = obs.runs[obs.runs["status"] == "completed"]
    out = []
    for (dataset, arch, label), g in completed.groupby(["dataset", "arch", "label"]):
        means: dict[str, float | None] = {}
        for key in GEOMETRY_KEYS:
            vals = g[f"geometry.{key}"].dropna()
            means[key] = float(vals.mean()) if len(vals) else None
        out.append(GeometryRow(block_key(dataset, arch), str(label), means))
    return sorted(out, key=lambda row: (row.block, order[row.label]))


@dataclass(frozen=True)
class Counts:
    """Runs by status, and how many enter the statistics."""

    runs: int
    completed: int
    diverged: int
    failed: int
    used: int


@dataclass(frozen=True)
class BayesSettings:
    """How the Bayesian signed-rank posterior was sampled (for reproducing it)."""

    nsamples: int = BAYES_SAMPLES
    random_state: int = BAYES_SEED
    prior: float = 0.5


@dataclass
class Analysis:
    """Every statistic of the report (written as stats.json)."""

    metric: MetricInfo
    control: str
    alpha: float
    rope: float
    labels: list[str]
    blocks: list[str]
    counts: Counts
    primary_analysis: str
    primary_basis: PrimaryBasis
    per_block: list[BlockMethodSummary]
    within_blocks: list[WithinBlock]
    across_blocks: AcrossBlocks
    excluded_runs: list[ExcludedRun]
    convergence: list[ConvergenceRun]
    geometry: list[GeometryRow]
    bayes_settings: BayesSettings = field(default_factory=BayesSettings)


def _counts(obs: Observations) -> Counts:
    status = obs.runs["status"]
    return Counts(
        runs=int(len(status)),
        completed=int((status == "completed").sum()),
        diverged=int((status == "diverged").sum()),
        failed=int((status == "failed").sum()),
        used=int(len(obs.used)),
    )


def analyse(
    data: ResultsData, *, control: str, metric: MetricInfo, rope: float, alpha: float
) -> Analysis:
    """Every statistic of the report.

    Args:
        data: the results directory's tables.
        control: the label every method is compared with (must have runs).
        metric: the compared metric.
        rope: half-width of the region of practical equivalence, in the metric's report unit.
        alpha: significance level.
    """
    obs = observations(data, metric, control)
    table = block_table(obs, control)
    basis = choose_primary(table, control)
    if basis.analysis == "across-blocks":
        across = across_blocks(table, control, alpha, rope, metric.higher_is_better)
    else:
        across = describe_table(table)
    return Analysis(
        metric=metric,
        control=control,
        alpha=alpha,
        rope=rope,
        labels=obs.labels,
        blocks=[block_key(*b) for b in obs.blocks],
        counts=_counts(obs),
        primary_analysis=basis.analysis,
        primary_basis=basis,
        per_block=per_block(obs),
        within_blocks=within_blocks(obs, control, alpha),
        across_blocks=across,
        excluded_runs=obs.excluded,
        convergence=convergence(data, obs),
        geometry=geometry(obs),
    )
