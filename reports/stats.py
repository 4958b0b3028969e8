"""Statistical tests behind the report, each returning a typed result.

Follows Demšar (2006) and Benavoli et al. (2016/2017): Friedman with the Iman–Davenport
correction, mean ranks and the Nemenyi critical difference; Wilcoxon signed-rank against a control
with Holm's correction, the matched-pairs rank-biserial correlation and Cohen's d_z over blocks;
the Bayesian signed-rank test with a region of practical equivalence, and TOST with its 90%
interval; Welch's t-test, Cohen's d and Cliff's delta for seeds within one block; the smallest
p-value a rank test can attain, from the zeros and ties it actually has; the seeds a t-test needs
for a given power, and the power of the Wilcoxon–Holm test across blocks.

Every comparison of two values is made at :data:`RESOLUTION` (values rounded to 1e-9 in the
metric's report unit, see :func:`at_resolution`): seed means that are equal in exact arithmetic
differ by ~1e-14 in floating point, and must tie, not win. Differences and effect sizes
always keep the sign of method minus control in the metric's own units; ``better`` says whether
that is an improvement for the metric's direction. Two-sided p-values do not depend on direction.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import baycomp
import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats
from scipy.optimize import brentq
from statsmodels.stats.multitest import multipletests  # a dependency of scikit-posthocs
from statsmodels.stats.power import TTestIndPower

__all__ = [
    "BAYES_SAMPLES",
    "BAYES_SEED",
    "CriticalDifference",
    "Friedman",
    "SeedComparison",
    "SignedRankComparison",
    "SignedRankPosterior",
    "Summary",
    "EquivalenceTest",
    "RESOLUTION",
    "at_resolution",
    "attainable_holm_p",
    "attainable_wilcoxon_p",
    "bayesian_signed_rank",
    "blocks_needed",
    "cliffs_delta",
    "cohens_d",
    "describe",
    "friedman_iman_davenport",
    "holm",
    "holm_floors",
    "matched_pairs_rank_biserial",
    "mean_ranks",
    "min_detectable_difference",
    "nemenyi_critical_difference",
    "seeds_needed",
    "t_test_power",
    "tost_paired",
    "welch_vs_control",
    "wilcoxon_power",
    "wilcoxon_rejection_region",
    "wilcoxon_vs_control",
]

BAYES_SAMPLES = 20000
BAYES_SEED = 0
# Demšar (2006): ranks of zero differences are split evenly between R+ and R-.
ZERO_METHOD = "zsplit"
# The resolution at which two values count as equal (report units: accuracy points). Far below
# one image of any test set (1/10,000 of the data is 0.01 points), far above float error.
RESOLUTION_DECIMALS = 9
RESOLUTION = 10.0**-RESOLUTION_DECIMALS


def at_resolution(x: ArrayLike) -> np.ndarray:
    """Values rounded to :data:`RESOLUTION`, so that equal accuracies compare equal (-0 made 0)."""
    return np.round(np.asarray(x, float), RESOLUTION_DECIMALS) + 0.0


def finite(x: Any) -> float | None:
    """A finite float or None (stats.json never holds NaN or infinity)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and Student-t interval of the mean of some values."""

    n: int
    mean: float | None
    std: float | None  # None for n < 2
    ci_low: float | None
    ci_high: float | None


def describe(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean, sample standard deviation and the Student-t confidence interval of the mean.

    Args:
        values: the observations (one per seed).
        confidence: the interval's coverage.
    """
    x = np.asarray(values, dtype=float)
    n = int(x.size)
    if n == 0:
        return Summary(0, None, None, None, None)
    mean = float(x.mean())
    if n < 2:
        return Summary(1, mean, None, None, None)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control)."""
    if len(pvalues) == 0:
        return []
    return [float(p) for p in multipletests(np.asarray(pvalues, float), method="holm")[1]]


def cliffs_delta(x: ArrayLike, y: ArrayLike) -> float:
    """Cliff's delta: P(X > Y) - P(X < Y) over all pairs, in [-1, 1]."""
    a = at_resolution(x)[:, None]
    b = at_resolution(y)[None, :]
    return float(np.sign(at_resolution(a - b)).mean())


def cohens_d(x: ArrayLike, y: ArrayLike) -> float | None:
    """Cohen's d of two independent samples with the pooled standard deviation."""
    a, b = at_resolution(x), at_resolution(y)
    if a.size < 2 or b.size < 2:
        return None
    pooled = ((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2)
    diff = float(at_resolution(a.mean() - b.mean()))
    if pooled <= RESOLUTION**2:
        return None
    return diff / math.sqrt(pooled)


def attainable_holm_p(n_blocks: int, n_comparisons: int) -> float:
    """The smallest Holm-adjusted p any of ``n_comparisons`` Wilcoxon tests over ``n_blocks``
    can reach before the data are seen (no zero differences, no ties): the exact two-sided p is
    at least 2/2^N, and Holm multiplies the smallest p by m. Zero differences raise it: see
    :func:`attainable_wilcoxon_p`."""
    if n_blocks < 1 or n_comparisons < 1:
        return 1.0
    return min(1.0, n_comparisons * 2.0 ** (1 - n_blocks))


def attainable_wilcoxon_p(diff: ArrayLike) -> float:
    """The smallest two-sided p the Wilcoxon signed-rank test (scipy, zeros split) can give for
    paired differences with these magnitudes: the same zeros and tied |d|, every other difference
    of one sign. With z zero differences out of N it is 2/2^(N-z) when the rest are distinct."""
    d = np.abs(at_resolution(diff))
    if d.size == 0 or not (d > 0).any():
        return 1.0
    return float(stats.wilcoxon(d, zero_method=ZERO_METHOD, alternative="two-sided").pvalue)


def holm_floors(floors: Sequence[float]) -> list[float]:
    """For each test of a Holm family, the smallest adjusted p it can reach when every test's
    raw p can go down to its own floor: the tests with lower floors may come before it, each
    at its floor (taking the lowest ones first is best), and Holm's adjusted p is the running
    maximum of (m - j + 1) p_(j)."""
    m = len(floors)
    out = []
    for i, f in enumerate(floors):
        ahead = sorted(g for j, g in enumerate(floors) if j != i and g <= f)
        best = min(1.0, m * f)
        for s in range(1, len(ahead) + 1):
            terms = [(m - j) * ahead[j] for j in range(s)] + [(m - s) * f]
            best = min(best, min(1.0, max(terms)))
        out.append(float(best))
    return out


def blocks_needed(n_comparisons: int, alpha: float) -> int:
    """The fewest blocks with which Wilcoxon–Holm over ``n_comparisons`` can reach p < alpha."""
    n = 1
    while attainable_holm_p(n, max(n_comparisons, 1)) >= alpha:
        n += 1
    return n


def matched_pairs_rank_biserial(diff: ArrayLike) -> float | None:
    """Matched-pairs rank-biserial correlation (R+ - R-)/(R+ + R-) of paired differences.

    Ranks of |d| over all pairs; zero differences keep their ranks, split evenly between R+ and
    R- (Demšar 2006; scipy's ``zero_method="zsplit"``). In [-1, 1]; None without any pair.
    """
    d = at_resolution(diff)
    if d.size == 0:
        return None
    ranks = stats.rankdata(np.abs(d))
    r_plus = ranks[d > 0].sum() + ranks[d == 0].sum() / 2
    r_minus = ranks[d < 0].sum() + ranks[d == 0].sum() / 2
    return float((r_plus - r_minus) / (r_plus + r_minus))


def mean_ranks(table: pd.DataFrame, higher_is_better: bool = True) -> pd.Series:
    """Average rank of each column over the rows (1 = best; ties share the average rank)."""
    values = at_resolution(table.to_numpy(float))
    oriented = -values if higher_is_better else values
    ranks = stats.rankdata(oriented, axis=1, method="average")
    return pd.Series(ranks.mean(axis=0), index=table.columns)


@dataclass(frozen=True)
class Friedman:
    """Friedman's χ² over blocks and methods with the Iman–Davenport F; None where undefined."""

    n_blocks: int
    k_methods: int
    chi2: float | None
    chi2_p: float | None
    F: float | None  # noqa: N815 (the statistic's own name)
    df1: int
    df2: int
    p: float | None
    F_infinite: bool = False  # complete agreement of the rankings: F is infinite, p is 0


def friedman_iman_davenport(table: pd.DataFrame) -> Friedman:
    """Friedman's test over blocks (rows) and methods (columns), with Iman–Davenport's F.

    ``chi2`` and ``chi2_p`` are scipy's Friedman; F = (N-1)χ²/(N(k-1)-χ²) with df1 = k-1 and
    df2 = (k-1)(N-1). Rank reversal leaves both unchanged, so the metric's direction is irrelevant.
    """
    n, k = table.shape
    columns = [at_resolution(table[c].to_numpy(float)) for c in table.columns]
    chi2, chi2_p = stats.friedmanchisquare(*columns)
    base = Friedman(n, k, finite(chi2), finite(chi2_p), None, k - 1, (k - 1) * (n - 1), None)
    if base.chi2 is None:  # every block tied throughout: no test possible
        return base
    denom = n * (k - 1) - base.chi2
    if denom <= 0:
        return dataclasses.replace(base, p=0.0, F_infinite=True)
    f_stat = (n - 1) * base.chi2 / denom
    return dataclasses.replace(
        base, F=float(f_stat), p=float(stats.f.sf(f_stat, base.df1, base.df2))
    )


@dataclass(frozen=True)
class CriticalDifference:
    """Nemenyi's critical difference of mean ranks and its studentized-range quantile."""

    q_alpha: float
    cd: float


def nemenyi_critical_difference(k: int, n: int, alpha: float = 0.05) -> CriticalDifference:
    """Nemenyi's critical difference of mean ranks: CD = q_α √(k(k+1)/(6N)).

    q_α is the studentized range quantile for k groups and infinite df divided by √2.
    """
    q_alpha = float(stats.studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)
    return CriticalDifference(q_alpha, q_alpha * math.sqrt(k * (k + 1) / (6 * n)))


@dataclass(frozen=True)
class SignedRankComparison:
    """A method against the control over blocks (one value per block): Wilcoxon and effect sizes."""

    label: str
    n_blocks: int
    mean_diff: float
    median_diff: float
    wins: int  # blocks where the method is better than the control
    ties: int
    losses: int
    rank_biserial: float | None  # matched pairs, zero differences split (Demšar 2006)
    cohens_dz: float | None
    better: bool
    statistic: float | None = None
    p: float | None = None
    p_holm: float | None = None
    significant: bool = False
    note: str | None = None
    min_p: float = 1.0  # the smallest raw p attainable with this comparison's zeros and ties
    min_p_holm: float = 1.0  # the smallest Holm-adjusted p attainable in its family


_Tested = TypeVar("_Tested", "SignedRankComparison", "SeedComparison")


def _with_holm(results: list[_Tested], alpha: float) -> list[_Tested]:
    """Holm-adjust the p-values of the results that have one (the others stay as they are)."""
    tested = [i for i, r in enumerate(results) if r.p is not None]
    adjusted = holm([results[i].p for i in tested])  # type: ignore[misc]
    out = list(results)
    for i, p_adj in zip(tested, adjusted, strict=True):
        out[i] = dataclasses.replace(out[i], p_holm=p_adj, significant=p_adj < alpha)
    return out


def wilcoxon_vs_control(
    table: pd.DataFrame, control: str, alpha: float = 0.05, *, higher_is_better: bool = True
) -> list[SignedRankComparison]:
    """Two-sided Wilcoxon signed-rank of each method against the control, Holm-corrected.

    Zero differences are split evenly between the signed rank sums (Demšar 2006; scipy's
    ``zero_method="zsplit"``), in the test and in the rank-biserial correlation alike.

    Args:
        table: blocks × methods, one value per block (seeds averaged).
        control: the column every other column is compared with.
        alpha: family-wise level for the ``significant`` flag.
        higher_is_better: the metric's direction (for wins/losses and ``better``).
    """
    sign = 1.0 if higher_is_better else -1.0
    ctrl = at_resolution(table[control].to_numpy(float))
    results: list[SignedRankComparison] = []
    for label in table.columns:
        if label == control:
            continue
        x = at_resolution(table[label].to_numpy(float))
        diff = at_resolution(x - ctrl)
        sd = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
        mean = float(at_resolution(diff.mean()))
        row = SignedRankComparison(
            label=str(label),
            n_blocks=int(diff.size),
            mean_diff=mean,
            median_diff=float(np.median(diff)),
            wins=int((sign * diff > 0).sum()),
            ties=int((diff == 0).sum()),
            losses=int((sign * diff < 0).sum()),
            rank_biserial=matched_pairs_rank_biserial(diff),
            cohens_dz=mean / sd if sd > RESOLUTION else None,
            better=bool(sign * mean > 0),
            min_p=attainable_wilcoxon_p(diff),
        )
        if np.all(diff == 0):
            row = dataclasses.replace(row, note="identical to the control on every block: no test")
        else:
            res = stats.wilcoxon(diff, zero_method=ZERO_METHOD, alternative="two-sided")
            row = dataclasses.replace(row, statistic=finite(res.statistic), p=finite(res.pvalue))
        results.append(row)
    tested = [i for i, r in enumerate(results) if r.p is not None]
    floors = holm_floors([results[i].min_p for i in tested])
    for i, f in zip(tested, floors, strict=True):
        results[i] = dataclasses.replace(results[i], min_p_holm=f)
    return _with_holm(results, alpha)


@dataclass(frozen=True)
class SignedRankPosterior:
    """Benavoli's Bayesian signed-rank test: two readings of one posterior.

    ``p_*`` are baycomp's probabilities: the share of posterior samples in which that region is
    the most probable of the three (so ``p_equivalent`` is not the posterior mass inside the
    ROPE). ``mass_*`` are the posterior expected shares of the difference inside each region.
    """

    p_control_better: float
    p_equivalent: float
    p_other_better: float
    mass_control_better: float = 0.0
    mass_equivalent: float = 0.0
    mass_other_better: float = 0.0


def bayesian_signed_rank(
    control: ArrayLike,
    other: ArrayLike,
    rope: float,
    *,
    nsamples: int = BAYES_SAMPLES,
    seed: int = BAYES_SEED,
) -> SignedRankPosterior:
    """Benavoli's Bayesian signed-rank test (baycomp) of ``other`` against ``control``.

    Values are oriented so that higher is better; the differences enter at :data:`RESOLUTION`.
    Returns, for the control practically better, the two practically equivalent (difference
    within ±rope) and ``other`` practically better, baycomp's probability that the region is the
    most probable one, and the posterior mean of the region's mass.
    """
    diff = at_resolution(np.asarray(other, float) - np.asarray(control, float))
    # baycomp takes y - x: with x = 0 it sees the rounded differences as they are
    sample = baycomp.SignedRankTest.sample(
        np.zeros_like(diff), diff, max(rope, 0.0), nsamples=nsamples, random_state=seed
    )
    shares = np.bincount(np.argmax(sample, axis=1), minlength=3) / len(sample)
    if rope <= 0:  # two regions only: baycomp's probabilities without the ROPE column
        shares = np.array([shares[0], 0.0, shares[2]]) / (shares[0] + shares[2])
    mass = sample.mean(axis=0)
    return SignedRankPosterior(*(float(v) for v in (*shares, *mass)))


@dataclass(frozen=True)
class EquivalenceTest:
    """TOST of paired differences against ±bound, with the (1 - 2 alpha) t-interval that decides
    it: equivalent at alpha exactly when the interval lies inside ±bound."""

    bound: float
    mean_diff: float
    p: float | None  # the larger of the two one-sided p-values; None without spread
    ci_low: float | None
    ci_high: float | None
    confidence: float
    equivalent: bool


def tost_paired(diff: ArrayLike, bound: float, alpha: float = 0.05) -> EquivalenceTest:
    """Two one-sided t-tests (statsmodels' ``ttost_paired``) that the mean paired difference
    lies within ±bound, and the matching (1 - 2 alpha) Student-t interval of the mean."""
    from statsmodels.stats.weightstats import DescrStatsW, ttost_paired

    d = at_resolution(diff)
    mean, confidence = float(at_resolution(d.mean())), 1 - 2 * alpha
    if d.size < 2 or not d.std(ddof=1) > RESOLUTION or not bound > 0:
        return EquivalenceTest(bound, mean, None, None, None, confidence, False)
    p = float(ttost_paired(d, np.zeros_like(d), -bound, bound)[0])
    low, high = DescrStatsW(d).tconfint_mean(alpha=2 * alpha)
    return EquivalenceTest(bound, mean, p, float(low), float(high), confidence, p < alpha)


@dataclass(frozen=True)
class SeedComparison:
    """A method's seeds against the control's in one block: Welch's t-test and effect sizes."""

    label: str
    n: int
    n_control: int
    mean_diff: float | None
    cohens_d: float | None
    cliffs_delta: float | None
    better: bool | None
    t: float | None = None
    df: float | None = None
    p: float | None = None
    p_holm: float | None = None
    significant: bool = False
    note: str | None = None


def welch_vs_control(
    groups: Mapping[str, Sequence[float]],
    control: str,
    alpha: float = 0.05,
    *,
    higher_is_better: bool = True,
) -> list[SeedComparison]:
    """Welch's t-test of each method's seeds against the control's, Holm within the family.

    A comparison without at least two values on each side, or without any variation, gets no
    p-value and a note saying why.
    """
    sign = 1.0 if higher_is_better else -1.0
    ctrl = at_resolution(groups[control])
    results: list[SeedComparison] = []
    for label, vals in groups.items():
        if label == control:
            continue
        x = at_resolution(vals)
        both = bool(x.size and ctrl.size)
        diff = float(at_resolution(x.mean() - ctrl.mean())) if both else None
        row = SeedComparison(
            label=label,
            n=int(x.size),
            n_control=int(ctrl.size),
            mean_diff=diff,
            cohens_d=cohens_d(x, ctrl),
            cliffs_delta=cliffs_delta(x, ctrl) if both else None,
            better=None if diff is None else bool(sign * diff > 0),
        )
        if x.size < 2 or ctrl.size < 2:
            row = dataclasses.replace(row, note="needs at least 2 completed seeds on each side")
        elif max(x.var(ddof=1), ctrl.var(ddof=1)) <= RESOLUTION**2:
            row = dataclasses.replace(row, note="no variation across seeds on either side")
        else:
            with warnings.catch_warnings():
                # scipy warns when one side has no spread; Welch's test is still defined then
                warnings.simplefilter("ignore", RuntimeWarning)
                res = stats.ttest_ind(x, ctrl, equal_var=False)
            row = dataclasses.replace(
                row,
                t=finite(res.statistic),
                p=finite(res.pvalue),
                df=finite(getattr(res, "df", None)),
            )
        results.append(row)
    return _with_holm(results, alpha)


def t_test_power(effect: float, n: int, alpha: float) -> float:
    """Power of the two-sided two-sample t-test with ``n`` per group at standardised ``effect``
    (statsmodels; its return type varies, so it is made a float here)."""
    power = float(np.asarray(TTestIndPower().power(effect, nobs1=n, alpha=alpha), float).flat[0])
    if math.isfinite(power):
        return power
    # scipy's noncentral t gives NaN far in its tail (many seeds, large effect); the normal
    # approximation is exact enough there
    z, nc = float(stats.norm.ppf(1 - alpha / 2)), effect * math.sqrt(n / 2)
    return float(stats.norm.cdf(nc - z) + stats.norm.cdf(-nc - z))


def seeds_needed(sd: float, difference: float, alpha: float, power: float = 0.8) -> int | None:
    """Seeds per method a two-sided two-sample t-test needs to detect ``difference`` with
    ``power``, when seeds vary with standard deviation ``sd`` (at least 2; None if sd is 0)."""
    if not sd > 0 or not difference > 0:
        return None
    effect = difference / sd

    def enough(n: int) -> bool:
        return t_test_power(effect, n, alpha) >= power

    # The smallest integer n >= 2 with enough power: doubling, then bisection (power rises
    # with n; statsmodels' own solver fails to converge for some inputs).
    low, high = 1, 2
    while not enough(high):
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high


def min_detectable_difference(sd: float, n: int, alpha: float, power: float = 0.8) -> float | None:
    """The smallest difference a two-sided two-sample t-test with ``n`` seeds per method detects
    with ``power`` (None for fewer than 2 seeds or no spread)."""
    if n < 2 or not sd > 0:
        return None
    # bracket from the normal approximation's effect (power rises with the effect)
    high = 2 * float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * math.sqrt(2 / n)
    while t_test_power(high, n, alpha) < power:
        high *= 2
    effect = brentq(lambda e: t_test_power(e, n, alpha) - power, 0.0, high, xtol=1e-12)
    return float(effect) * sd


def wilcoxon_power(
    sd: float,
    n_blocks: int,
    difference: float,
    level: float,
    *,
    nsamples: int = 20000,
    seed: int = 0,
) -> float | None:
    """Power of the two-sided exact Wilcoxon signed-rank test at ``level`` over ``n_blocks``
    when block differences are normal with mean ``difference`` and standard deviation ``sd``.

    Continuous differences have no zeros or ties, so the exact p depends on W+ alone: the
    rejection region comes from W+'s exact null distribution (:func:`wilcoxon_rejection_region`),
    and W+ is simulated (seeded).
    """
    if n_blocks < 1 or not sd > 0:
        return None
    reject = wilcoxon_rejection_region(n_blocks, level)
    rng = np.random.default_rng(seed)
    d = rng.normal(difference, sd, size=(nsamples, n_blocks))
    ranks = stats.rankdata(np.abs(d), axis=1)
    w_plus = np.rint((ranks * (d > 0)).sum(axis=1)).astype(int)
    return float(reject[w_plus].mean())


@functools.lru_cache(maxsize=64)
def wilcoxon_rejection_region(n: int, level: float) -> np.ndarray:
    """For each W+ = 0..n(n+1)/2 of n untied, non-zero differences: whether the exact two-sided
    p, 2 min(P(W+ <= w), P(W+ >= w)) under the null, is below ``level``. The null counts of W+
    are the numbers of subsets of the ranks 1..n with each sum (a knapsack count)."""
    top = n * (n + 1) // 2
    counts = np.zeros(top + 1)
    counts[0] = 1.0
    for r in range(1, n + 1):
        counts[r:] = counts[r:] + counts[:-r].copy()
    null = counts / counts.sum()
    low, high = np.cumsum(null), np.cumsum(null[::-1])[::-1]
    p = np.minimum(1.0, 2 * np.minimum(low, high))
    region = p < level
    region.flags.writeable = False  # cached: shared by every caller
    return region
