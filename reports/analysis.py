"""From run records to every statistic of the report, in small typed steps.

The unit of comparison is a (dataset, architecture) block with the seeds averaged first (Demšar
2006). Steps: which runs enter and with which value (:func:`observations`), per block and method
(:func:`per_block`), seeds within each block (:func:`within_blocks`), the blocks × methods table
and which analysis it supports (:func:`block_table`, :func:`choose_primary`: across blocks only
when Wilcoxon–Holm can reach alpha), the tests across blocks (:func:`across_blocks`: Friedman,
Nemenyi only when Friedman rejects, Wilcoxon–Holm with each comparison's attainable p, Bayesian
signed-rank with the posterior mass in the ROPE, TOST, the power across blocks
(:func:`across_power`) and the same tests over datasets (:func:`dataset_level`)), probability
of improvement and IQM normalised per block (:func:`bootstrap_summary`), seeds and power
(:func:`seed_power`), convergence (:func:`convergence`) and latent geometry. :func:`analyse`
runs them all and returns one :class:`Analysis`, which build.py writes as stats.json. Block
means are rounded to :data:`podbench.reports.stats.RESOLUTION`, so equal accuracies tie.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import scikit_posthocs as sp

from podbench.reports.bootstrap import Bootstrap, bootstrap_summary
from podbench.reports.convergence import TARGET_FRACTION, Convergence, convergence
from podbench.reports.observations import (
    ExcludedRun,
    FailedPolicy,
    FailureHandling,
    Observations,
    block_key,
    observations,
)
from podbench.reports.records import GEOMETRY_KEYS, MetricInfo, ResultsData
from podbench.reports.stats import (
    BAYES_SAMPLES,
    BAYES_SEED,
    RESOLUTION,
    RESOLUTION_DECIMALS,
    ZERO_METHOD,
    EquivalenceTest,
    Friedman,
    SeedComparison,
    SignedRankComparison,
    attainable_holm_p,
    bayesian_signed_rank,
    blocks_needed,
    describe,
    friedman_iman_davenport,
    mean_ranks,
    min_detectable_difference,
    nemenyi_critical_difference,
    seeds_needed,
    tost_paired,
    welch_vs_control,
    wilcoxon_power,
    wilcoxon_vs_control,
)

__all__ = [
    "DETECT_DIFFERENCE",
    "MIN_BLOCKS",
    "POWER",
    "AcrossBlocks",
    "Analysis",
    "BlockTable",
    "PrimaryBasis",
    "SeedPower",
    "across_blocks",
    "analyse",
    "block_table",
    "choose_primary",
    "geometry",
    "per_block",
    "seed_power",
    "within_blocks",
]

# Demšar (2006): tests across fewer data sets mean little, whatever p they could reach.
MIN_BLOCKS = 5
WELCH_TEST = "Welch's t-test (two-sided) against the control, Holm within the block"
DETECT_DIFFERENCE = 0.5  # accuracy points a user planning seeds typically asks about
POWER = 0.8


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
    seeds: list[int]  # of every run, any status
    values: list[float]  # the values that enter, by seed
    value_seeds: list[int]  # the seed of each value
    imputed: list[bool]  # per value: a diverged/failed run entered with the worst value
    still_improving: list[bool]  # per value: the run was still improving when it stopped
    n: int
    mean: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None


def _block_runs(obs: Observations, dataset: str, arch: str, label: str) -> pd.DataFrame:
    used = obs.used
    here = used[(used["dataset"] == dataset) & (used["arch"] == arch) & (used["label"] == label)]
    return here.sort_values("seed")


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
            entered = _block_runs(obs, dataset, arch, label)
            vals = [float(v) for v in entered["value"]]
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
                    value_seeds=[int(v) for v in entered["seed"]],
                    imputed=[bool(v) for v in entered["imputed"]],
                    still_improving=[bool(v) for v in entered["still_improving"]],
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


def within_blocks(
    obs: Observations, summaries: list[BlockMethodSummary], control: str, alpha: float
) -> list[WithinBlock]:
    """Welch's t-test of every method against the control in every block, Holm per block,
    over the values of :func:`per_block`."""
    out = []
    for dataset, arch in obs.blocks:
        key = block_key(dataset, arch)
        family = {s.label: s.values for s in summaries if s.block == key and s.values}
        note = None
        comps: list[SeedComparison] = []
        if control not in family:
            note = f"the control {control!r} has no completed run in this block"
        elif len(family) < 2:
            note = "only the control has runs with a value in this block"
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


def required_blocks(n_comparisons: int, alpha: float) -> int:
    """Blocks the tests across blocks need: Wilcoxon–Holm able to reach alpha, and Demšar's
    minimum."""
    return max(MIN_BLOCKS, blocks_needed(n_comparisons, alpha))


def _supports_tests(means: pd.DataFrame, control: str, alpha: float) -> bool:
    n, k = means.shape
    return control in means.columns and k >= 2 and n >= required_blocks(k - 1, alpha)


def block_table(obs: Observations, control: str, alpha: float) -> BlockTable:
    """Seeds averaged per block; incomplete blocks dropped, unless dropping instead the methods
    missing somewhere lets the tests across blocks reach alpha (both choices are reported)."""
    labels, blocks = obs.labels, obs.blocks
    means = obs.used.groupby(["dataset", "arch", "label"])["value"].mean().unstack("label")
    means = means.round(RESOLUTION_DECIMALS)  # equal seed means compare equal (stats.RESOLUTION)
    means = means.reindex(columns=[lab for lab in labels if lab in means.columns])
    complete = means.dropna(axis=0, how="any")
    dropped: list[str] = []
    by_method = means.dropna(axis=1, how="any")
    if not _supports_tests(complete, control, alpha) and _supports_tests(by_method, control, alpha):
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
    """Which analysis is primary and the facts that decided it (the report words them).

    ``min_p`` is the smallest Holm-adjusted p that Wilcoxon over ``n_blocks`` can attain for the
    ``n_comparisons`` against the control; across blocks is primary only when it is below alpha
    and there are at least ``blocks_needed`` blocks.
    """

    analysis: Literal["across-blocks", "within-blocks"]
    why: Literal["attainable", "control-missing", "too-few-methods", "unattainable"]
    n_blocks: int
    n_comparisons: int
    alpha: float
    min_p: float
    blocks_needed: int
    min_blocks: int = MIN_BLOCKS


def choose_primary(table: BlockTable, control: str, alpha: float) -> PrimaryBasis:
    """Across blocks when the complete blocks hold the control and another method and
    Wilcoxon–Holm over them can reach alpha; else within blocks."""
    n, k = table.means.shape
    m = max(k - 1, 1)
    facts = dict(
        n_blocks=n,
        n_comparisons=m,
        alpha=alpha,
        min_p=attainable_holm_p(n, m),
        blocks_needed=required_blocks(m, alpha),
    )
    if control not in table.means.columns:
        return PrimaryBasis("within-blocks", "control-missing", **facts)  # type: ignore[arg-type]
    if k < 2:
        return PrimaryBasis("within-blocks", "too-few-methods", **facts)  # type: ignore[arg-type]
    if n < facts["blocks_needed"]:
        return PrimaryBasis("within-blocks", "unattainable", **facts)  # type: ignore[arg-type]
    return PrimaryBasis("across-blocks", "attainable", **facts)  # type: ignore[arg-type]


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
    p_control_better: float  # share of posterior samples where this region is the most probable
    p_equivalent: float
    p_other_better: float
    mass_control_better: float = 0.0  # posterior mean mass of the difference in this region
    mass_equivalent: float = 0.0
    mass_other_better: float = 0.0


@dataclass(frozen=True)
class Equivalence:
    """TOST of one method against the control over blocks, bounds ±ROPE."""

    label: str
    test: EquivalenceTest


@dataclass(frozen=True)
class ComparisonPower:
    """What the across-block test of one method against the control could detect."""

    label: str
    sd: float | None  # standard deviation of its block differences
    power: dict[str, float | None]  # difference (report unit, as text) -> power


@dataclass(frozen=True)
class AcrossPower:
    """Power of Wilcoxon–Holm across blocks for given true differences, at Holm's first step."""

    n_blocks: int
    level: float  # alpha / m: the smallest p must be below it for any rejection
    differences: list[float]
    comparisons: list[ComparisonPower]
    test: str


@dataclass
class DatasetLevel:
    """The blocks of each dataset averaged into one value: the same tests over datasets,
    since blocks that share a dataset (its test set) are not independent."""

    n_datasets: int
    datasets: list[str]
    means: dict[str, dict[str, float]]
    mean_ranks: dict[str, float]
    wilcoxon: list[SignedRankComparison]


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
    nemenyi_gated: bool = False  # Nemenyi left out: Friedman did not reject (Demšar 3.2.2)
    equivalence: list[Equivalence] = field(default_factory=list)
    power: AcrossPower | None = None
    by_dataset: DatasetLevel | None = None


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
    table: BlockTable,
    control: str,
    alpha: float,
    rope: float,
    higher_is_better: bool,
    difference: float = DETECT_DIFFERENCE,
) -> AcrossBlocks:
    """Mean ranks, Friedman/Iman–Davenport (k ≥ 3) and, only when it rejects, Nemenyi;
    Wilcoxon–Holm, the Bayesian signed-rank test and TOST of every method against the control,
    the across-block power, and the same tests over datasets, over the complete blocks."""
    out = describe_table(table)
    oriented = table.means * (1.0 if higher_is_better else -1.0)
    ranks = mean_ranks(oriented, higher_is_better=True)
    out.mean_ranks = {lab: float(ranks[lab]) for lab in out.methods}
    if out.k_methods >= 3:
        out.friedman = friedman_iman_davenport(oriented)
        if out.friedman.p is not None and out.friedman.p < alpha:
            out.nemenyi = _nemenyi(oriented, alpha)
        else:
            out.nemenyi_gated = True
    out.wilcoxon = wilcoxon_vs_control(
        table.means, control, alpha, higher_is_better=higher_is_better
    )
    for lab in out.methods:
        if lab == control:
            continue
        post = bayesian_signed_rank(oriented[control], oriented[lab], rope)
        out.bayesian.append(BayesianComparison(lab, rope, **vars(post)))
        if rope > 0:
            diff = table.means[lab] - table.means[control]
            out.equivalence.append(Equivalence(lab, tost_paired(diff, rope, alpha)))
    out.power = across_power(table, control, alpha, sorted({difference, rope} - {0.0}))
    out.by_dataset = dataset_level(table, control, alpha, higher_is_better)
    return out


def across_power(
    table: BlockTable, control: str, alpha: float, differences: list[float]
) -> AcrossPower:
    """For each method against the control: the power of the exact Wilcoxon test over the
    blocks, at Holm's first-step level alpha/m, to detect each true mean difference, with block
    differences normal at the standard deviation observed for that comparison."""
    means = table.means
    others = [lab for lab in means.columns if lab != control]
    level = alpha / max(len(others), 1)
    rows = []
    for lab in others:
        diff = (means[lab] - means[control]).to_numpy(float)
        sd = float(diff.std(ddof=1)) if diff.size > 1 else None
        sd = sd if sd is not None and sd > RESOLUTION else None
        power = {
            f"{d:g}": None if sd is None else wilcoxon_power(sd, len(diff), d, level)
            for d in differences
        }
        rows.append(ComparisonPower(lab, sd, power))
    test = (
        "exact two-sided Wilcoxon signed-rank over the blocks at alpha/m (the level the "
        "smallest Holm p must beat), block differences normal with the comparison's observed "
        "standard deviation; 20,000 simulated benchmarks, seed 0"
    )
    return AcrossPower(len(means), level, differences, rows, test)


def dataset_level(
    table: BlockTable, control: str, alpha: float, higher_is_better: bool
) -> DatasetLevel | None:
    """Blocks averaged per dataset, and mean ranks and Wilcoxon–Holm over the datasets; None
    when every dataset has one block (then it is the block-level analysis)."""
    means = table.means
    if means.empty or control not in means.columns:
        return None
    per_dataset = means.groupby(level=0).mean().round(RESOLUTION_DECIMALS)
    if len(per_dataset) == len(means):
        return None
    oriented = per_dataset * (1.0 if higher_is_better else -1.0)
    ranks = mean_ranks(oriented, higher_is_better=True)
    methods = list(per_dataset.columns)
    return DatasetLevel(
        n_datasets=len(per_dataset),
        datasets=[str(d) for d in per_dataset.index],
        means={
            str(d): {lab: float(per_dataset.loc[d, lab]) for lab in methods}
            for d in per_dataset.index
        },
        mean_ranks={lab: float(ranks[lab]) for lab in methods},
        wilcoxon=wilcoxon_vs_control(
            per_dataset, control, alpha, higher_is_better=higher_is_better
        ),
    )


@dataclass(frozen=True)
class BlockPower:
    """Seed noise in one block and what it lets a two-sample t-test detect."""

    block: str
    sd: float | None  # pooled standard deviation over seeds of the completed runs
    df: int  # its degrees of freedom
    seeds_run: int  # the fewest values any method has in the block
    seeds_needed: int | None  # per method, to detect the difference with the power
    min_detectable: float | None  # with the seeds run, at the power


@dataclass(frozen=True)
class SeedPower:
    """Seeds needed per block for a difference, and the smallest difference the seeds detect."""

    difference: float
    power: float
    alpha: float
    test: str
    blocks: list[BlockPower]
    seeds_needed: int | None  # the most any block needs


def _pooled_sd(groups: list[np.ndarray]) -> tuple[float | None, int]:
    df = sum(g.size - 1 for g in groups if g.size >= 2)
    if df == 0:
        return None, 0
    ss = sum(((g - g.mean()) ** 2).sum() for g in groups if g.size >= 2)
    return float(np.sqrt(ss / df)), int(df)


def seed_power(obs: Observations, alpha: float, difference: float, power: float) -> SeedPower:
    """From the seed variance of completed runs per block: seeds needed to detect
    ``difference`` at ``power`` (two-sided t-test at alpha), and the smallest difference the
    seeds run detect."""
    used = obs.used
    rows = []
    for d, a in obs.blocks:
        here = used[(used["dataset"] == d) & (used["arch"] == a)]
        if here.empty:
            continue
        seed_noise = here[~here["imputed"]]  # worst values are a policy, not seed noise
        groups = [g["value"].to_numpy(float) for _, g in seed_noise.groupby("label")]
        sd, df = _pooled_sd(groups)
        n_run = int(here.groupby("label").size().min())
        rows.append(
            BlockPower(
                block=block_key(d, a),
                sd=sd,
                df=df,
                seeds_run=n_run,
                seeds_needed=None if sd is None else seeds_needed(sd, difference, alpha, power),
                min_detectable=None
                if sd is None
                else min_detectable_difference(sd, n_run, alpha, power),
            )
        )
    needed = [r.seeds_needed for r in rows if r.seeds_needed is not None]
    test = "two-sided two-sample t-test, equal seeds per method, pooled seed standard deviation"
    return SeedPower(difference, power, alpha, test, rows, max(needed) if needed else None)


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
    still_improving: int = 0  # of the runs that enter: held-out accuracy still rising at the end


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
    failure_handling: FailureHandling
    primary_analysis: str
    primary_basis: PrimaryBasis
    per_block: list[BlockMethodSummary]
    within_blocks: list[WithinBlock]
    across_blocks: AcrossBlocks
    bootstrap: Bootstrap
    seed_power: SeedPower
    excluded_runs: list[ExcludedRun]
    convergence: Convergence
    geometry: list[GeometryRow]
    still_improving_recorded: bool  # the records carry the still_improving flag
    wilcoxon_zero_method: str = ZERO_METHOD
    bayes_settings: BayesSettings = field(default_factory=BayesSettings)


def _counts(obs: Observations) -> Counts:
    status = obs.runs["status"]
    return Counts(
        runs=int(len(status)),
        completed=int((status == "completed").sum()),
        diverged=int((status == "diverged").sum()),
        failed=int((status == "failed").sum()),
        used=int(len(obs.used)),
        still_improving=int(obs.used["still_improving"].astype(bool).sum()),
    )


def analyse(
    data: ResultsData,
    *,
    control: str,
    metric: MetricInfo,
    rope: float,
    alpha: float,
    failed: FailedPolicy = "worst",
    difference: float = DETECT_DIFFERENCE,
    target_fraction: float = TARGET_FRACTION,
) -> Analysis:
    """Every statistic of the report.

    Args:
        data: the results directory's tables.
        control: the label every method is compared with (must have runs).
        metric: the compared metric.
        rope: half-width of the region of practical equivalence, in the metric's report unit.
        alpha: significance level.
        failed: ``worst`` (diverged and failed runs enter with the worst value) or ``exclude``.
        difference: the difference (report unit) the seeds-and-power step plans for.
        target_fraction: the convergence target as a fraction of the best method's median
            final test accuracy in each block.
    """
    obs = observations(data, metric, control, failed)
    table = block_table(obs, control, alpha)
    basis = choose_primary(table, control, alpha)
    if basis.analysis == "across-blocks":
        across = across_blocks(table, control, alpha, rope, metric.higher_is_better, difference)
    else:
        across = describe_table(table)
    methods, blocks = list(table.means.columns), list(table.means.index)
    summaries = per_block(obs)
    return Analysis(
        metric=metric,
        control=control,
        alpha=alpha,
        rope=rope,
        labels=obs.labels,
        blocks=[block_key(*b) for b in obs.blocks],
        counts=_counts(obs),
        failure_handling=obs.failure,
        primary_analysis=basis.analysis,
        primary_basis=basis,
        per_block=summaries,
        within_blocks=within_blocks(obs, summaries, control, alpha),
        across_blocks=across,
        bootstrap=bootstrap_summary(obs, control, methods, blocks),
        seed_power=seed_power(obs, alpha, difference, POWER),
        excluded_runs=obs.excluded,
        convergence=convergence(data, obs, methods, blocks, target_fraction),
        geometry=geometry(obs),
        still_improving_recorded=obs.still_improving_recorded,
    )
