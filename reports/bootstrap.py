"""Probability of improvement and interquartile mean with stratified-bootstrap intervals.

Agarwal et al. (2021, "Deep RL at the edge of the statistical precipice") and Bouthillier et al.
(2021, "Accounting for variance in machine learning benchmarks"): report P(A > B), the chance
that a run of A beats a run of B, and the interquartile mean (IQM) of runs, each with a 95%
percentile interval from a bootstrap that resamples the runs (seeds) within each block
(stratified), so every block keeps its weight. The generator is seeded: a report is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from podbench.reports.observations import Observations, block_key

__all__ = [
    "BOOTSTRAP_REPS",
    "BOOTSTRAP_SEED",
    "Bootstrap",
    "Interval",
    "bootstrap_summary",
    "interquartile_mean",
    "probability_of_improvement",
]

BOOTSTRAP_REPS = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
Strata = Sequence[Sequence[float]]  # one group of run values per block


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap percentile interval."""

    estimate: float
    ci_low: float
    ci_high: float


def _resample(rng: np.random.Generator, values: Sequence[float] | np.ndarray, reps: int
              ) -> np.ndarray:
    x = np.asarray(values, float)
    return x[rng.integers(0, x.size, size=(reps, x.size))]


def _interval(estimate: float, boot: np.ndarray, confidence: float) -> Interval:
    tail = 50 * (1 - confidence)
    low, high = np.percentile(boot, [tail, 100 - tail])
    return Interval(float(estimate), float(low), float(high))


def _beats(a: np.ndarray, b: np.ndarray, sign: float) -> np.ndarray:
    """Share of (run of A, run of B) pairs where A is better, ties counting half (last axes)."""
    diff = sign * (a[..., :, None] - b[..., None, :])
    return (diff > 0).mean(axis=(-2, -1)) + 0.5 * (diff == 0).mean(axis=(-2, -1))


def probability_of_improvement(
    a: Strata,
    b: Strata,
    *,
    higher_is_better: bool = True,
    reps: int = BOOTSTRAP_REPS,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> Interval:
    """P(A > B): per block the chance that a run of A beats a run of B (ties half), averaged
    over blocks; ``a[i]`` and ``b[i]`` are the two methods' runs in block i."""
    sign = 1.0 if higher_is_better else -1.0
    pairs = [(np.asarray(x, float), np.asarray(y, float)) for x, y in zip(a, b, strict=True)]
    estimate = float(np.mean([_beats(x, y, sign) for x, y in pairs]))
    rng = np.random.default_rng(seed)
    boot = np.zeros(reps)
    for x, y in pairs:
        boot += _beats(_resample(rng, x, reps), _resample(rng, y, reps), sign)
    return _interval(estimate, boot / len(pairs), confidence)


def interquartile_mean(
    groups: Strata,
    *,
    reps: int = BOOTSTRAP_REPS,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> Interval:
    """The mean of the middle 50% of all runs pooled over blocks (scipy's trim_mean, 25% cut
    at each end), with runs resampled within each block."""
    estimate = float(stats.trim_mean(np.concatenate([np.asarray(g, float) for g in groups]), 0.25))
    rng = np.random.default_rng(seed)
    samples = np.concatenate([_resample(rng, g, reps) for g in groups], axis=1)
    return _interval(estimate, stats.trim_mean(samples, 0.25, axis=1), confidence)


@dataclass(frozen=True)
class Improvement:
    """P(method > control) over the blocks of the across-block table."""

    label: str
    n_blocks: int
    estimate: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class MethodIqm:
    """The interquartile mean of a method's runs over the blocks of the across-block table."""

    label: str
    n_runs: int
    estimate: float
    ci_low: float
    ci_high: float


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
    for lab in methods:
        groups = [runs[(b, lab)] for b in blocks]
        if not groups or any(g.size == 0 for g in groups):
            continue
        iv = interquartile_mean(groups)
        iqm.append(MethodIqm(lab, sum(g.size for g in groups), iv.estimate, iv.ci_low, iv.ci_high))
        if lab != control and control in methods:
            ctrl = [runs[(b, control)] for b in blocks]
            pi = probability_of_improvement(
                groups, ctrl, higher_is_better=obs.metric.higher_is_better
            )
            improvement.append(Improvement(lab, len(blocks), pi.estimate, pi.ci_low, pi.ci_high))
    return Bootstrap(
        BOOTSTRAP_REPS,
        BOOTSTRAP_SEED,
        CONFIDENCE,
        [block_key(*b) for b in blocks],
        improvement,
        iqm,
    )
