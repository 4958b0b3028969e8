"""Issue 24 (1): values equal in exact arithmetic, or 1e-12 apart, are ties everywhere the
report compares two numbers: counts, ranks, tests, effect sizes and P(A > B)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from podbench.reports.bootstrap import probability_of_improvement
from podbench.reports.stats import (
    bayesian_signed_rank,
    cliffs_delta,
    friedman_iman_davenport,
    matched_pairs_rank_biserial,
    mean_ranks,
    welch_vs_control,
    wilcoxon_vs_control,
)

TEST_IMAGES = 360  # scikit-learn's digits test split


def _equal_count_pairs(n_blocks: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Per block, correct-image counts of two methods over 3 seeds with the same total, chosen so
    that the float means of the accuracies (in %) differ: equal in exact arithmetic only."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n_blocks:
        a = rng.integers(250, 350, 3)
        k = int(rng.integers(1, 5))
        b = a + np.array([k, -k, 0])
        if np.mean(a / TEST_IMAGES * 100) != np.mean(b / TEST_IMAGES * 100):
            out.append(([int(v) for v in a], [int(v) for v in b]))
    return out


def test_equal_correct_counts_are_ties_in_the_report(results_factory) -> None:
    from podbench.reports.analysis import analyse
    from podbench.reports.records import load_results, metric_info

    pairs = _equal_count_pairs(8)
    table = {}
    for b, (pod, soft) in enumerate(pairs):
        table[("pod", f"d{b}", "mlp")] = [k / TEST_IMAGES for k in pod]
        table[("softmax", f"d{b}", "mlp")] = [k / TEST_IMAGES for k in soft]
    data = load_results(results_factory(table))
    out = analyse(data, control="pod", metric=metric_info("final_test_acc"), rope=1.0, alpha=0.05)
    (w,) = out.across_blocks.wilcoxon
    # as counts: the totals are equal in every block, so 0 wins, 8 ties, 0 losses
    assert all(sum(a) == sum(b) for a, b in pairs)
    assert (w.wins, w.ties, w.losses) == (0, 8, 0)
    assert w.p is None and w.significant is False and "identical" in (w.note or "")
    assert w.mean_diff == 0.0 and w.rank_biserial == 0.0 and w.cohens_dz is None
    assert out.across_blocks.mean_ranks == {"pod": 1.5, "softmax": 1.5}
    (b,) = out.across_blocks.bayesian
    assert b.mass_equivalent == pytest.approx(1.0)
    # P(softmax > pod), per block from the integer counts (ties half), averaged
    won = [
        np.mean([[1.0 if x > y else 0.5 if x == y else 0.0 for y in pod] for x in soft])
        for pod, soft in pairs
    ]
    (imp,) = out.bootstrap.improvement
    assert imp.estimate == pytest.approx(np.mean(won))


NEAR = 1e-12


def test_near_ties_give_the_exact_ties_results_of_scipy() -> None:
    ctrl = np.array([90.0, 85.0, 80.0, 75.0, 70.0, 65.0, 60.0, 55.0])
    exact = ctrl + np.array([0.0, 0.0, 1.0, 2.0, -0.5, 3.0, 0.0, 1.5])
    near = exact + np.array([NEAR, -NEAR, 0, 0, 0, 0, 2 * NEAR, 0])
    table = pd.DataFrame({"ctrl": ctrl, "m": near})
    (w,) = wilcoxon_vs_control(table, "ctrl")
    d = exact - ctrl  # exactly three zeros
    assert (w.wins, w.ties, w.losses) == (4, 3, 1)
    assert w.p == pytest.approx(stats.wilcoxon(d, zero_method="zsplit").pvalue)
    # rank-biserial by hand: |d| ranks 0,0,0 -> 2,2,2; 0.5 -> 4; 1 -> 5; 1.5 -> 6; 2 -> 7; 3 -> 8
    # R+ = 5 + 6 + 7 + 8 + 3 = 29, R- = 4 + 3 = 7 -> (29 - 7) / 36
    assert w.rank_biserial == pytest.approx(22 / 36)
    assert matched_pairs_rank_biserial(near - ctrl) == pytest.approx(22 / 36)
    # ranks: ties share the average rank
    assert mean_ranks(table).to_dict() == pytest.approx({"ctrl": 13.5 / 8, "m": 10.5 / 8})


def test_near_ties_in_friedman_and_effect_sizes() -> None:
    base = np.array([[0.9, 0.8, 0.7], [0.9, 0.9, 0.7], [0.8, 0.8, 0.8], [0.7, 0.9, 0.6]]) * 100
    jitter = np.array([[0, NEAR, 0], [NEAR, -NEAR, 0], [0, NEAR, -NEAR], [0, 0, NEAR]])
    got = friedman_iman_davenport(pd.DataFrame(base + jitter, columns=list("abc")))
    ref = stats.friedmanchisquare(*base.T)
    assert got.chi2 == pytest.approx(ref.statistic) and got.chi2_p == pytest.approx(ref.pvalue)
    # Cliff's delta by hand: (1, 1) ties; x wins 6 of the other 8 pairs, loses 2 -> (6 - 2) / 9
    x = np.array([1.0, 2.0, 3.0]) + NEAR
    y = np.array([1.0, 2.5, 0.5])
    assert cliffs_delta(x, y) == pytest.approx((6 - 2) / 9)


def test_near_ties_in_probability_of_improvement_and_bayes() -> None:
    a = [[80.0 + NEAR, 81.0], [70.0, 71.0 - NEAR]]
    b = [[80.0, 81.0], [70.0, 71.0]]
    # equal runs: per block (80, 80) and (81, 81) tie (half each), 80 < 81, 81 > 80 -> 2 / 4;
    # counted as wins, 80 + 1e-12 beating 80 would give 2.5 / 4
    got = probability_of_improvement(a, b, reps=200, seed=0)
    assert got.estimate == 0.5
    post = bayesian_signed_rank(np.zeros(6), np.full(6, NEAR), rope=0.0, nsamples=2000)
    # all differences zero: baycomp splits every Walsh average half and half
    assert post.mass_other_better == pytest.approx(0.5) == post.mass_control_better


def test_lower_is_better_with_ties() -> None:
    ctrl = np.array([10.0, 12.0, 14.0, 16.0, 18.0, 20.0])
    other = ctrl + np.array([1.0, NEAR, -2.0, 3.0, 0.5, -NEAR])  # slower in 3, tie in 2
    table = pd.DataFrame({"ctrl": ctrl, "other": other})
    (w,) = wilcoxon_vs_control(table, "ctrl", higher_is_better=False)
    assert (w.wins, w.ties, w.losses) == (1, 2, 3)
    assert w.better is False  # mean difference +0.5 s: worse for a time
    ranks = mean_ranks(table, higher_is_better=False).to_dict()
    # per block (lower first): 1|2, tie 1.5, 2|1, 1|2, 1|2, tie 1.5
    assert ranks == pytest.approx({"ctrl": 8 / 6, "other": 10 / 6})
    lo = probability_of_improvement(
        [[v] for v in other], [[v] for v in ctrl], higher_is_better=False, reps=100
    )
    assert lo.estimate == pytest.approx((0 + 0.5 + 1 + 0 + 0 + 0.5) / 6)


def test_welch_sees_no_spread_in_near_equal_seeds() -> None:
    groups = {"ctrl": [90.0, 90.0 + NEAR, 90.0 - NEAR], "m": [91.0, 91.0 + NEAR, 91.0]}
    (c,) = welch_vs_control(groups, "ctrl")
    assert c.p is None and "no variation" in (c.note or "")
    assert c.mean_diff == pytest.approx(1.0) and c.cliffs_delta == 1.0


def test_an_accuracy_equal_to_the_target_reaches_it() -> None:
    from podbench.reports.convergence import time_to_target

    # 297 of 360 correct is 82.5 %, exactly 0.99 x (300 of 360); in floating point the target
    # comes out 82.50000000000001, above the accuracy
    acc = 100 * (297 / 360)
    target = 0.99 * (100 * (300 / 360))
    assert acc < target  # the float error
    assert Fraction(297, 360) == Fraction(99, 100) * Fraction(300, 360)  # exact equality
    epochs, seconds = time_to_target([80.0, acc, 83.0], [1.0, 2.0, 3.0], target)
    assert (epochs, seconds) == (2.0, 3.0)
