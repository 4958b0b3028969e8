"""Probability of improvement and IQM against hand-worked values and a plain numpy bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from podbench.reports.bootstrap import interquartile_mean, probability_of_improvement

# Three blocks, unequal seeds; higher is better.
A = [[90.0, 91.0, 92.0], [80.0, 82.0], [70.0, 71.0, 75.0, 72.0]]
B = [[89.0, 91.0, 93.0], [81.0, 79.0, 78.0], [70.0, 69.0, 73.0]]


def _pairs_won(a: list[float], b: list[float]) -> float:
    """Share of all (a, b) pairs where a is larger, ties half: written as two loops."""
    score = 0.0
    for x in a:
        for y in b:
            score += 1.0 if x > y else 0.5 if x == y else 0.0
    return score / (len(a) * len(b))


def _plain_bootstrap_poi(a, b, reps: int, seed: int) -> tuple[float, float]:
    """Stratified bootstrap as a loop: per replicate, per block, draw each method's runs with
    replacement, average the blocks' P(A > B); a 95% percentile interval."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(reps):
        per_block = []
        for xa, xb in zip(a, b, strict=True):
            ra = [xa[i] for i in rng.integers(0, len(xa), len(xa))]
            rb = [xb[i] for i in rng.integers(0, len(xb), len(xb))]
            per_block.append(_pairs_won(ra, rb))
        values.append(sum(per_block) / len(per_block))
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def _iqm(values: list[float]) -> float:
    """Mean of the middle half: drop floor(n/4) from each end of the sorted values."""
    v = sorted(values)
    cut = len(v) // 4
    middle = v[cut : len(v) - cut]
    return sum(middle) / len(middle)


def test_probability_of_improvement_point_estimate_by_hand() -> None:
    # block 1 against (89, 91, 93): 90 beats 89 -> 1; 91 beats 89 and ties 91 -> 1.5;
    # 92 beats 89 and 91 -> 2: (1 + 1.5 + 2) / 9
    assert _pairs_won(A[0], B[0]) == pytest.approx(4.5 / 9)
    expected = np.mean([_pairs_won(x, y) for x, y in zip(A, B, strict=True)])
    got = probability_of_improvement(A, B, reps=200, seed=1)
    assert got.estimate == pytest.approx(expected)
    # lower is better reverses every comparison: P becomes 1 - P
    low = probability_of_improvement(A, B, higher_is_better=False, reps=200, seed=1)
    assert low.estimate == pytest.approx(1 - expected)


def test_probability_of_improvement_interval_matches_a_plain_bootstrap() -> None:
    got = probability_of_improvement(A, B, reps=4000, seed=0)
    lo, hi = _plain_bootstrap_poi(A, B, reps=4000, seed=20211206)
    assert got.ci_low == pytest.approx(lo, abs=0.02)
    assert got.ci_high == pytest.approx(hi, abs=0.02)
    assert got.ci_low < got.estimate < got.ci_high
    # seeded: the same call gives the same interval
    assert probability_of_improvement(A, B, reps=4000, seed=0) == got


def test_probability_of_improvement_of_a_method_winning_every_pair() -> None:
    a = [[2.0, 3.0], [5.0, 6.0, 7.0]]
    b = [[0.0, 1.0], [1.0, 2.0]]
    got = probability_of_improvement(a, b, reps=500, seed=3)
    assert (got.estimate, got.ci_low, got.ci_high) == (1.0, 1.0, 1.0)


def test_interquartile_mean_by_hand_and_against_a_plain_bootstrap() -> None:
    # pooled: 70 71 72 75 80 82 90 91 92 (n = 9): drop 2 at each end -> 72 75 80 82 90
    assert _iqm([v for g in A for v in g]) == pytest.approx((72 + 75 + 80 + 82 + 90) / 5)
    got = interquartile_mean(A, reps=4000, seed=0)
    assert got.estimate == pytest.approx(399 / 5)
    rng = np.random.default_rng(1234)
    boot = []
    for _ in range(4000):
        sample = [g[i] for g in A for i in rng.integers(0, len(g), len(g))]
        boot.append(_iqm(sample))
    assert got.ci_low == pytest.approx(np.percentile(boot, 2.5), abs=0.3)
    assert got.ci_high == pytest.approx(np.percentile(boot, 97.5), abs=0.3)
    assert got.ci_low < got.estimate < got.ci_high
