"""Probability of improvement and interquartile mean with stratified-bootstrap intervals.

Agarwal et al. (2021, "Deep RL at the edge of the statistical precipice") and Bouthillier et al.
(2021, "Accounting for variance in machine learning benchmarks"): report P(A > B), the chance
that a run of A beats a run of B, and the interquartile mean (IQM) of runs normalised per block
(0 = the block's worst run of any method, 1 = its best, so that a hard block is not cut off as
a whole), each with a 95% percentile interval. The bootstrap resamples the runs (seeds) within
each block (stratified), so every block keeps its weight; where a block has fewer than 2 runs of
a method that would give a zero-width interval, so it resamples the blocks instead (rliable's
task bootstrap). Either way the test sets are held fixed: their sampling is not in the interval.
The generator is seeded: a report is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

from podbench.reports.observations import Observations, block_key
from podbench.reports.stats import at_resolution

__all__ = [
    "BOOTSTRAP_REPS",
    "BOOTSTRAP_SEED",
    "Bootstrap",
    "Interval",
    "bootstrap_summary",
    "interquartile_mean",
    "normalise_per_block",
    "probability_of_improvement",
    "resampling_for",
]

BOOTSTRAP_REPS = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
Strata = Sequence[Sequence[float]]  # one group of run values per block
Resampling = Literal["runs", "blocks"]


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap percentile interval."""

    estimate: float
    ci_low: float
    ci_high: float
    resampling: Resampling = "runs"


def resampling_for(*strata: Strata) -> Resampling:
    """Runs within blocks when every block has at least 2 runs of every method, else blocks
    (a block with one run would enter every resample unchanged: a zero-width interval)."""
    return "runs" if all(len(g) >= 2 for groups in strata for g in groups) else "blocks"


def _resample(
    rng: np.random.Generator, values: Sequence[float] | np.ndarray, reps: int
) -> np.ndarray:
    x = np.asarray(values, float)
    return x[rng.integers(0, x.size, size=(reps, x.size))]


def _interval(
    estimate: float, boot: np.ndarray, confidence: float, resampling: Resampling
) -> Interval:
    tail = 50 * (1 - confidence)
    low, high = np.percentile(boot, [tail, 100 - tail])
    return Interval(float(estimate), float(low), float(high), resampling)


def _beats(a: np.ndarray, b: np.ndarray, sign: float) -> np.ndarray:
    """Share of (run of A, run of B) pairs where A is better, ties counting half (last axes)."""
    diff = at_resolution(sign * (a[..., :, None] - b[..., None, :]))
    return (diff > 0).mean(axis=(-2, -1)) + 0.5 * (diff == 0).mean(axis=(-2, -1))


def probability_of_improvement(
    a: Strata,
    b: Strata,
    *,
    higher_is_better: bool = True,
    reps: int = BOOTSTRAP_REPS,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
    resampling: Resampling | None = None,
) -> Interval:
    """P(A > B): per block the chance that a run of A beats a run of B (ties half, at the
    report's resolution), averaged over blocks; ``a[i]`` and ``b[i]`` are the two methods' runs
    in block i. ``resampling``: runs within blocks, or blocks; default :func:`resampling_for`."""
    sign = 1.0 if higher_is_better else -1.0
    how = resampling or resampling_for(a, b)
    pairs = [(np.asarray(x, float), np.asarray(y, float)) for x, y in zip(a, b, strict=True)]
    per_block = np.array([_beats(x, y, sign) for x, y in pairs])
    rng = np.random.default_rng(seed)
    if how == "blocks":
        boot = per_block[rng.integers(0, len(pairs), size=(reps, len(pairs)))].mean(axis=1)
        return _interval(float(per_block.mean()), boot, confidence, how)
    total = np.zeros(reps)
    for x, y in pairs:
        total += _beats(_resample(rng, x, reps), _resample(rng, y, reps), sign)
    return _interval(float(per_block.mean()), total / len(pairs), confidence, how)


def interquartile_mean(
    groups: Strata,
    *,
    reps: int = BOOTSTRAP_REPS,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
    resampling: Resampling | None = None,
) -> Interval:
    """The mean of the middle 50% of all runs pooled over blocks (scipy's trim_mean, 25% cut
    at each end), with runs resampled within each block, or whole blocks (with all their runs)
    where a block has fewer than 2 runs (default :func:`resampling_for`)."""
    how = resampling or resampling_for(groups)
    arrays = [np.asarray(g, float) for g in groups]
    estimate = float(stats.trim_mean(np.concatenate(arrays), 0.25))
    rng = np.random.default_rng(seed)
    if how == "blocks":
        picks = rng.integers(0, len(arrays), size=(reps, len(arrays)))
        boot = np.array(
            [stats.trim_mean(np.concatenate([arrays[i] for i in p]), 0.25) for p in picks]
        )
        return _interval(estimate, boot, confidence, how)
    samples = np.concatenate([_resample(rng, g, reps) for g in arrays], axis=1)
    return _interval(estimate, stats.trim_mean(samples, 0.25, axis=1), confidence, how)


def normalise_per_block(
    runs: dict[str, list[np.ndarray]], higher_is_better: bool = True
) -> dict[str, list[np.ndarray]]:
    """Each method's runs per block on a 0-1 scale of that block: 0 = the worst run of any
    method there, 1 = the best (oriented by the metric's direction); a block whose runs are
    all equal puts every run at 0.5."""
    labels = list(runs)
    n_blocks = len(runs[labels[0]]) if labels else 0
    out: dict[str, list[np.ndarray]] = {lab: [] for lab in labels}
    for i in range(n_blocks):
        pooled = at_resolution(np.concatenate([runs[lab][i] for lab in labels]))
        low, high = pooled.min(), pooled.max()
        for lab in labels:
            x = at_resolution(runs[lab][i])
            if high == low:
                out[lab].append(np.full(x.shape, 0.5))
            else:
                score = (x - low) / (high - low)
                out[lab].append(score if higher_is_better else 1.0 - score)
    return out


@dataclass(frozen=True)
class Improvement:
    """P(method > control) over the blocks of the across-block table."""

    label: str
    n_blocks: int
    estimate: float
    ci_low: float
    ci_high: float
    resampling: Resampling = "runs"


@dataclass(frozen=True)
class MethodIqm:
    """The interquartile mean of a method's runs, normalised per block (0 = the block's worst
    run of any method, 1 = its best), over the blocks of the across-block table."""

    label: str
    n_runs: int
    estimate: float
    ci_low: float
    ci_high: float
    resampling: Resampling = "runs"


@dataclass(frozen=True)
class Bootstrap:
    """Probability of improvement against the control and IQM per method, with intervals."""

    reps: int
    seed: int
    confidence: float
    blocks: list[str]
    improvement: list[Improvement]
    iqm: list[MethodIqm]


def bootstrap_summary(
    obs: Observations, control: str, methods: list[str], blocks: list[tuple[str, str]]
) -> Bootstrap:
    """P(method > control) and each method's IQM over ``blocks``, runs as they entered."""
    used = obs.used
    runs = {
        (b, lab): used.loc[
            (used["dataset"] == b[0]) & (used["arch"] == b[1]) & (used["label"] == lab), "value"
        ].to_numpy(float)
        for b in blocks
        for lab in methods
    }
    improvement, iqm = [], []
    complete = [lab for lab in methods if blocks and all(runs[(b, lab)].size for b in blocks)]
    normalised = normalise_per_block(
        {lab: [runs[(b, lab)] for b in blocks] for lab in complete}, obs.metric.higher_is_better
    )
    for lab in complete:
        groups = [runs[(b, lab)] for b in blocks]
        iv = interquartile_mean([list(g) for g in normalised[lab]])
        n_runs = sum(g.size for g in groups)
        iqm.append(MethodIqm(lab, n_runs, iv.estimate, iv.ci_low, iv.ci_high, iv.resampling))
        if lab != control and control in complete:
            ctrl = [runs[(b, control)] for b in blocks]
            pi = probability_of_improvement(
                groups, ctrl, higher_is_better=obs.metric.higher_is_better
            )
            improvement.append(
                Improvement(lab, len(blocks), pi.estimate, pi.ci_low, pi.ci_high, pi.resampling)
            )
    return Bootstrap(
        BOOTSTRAP_REPS,
        BOOTSTRAP_SEED,
        CONFIDENCE,
        [block_key(*b) for b in blocks],
        improvement,
        iqm,
    )
