"""Statistical tests behind the report, each returning a typed result.

Follows Demšar (2006) and Benavoli et al. (2016/2017): Friedman with the Iman–Davenport
correction, mean ranks and the Nemenyi critical difference; Wilcoxon signed-rank against a control
with Holm's correction, the matched-pairs rank-biserial correlation and Cohen's d_z over blocks;
the Bayesian signed-rank test with a region of practical equivalence; Welch's t-test, Cohen's d and
Cliff's delta for seeds within one block; the smallest p-value a rank test can attain; the seeds a
t-test needs for a given power. Differences and effect sizes
always keep the sign of method minus control in the metric's own units; ``better`` says whether
that is an improvement for the metric's direction. Two-sided p-values do not depend on direction.
"""

from __future__ import annotations

import dataclasses
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
    "attainable_holm_p",
    "bayesian_signed_rank",
    "blocks_needed",
    "cliffs_delta",
    "cohens_d",
    "describe",
    "friedman_iman_davenport",
    "holm",
    "matched_pairs_rank_biserial",
    "mean_ranks",
    "min_detectable_difference",
    "nemenyi_critical_difference",
    "seeds_needed",
    "t_test_power",
    "welch_vs_control",
    "wilcoxon_vs_control",
]

BAYES_SAMPLES = 20000
BAYES_SEED = 0
# Demšar (2006): ranks of zero differences are split evenly between R+ and R-.
ZERO_METHOD = "zsplit"


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
    a = np.asarray(x, float)[:, None]
    b = np.asarray(y, float)[None, :]
    return float(np.sign(a - b).mean())


def cohens_d(x: ArrayLike, y: ArrayLike) -> float | None:
    """Cohen's d of two independent samples with the pooled standard deviation."""
    a, b = np.asarray(x, float), np.asarray(y, float)
    if a.size < 2 or b.size < 2:
        return None
    pooled = ((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2)
    if pooled <= 0:
        return None
    return float((a.mean() - b.mean()) / math.sqrt(pooled))


def attainable_holm_p(n_blocks: int, n_comparisons: int) -> float:
    """The smallest Holm-adjusted p any of ``n_comparisons`` Wilcoxon tests over ``n_blocks``
    can reach: the exact two-sided p is at least 2/2^N, and Holm multiplies the smallest p by m."""
    if n_blocks < 1 or n_comparisons < 1:
        return 1.0
    return min(1.0, n_comparisons * 2.0 ** (1 - n_blocks))


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
    d = np.asarray(diff, float)
    if d.size == 0:
        return None
    ranks = stats.rankdata(np.abs(d))
    r_plus = ranks[d > 0].sum() + ranks[d == 0].sum() / 2
    r_minus = ranks[d < 0].sum() + ranks[d == 0].sum() / 2
    return float((r_plus - r_minus) / (r_plus + r_minus))


def mean_ranks(table: pd.DataFrame, higher_is_better: bool = True) -> pd.Series:
    """Average rank of each column over the rows (1 = best; ties share the average rank)."""
    oriented = -table.to_numpy(float) if higher_is_better else table.to_numpy(float)
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
    columns = [table[c].to_numpy(float) for c in table.columns]
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
    ctrl = table[control].to_numpy(float)
    results: list[SignedRankComparison] = []
    for label in table.columns:
        if label == control:
            continue
        x = table[label].to_numpy(float)
        diff = x - ctrl
        sd = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
        row = SignedRankComparison(
            label=str(label),
            n_blocks=int(diff.size),
            mean_diff=float(diff.mean()),
            median_diff=float(np.median(diff)),
            wins=int((sign * diff > 0).sum()),
            ties=int((diff == 0).sum()),
            losses=int((sign * diff < 0).sum()),
            rank_biserial=matched_pairs_rank_biserial(diff),
            cohens_dz=float(diff.mean() / sd) if sd > 0 else None,
            better=bool(sign * diff.mean() > 0),
        )
        if np.all(diff == 0):
            row = dataclasses.replace(row, note="identical to the control on every block: no test")
        else:
            res = stats.wilcoxon(x, ctrl, zero_method=ZERO_METHOD, alternative="two-sided")
            row = dataclasses.replace(row, statistic=finite(res.statistic), p=finite(res.pvalue))
        results.append(row)
    return _with_holm(results, alpha)


@dataclass(frozen=True)
class SignedRankPosterior:
    """Posterior probabilities of Benavoli's Bayesian signed-rank test."""

    p_control_better: float
    p_equivalent: float
    p_other_better: float


def bayesian_signed_rank(
    control: ArrayLike,
    other: ArrayLike,
    rope: float,
    *,
    nsamples: int = BAYES_SAMPLES,
    seed: int = BAYES_SEED,
) -> SignedRankPosterior:
    """Benavoli's Bayesian signed-rank test (baycomp) of ``other`` against ``control``.

    Values are oriented so that higher is better. Returns the posterior probabilities that the
    control is practically better, that the two are practically equivalent (difference within
    ±rope), and that ``other`` is practically better.
    """
    x, y = np.asarray(control, float), np.asarray(other, float)
    if rope > 0:
        left, eq, right = baycomp.SignedRankTest.probs(
            x, y, rope, nsamples=nsamples, random_state=seed
        )
    else:
        left, right = baycomp.SignedRankTest.probs(x, y, 0, nsamples=nsamples, random_state=seed)
        eq = 0.0
    return SignedRankPosterior(float(left), float(eq), float(right))


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
    ctrl = np.asarray(groups[control], float)
    results: list[SeedComparison] = []
    for label, vals in groups.items():
        if label == control:
            continue
        x = np.asarray(vals, float)
        both = bool(x.size and ctrl.size)
        diff = float(x.mean() - ctrl.mean()) if both else None
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
        elif x.var(ddof=1) == 0 and ctrl.var(ddof=1) == 0:
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
