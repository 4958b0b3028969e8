"""Every statistic against a hand-worked value or a direct, differently written computation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from podbench.reports.stats import (
    Summary,
    attainable_holm_p,
    bayesian_signed_rank,
    blocks_needed,
    cliffs_delta,
    cohens_d,
    describe,
    friedman_iman_davenport,
    holm,
    matched_pairs_rank_biserial,
    mean_ranks,
    min_detectable_difference,
    nemenyi_critical_difference,
    seeds_needed,
    t_test_power,
    welch_vs_control,
    wilcoxon_vs_control,
)

# Six blocks, four methods, no ties; higher is better. Ranks worked by hand:
#   A: 1 2 1 1 3 2 = 10   B: 2 1 2 3 2 3 = 13   C: 3 3 4 2 1 4 = 17   D: 4 4 3 4 4 1 = 20
FRIEDMAN_TABLE = pd.DataFrame(
    [
        [0.90, 0.80, 0.70, 0.60],
        [0.85, 0.90, 0.70, 0.60],
        [0.90, 0.80, 0.60, 0.70],
        [0.90, 0.70, 0.80, 0.60],
        [0.70, 0.80, 0.90, 0.60],
        [0.90, 0.80, 0.70, 0.95],
    ],
    columns=["A", "B", "C", "D"],
)


def test_describe_matches_hand_worked_t_interval() -> None:
    out = describe([1.0, 2.0, 3.0, 4.0])
    # mean 2.5, s = sqrt(5/3); t_{0.975, 3} = 3.182446 (printed t tables: 3.182)
    half = 3.182446305 * math.sqrt(5 / 3) / 2
    assert out.n == 4
    assert out.mean == pytest.approx(2.5)
    assert out.std == pytest.approx(math.sqrt(5 / 3))
    assert out.ci_low == pytest.approx(2.5 - half, abs=1e-6)
    assert out.ci_high == pytest.approx(2.5 + half, abs=1e-6)


def test_describe_single_value_has_no_spread_or_interval() -> None:
    assert describe([0.7]) == Summary(n=1, mean=0.7, std=None, ci_low=None, ci_high=None)
    assert describe([]).mean is None


def test_holm_by_hand() -> None:
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max so far 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_cliffs_delta_by_hand() -> None:
    # 1 vs (2,2,4): -3; 2 vs (2,2,4): -1; 3 vs (2,2,4): +1  -> -3/9
    assert cliffs_delta([1, 2, 3], [2, 2, 4]) == pytest.approx(-1 / 3)
    assert cliffs_delta([5, 6], [1, 2]) == 1.0


def test_cohens_d_by_hand() -> None:
    # means 2 and 5, both variances 1 -> pooled sd 1 -> d = -3
    assert cohens_d([1, 2, 3], [4, 5, 6]) == pytest.approx(-3.0)
    assert cohens_d([1], [2, 3]) is None
    assert cohens_d([1, 1], [1, 1]) is None


def test_mean_ranks_by_hand() -> None:
    ranks = mean_ranks(FRIEDMAN_TABLE)
    assert ranks.to_list() == pytest.approx([10 / 6, 13 / 6, 17 / 6, 20 / 6])
    # lower-is-better reverses the order: rank = k + 1 - rank
    assert mean_ranks(FRIEDMAN_TABLE, higher_is_better=False).to_list() == pytest.approx(
        [5 - 10 / 6, 5 - 13 / 6, 5 - 17 / 6, 5 - 20 / 6]
    )


def test_friedman_and_iman_davenport_from_formula() -> None:
    n, k = 6, 4
    r = np.array([10, 13, 17, 20]) / 6
    chi2 = 12 * n / (k * (k + 1)) * ((r**2).sum() - k * (k + 1) ** 2 / 4)
    assert chi2 == pytest.approx(5.8)  # worked by hand: 3.6 * 58/36
    f_ff = (n - 1) * chi2 / (n * (k - 1) - chi2)  # 29 / 12.2
    out = friedman_iman_davenport(FRIEDMAN_TABLE)
    assert out.chi2 == pytest.approx(5.8)
    assert out.chi2_p == pytest.approx(stats.chi2.sf(5.8, 3))
    assert out.F == pytest.approx(29 / 12.2)
    assert (out.df1, out.df2) == (3, 15)
    assert out.p == pytest.approx(stats.f.sf(f_ff, 3, 15))
    assert out.F == pytest.approx(f_ff)


def test_iman_davenport_with_complete_agreement_is_infinite() -> None:
    table = pd.DataFrame([[3.0, 2.0, 1.0]] * 5, columns=["a", "b", "c"])
    out = friedman_iman_davenport(table)
    assert out.chi2 == pytest.approx(10.0)  # N(k-1): every block ranks a > b > c
    assert out.F is None and out.F_infinite and out.p == 0.0


@pytest.mark.parametrize(
    ("k", "alpha", "q_table"),
    # Demšar (2006), Table 5: two-tailed Nemenyi critical values
    [
        (2, 0.05, 1.960),
        (3, 0.05, 2.343),
        (4, 0.05, 2.569),
        (5, 0.05, 2.728),
        (10, 0.05, 3.164),
        (4, 0.10, 2.291),
    ],
)
def test_nemenyi_q_alpha_matches_demsar_table(k: int, alpha: float, q_table: float) -> None:
    assert nemenyi_critical_difference(k, 10, alpha).q_alpha == pytest.approx(q_table, abs=1e-3)


def test_nemenyi_cd_for_k4_n6() -> None:
    # CD = 2.569 * sqrt(4*5 / (6*6)) = 2.569 * 0.745356
    assert nemenyi_critical_difference(4, 6).cd == pytest.approx(
        2.569 * math.sqrt(20 / 36), abs=1e-3
    )


def test_wilcoxon_vs_control_with_exact_p_and_holm_by_hand() -> None:
    control = np.array([80.0, 81, 82, 83, 84, 85])
    better = control + np.array([0.1, 0.3, 0.2, 0.6, 0.5, 0.4])  # all 6 positive: p = 2/64
    mixed = control + np.array([0.1, -0.3, 0.2, -0.6, 0.5, 0.45])
    table = pd.DataFrame({"ctrl": control, "better": better, "mixed": mixed})
    rows = {r.label: r for r in wilcoxon_vs_control(table, "ctrl")}
    assert rows["better"].p == pytest.approx(2 / 64)
    # mixed: ranks of |d| 0.1:1 0.2:2 0.3:3 0.45:4 0.5:5 0.6:6; W- = 3+6 = 9; two-sided exact
    p_mixed = stats.wilcoxon(mixed - control, method="exact").pvalue
    assert stats.wilcoxon(mixed - control, method="exact").statistic == 9
    assert rows["mixed"].p == pytest.approx(p_mixed)
    # Holm with two tests: smaller * 2, larger * 1 (but never below the first)
    assert rows["better"].p_holm == pytest.approx(2 * 2 / 64)
    assert rows["mixed"].p_holm == pytest.approx(max(p_mixed, 4 / 64))
    assert (rows["better"].wins, rows["better"].losses) == (6, 0)
    assert rows["better"].mean_diff == pytest.approx(0.35)
    assert rows["better"].significant is False  # 0.0625 > 0.05


def test_wilcoxon_identical_columns_give_no_p_value() -> None:
    table = pd.DataFrame({"ctrl": [1.0, 2, 3, 4, 5], "same": [1.0, 2, 3, 4, 5]})
    (row,) = wilcoxon_vs_control(table, "ctrl")
    assert row.p is None and row.p_holm is None and "identical" in row.note


def test_welch_matches_its_formula_and_holm() -> None:
    ctrl = [90.0, 91.0, 92.0]
    a = [85.0, 86.0, 88.0, 87.0]
    b = [91.5, 90.5, 92.5]
    rows = {r.label: r for r in welch_vs_control({"ctrl": ctrl, "a": a, "b": b}, "ctrl")}
    for label, x in (("a", a), ("b", b)):
        x_, c_ = np.array(x), np.array(ctrl)
        va, vc = x_.var(ddof=1) / x_.size, c_.var(ddof=1) / c_.size
        t = (x_.mean() - c_.mean()) / math.sqrt(va + vc)
        df = (va + vc) ** 2 / (va**2 / (x_.size - 1) + vc**2 / (c_.size - 1))
        assert rows[label].t == pytest.approx(t)
        assert rows[label].df == pytest.approx(df)
        assert rows[label].p == pytest.approx(2 * stats.t.sf(abs(t), df))
    pa, pb = rows["a"].p, rows["b"].p
    assert pa < pb
    assert rows["a"].p_holm == pytest.approx(2 * pa)
    assert rows["b"].p_holm == pytest.approx(max(pb, 2 * pa))
    assert rows["a"].significant and not rows["b"].significant


def test_welch_refuses_to_give_a_p_value_it_cannot() -> None:
    rows = {
        r.label: r
        for r in welch_vs_control(
            {"ctrl": [90.0, 91.0], "one": [80.0], "flat": [90.0, 90.0]}, "ctrl"
        )
    }
    assert rows["one"].p is None and "at least 2" in rows["one"].note
    assert rows["flat"].p is not None  # the control varies, so Welch is defined
    (flat,) = welch_vs_control({"ctrl": [90.0, 90.0], "flat": [91.0, 91.0]}, "ctrl")
    assert flat.p is None and "no variation" in flat.note


def _dirichlet_signed_rank(
    control: np.ndarray, other: np.ndarray, rope: float, n: int, seed: int
) -> np.ndarray:
    """Benavoli et al. (2014), written independently: Dirichlet(0.5, 1, ..., 1) weights on the
    pseudo-observation 0 and the differences; the three regions from Walsh averages."""
    z = np.concatenate([[0.0], other - control])
    alpha = np.ones(z.size)
    alpha[0] = 0.5
    w = np.random.default_rng(seed).dirichlet(alpha, size=n)  # (n, m)
    walsh = (z[:, None] + z[None, :]) / 2
    right = (walsh > rope).astype(float) + 0.5 * (walsh == rope)
    left = (walsh < -rope).astype(float) + 0.5 * (walsh == -rope)
    th_r = np.einsum("si,ij,sj->s", w, right, w)
    th_l = np.einsum("si,ij,sj->s", w, left, w)
    th = np.stack([th_l, 1 - th_l - th_r, th_r], axis=1)
    return np.bincount(th.argmax(axis=1), minlength=3) / n


def test_bayesian_signed_rank_matches_independent_dirichlet_sampling() -> None:
    control = np.array([90.0, 85.0, 80.0, 92.0, 88.0, 75.0])
    other = control + np.array([0.5, 1.5, -0.3, 2.0, 0.8, 1.2])
    got = bayesian_signed_rank(control, other, rope=1.0, nsamples=20000, seed=1)
    ref = _dirichlet_signed_rank(control, other, 1.0, 40000, seed=7)
    assert got.p_control_better + got.p_equivalent + got.p_other_better == pytest.approx(1.0)
    assert got.p_control_better == pytest.approx(ref[0], abs=0.02)
    assert got.p_equivalent == pytest.approx(ref[1], abs=0.02)
    assert got.p_other_better == pytest.approx(ref[2], abs=0.02)
    assert 0.05 < got.p_other_better < 0.95  # an informative case, not a trivial one


def test_bayesian_signed_rank_limits_by_hand() -> None:
    control = np.array([80.0, 81, 82, 83, 84, 85, 86])
    # every difference +5 points, far outside a ROPE of 1: the other method is better
    far = bayesian_signed_rank(control, control + 5, rope=1.0)
    assert far.p_other_better > 0.99
    # every difference within ±0.2 of zero: practically equivalent
    near = bayesian_signed_rank(
        control, control + np.array([0.1, -0.2, 0.05, 0.0, -0.1, 0.2, 0.1]), rope=1.0
    )
    assert near.p_equivalent > 0.99
    # without a ROPE there are only two outcomes
    worse = bayesian_signed_rank(control, control - 3, rope=0.0)
    assert worse.p_equivalent == 0.0 and worse.p_control_better > 0.99


def test_two_methods_over_six_blocks_use_wilcoxon_without_friedman(
    results_factory, record_maker
) -> None:
    from podbench.reports.analysis import analyse
    from podbench.reports.records import load_results, metric_info

    pod = [0.90, 0.85, 0.80, 0.70, 0.95, 0.60]
    ce = [0.89, 0.86, 0.78, 0.67, 0.91, 0.55]
    table = {}
    for b in range(6):
        table[("pod", f"d{b}", "mlp")] = [pod[b], pod[b] + 0.002]
        table[("ce", f"d{b}", "mlp")] = [ce[b], ce[b] + 0.002]
    data = load_results(results_factory(table))
    out = analyse(data, control="pod", metric=metric_info("final_test_acc"), rope=1.0, alpha=0.05)
    across = out.across_blocks
    assert out.primary_analysis == "across-blocks"
    assert across.friedman is None and across.nemenyi is None
    (w,) = across.wilcoxon
    diffs = (np.array(ce) - np.array(pod)) * 100
    assert w.p == pytest.approx(stats.wilcoxon(diffs).pvalue)
    assert w.p_holm == pytest.approx(w.p)  # one comparison: Holm changes nothing
    assert (w.wins, w.losses) == (1, 5)
    assert w.mean_diff == pytest.approx(diffs.mean())
    assert w.cohens_dz == pytest.approx(diffs.mean() / diffs.std(ddof=1))
    assert across.mean_ranks == pytest.approx({"pod": 7 / 6, "ce": 11 / 6})


def test_lower_is_better_metric_flips_ranks_and_verdicts(results_factory) -> None:
    from podbench.reports.analysis import analyse
    from podbench.reports.records import load_results, metric_info

    # conftest's records have wall_time_s = 10 + seed for every method: make 'slow' slower
    # (six blocks: the fewest with which one Wilcoxon test can reach p < 0.05)
    root = results_factory(
        {("pod", f"d{b}", "mlp"): [0.9, 0.9] for b in range(6)}
        | {("slow", f"d{b}", "mlp"): [0.9, 0.9] for b in range(6)}
    )
    data = load_results(root)
    data.runs.loc[data.runs["label"] == "slow", "wall_time_s"] += 5.0
    out = analyse(data, control="pod", metric=metric_info("wall_time_s"), rope=0.5, alpha=0.05)
    assert out.across_blocks.mean_ranks == {"pod": 1.0, "slow": 2.0}
    (w,) = out.across_blocks.wilcoxon
    assert w.mean_diff == pytest.approx(5.0) and w.better is False
    assert w.rank_biserial == 1.0  # effect sizes keep the sign of method minus control
    within = out.within_blocks[0].comparisons[0]
    # seeds 0, 1 -> pod 10, 11 s and slow 15, 16 s: d = 5 / sd(0.707), delta = +1, slower = worse
    assert within.mean_diff == pytest.approx(5.0)
    assert within.cohens_d == pytest.approx(5 / np.sqrt(0.5))
    assert within.cliffs_delta == 1.0 and within.better is False
    (b,) = out.across_blocks.bayesian
    assert b.p_control_better > 0.95


def test_control_without_completed_runs_in_a_block_gives_no_p_value(
    results_factory, record_maker
) -> None:
    from podbench.reports.analysis import analyse
    from podbench.reports.records import load_results, metric_info

    diverged = [
        record_maker(
            "pod",
            "d0",
            "mlp",
            s,
            None,
            status="diverged",
            error={"type": "Divergence", "message": "nan", "traceback": "", "epoch": 1},
        )
        for s in (0, 1)
    ]
    root = results_factory({("ce", "d0", "mlp"): [0.8, 0.82]}, extra=diverged)
    out = analyse(
        load_results(root),
        control="pod",
        metric=metric_info("final_test_acc"),
        rope=1.0,
        alpha=0.05,
        failed="exclude",
    )
    (block,) = out.within_blocks
    assert block.comparisons == [] and "no completed run" in block.note
    assert out.counts.diverged == 2 and len(out.excluded_runs) == 2
    assert out.primary_analysis == "within-blocks"


def test_bayesian_signed_rank_closed_form_with_one_difference() -> None:
    # One block, difference d = 3 points, ROPE r = 1. The Dirichlet(0.5, 1) weights on the
    # pseudo-observation 0 and on d are (1 - w, w) with w ~ Beta(1, 0.5). Walsh averages:
    # (0+0)/2 = 0 in the ROPE, (0+d)/2 = 1.5 and d = 3 to the right, nothing to the left:
    #   theta_right = 2(1-w)w + w^2 = w(2 - w), theta_rope = (1 - w)^2.
    # Right wins iff 2w^2 - 4w + 1 < 0 iff w > 1 - 1/sqrt(2); P(w > c) = (1 - c)^0.5 = 2^(-1/4).
    got = bayesian_signed_rank([80.0], [83.0], rope=1.0, nsamples=20000, seed=3)
    assert got.p_other_better == pytest.approx(2**-0.25, abs=0.012)
    assert got.p_equivalent == pytest.approx(1 - 2**-0.25, abs=0.012)
    assert got.p_control_better == 0.0


@pytest.mark.parametrize("n", [4, 5, 6, 7, 8])
def test_smallest_exact_wilcoxon_p_is_two_over_two_to_the_n(n: int) -> None:
    # every difference positive and distinct: the most extreme outcome of the exact test
    p = stats.wilcoxon(np.arange(1.0, n + 1), method="exact").pvalue
    assert p == pytest.approx(2 / 2**n)
    assert attainable_holm_p(n, 1) == pytest.approx(p)
    # Holm multiplies the smallest of m p-values by m
    assert attainable_holm_p(n, 3) == pytest.approx(min(1.0, 3 * p))


def test_blocks_needed_by_hand() -> None:
    # 1 comparison: 2/2^5 = 0.0625 >= 0.05, 2/2^6 = 0.03125 < 0.05
    assert blocks_needed(1, 0.05) == 6
    # 2 comparisons: 2 * 2/2^6 = 0.0625, 2 * 2/2^7 = 0.03125
    assert blocks_needed(2, 0.05) == 7
    # 5 comparisons: 5 * 2/2^7 = 0.078, 5 * 2/2^8 = 0.039
    assert blocks_needed(5, 0.05) == 8
    assert blocks_needed(1, 0.10) == 5  # 0.0625 < 0.10
    assert attainable_holm_p(0, 2) == 1.0


def test_rank_biserial_by_hand_and_against_scipy_zsplit() -> None:
    # |d| ranks: the two zeros share 1.5, then 1 -> 3, 2 -> 4, 3 -> 5, 4 -> 6 (sum 21)
    # R+ = 3 + 5 + 6 + 1.5 = 15.5, R- = 4 + 1.5 = 5.5: r = 10 / 21
    d = np.array([1.0, -2.0, 0.0, 3.0, 0.0, 4.0])
    assert matched_pairs_rank_biserial(d) == pytest.approx(10 / 21)
    r_plus = stats.wilcoxon(d, zero_method="zsplit", alternative="greater").statistic
    assert matched_pairs_rank_biserial(d) == pytest.approx(2 * r_plus / 21 - 1)
    rng = np.random.default_rng(5)
    for _ in range(20):
        x = np.round(rng.normal(0, 1, 9), 1)  # rounding makes ties and zeros
        s = x.size * (x.size + 1) / 2
        r_plus = stats.wilcoxon(x, zero_method="zsplit", alternative="greater").statistic
        assert matched_pairs_rank_biserial(x) == pytest.approx(2 * r_plus / s - 1)
    # a method that wins every block, by however little, has r = +1
    assert matched_pairs_rank_biserial([0.01, 0.02, 0.01, 0.03, 0.01]) == 1.0
    assert matched_pairs_rank_biserial([]) is None


def test_wilcoxon_with_zero_differences_splits_them_as_scipy_zsplit() -> None:
    control = np.array([80.0, 81, 82, 83, 84, 85, 86, 87])
    diff = np.array([0.5, 0.0, 1.0, -0.2, 0.0, 0.7, 0.3, 0.9])
    table = pd.DataFrame({"ctrl": control, "m": control + diff})
    (row,) = wilcoxon_vs_control(table, "ctrl")
    ref = stats.wilcoxon(table["m"], table["ctrl"], zero_method="zsplit")
    assert row.p == pytest.approx(ref.pvalue)
    assert row.statistic == pytest.approx(ref.statistic)
    assert row.ties == 2 and (row.wins, row.losses) == (5, 1)
    r_plus = stats.wilcoxon(diff, zero_method="zsplit", alternative="greater").statistic
    assert row.rank_biserial == pytest.approx(2 * r_plus / 36 - 1)
    assert row.cohens_dz == pytest.approx(diff.mean() / diff.std(ddof=1))


def _t_test_power(n: int, effect: float, alpha: float) -> float:
    """Power of the two-sided two-sample t-test with n per group, written out with the
    noncentral t distribution: df = 2n - 2, noncentrality effect * sqrt(n / 2)."""
    df = 2 * n - 2
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = effect * math.sqrt(n / 2)
    return stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)


@pytest.mark.parametrize(
    ("sd", "diff"), [(0.3, 0.5), (0.8, 0.5), (1.5, 2.0), (0.05, 0.5), (12.0, 0.5)]
)
def test_seeds_needed_against_the_power_formula_written_out(sd: float, diff: float) -> None:
    n = seeds_needed(sd, diff, 0.05, 0.8)
    assert n is not None and n >= 2
    assert _t_test_power(n, diff / sd, 0.05) >= 0.8
    if n > 2:  # one seed fewer would not do
        assert _t_test_power(n - 1, diff / sd, 0.05) < 0.8
    # the normal approximation n = 2 (z_0.975 + z_0.8)^2 / d^2 underestimates it only slightly
    approx = 2 * (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) ** 2 / (diff / sd) ** 2
    assert n >= approx - 1e-9


# (12.0, 139): statsmodels' solve_power returns an array there (found by a real tune run)
@pytest.mark.parametrize(("sd", "n"), [(0.4, 3), (1.0, 5), (2.5, 10), (12.0, 139), (1.0, 3000)])
def test_min_detectable_difference_has_the_power(sd: float, n: int) -> None:
    mde = min_detectable_difference(sd, n, 0.05, 0.8)
    assert mde is not None
    assert _t_test_power(n, mde / sd, 0.05) == pytest.approx(0.8, abs=1e-4)
    assert min_detectable_difference(sd, 1, 0.05) is None
    assert seeds_needed(0.0, 0.5, 0.05) is None


def test_t_test_power_against_the_formula_and_far_in_the_tail() -> None:
    for n, effect in ((3, 1.0), (10, 0.5), (139, 0.3), (3000, 0.1)):
        assert t_test_power(effect, n, 0.05) == pytest.approx(_t_test_power(n, effect, 0.05))
    # scipy's noncentral t returns NaN here; the power is 1 to many digits (z = 38.7 - 1.96)
    assert t_test_power(1.0, 3000, 0.05) == pytest.approx(1.0)
    assert t_test_power(0.0, 50, 0.05) == pytest.approx(0.05)  # no effect: the test's size
