"""Issue 26: the verdict's protocol. Attainable p from the actual zeros, block bootstrap for
single-run blocks, Nemenyi only after Friedman rejects, posterior mass in the ROPE, TOST, power
across blocks, IQM normalised per block, the dataset-level analysis, and no "best" when all tie."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from podbench.reports.bootstrap import (
    interquartile_mean,
    normalise_per_block,
    probability_of_improvement,
)
from podbench.reports.stats import (
    attainable_wilcoxon_p,
    bayesian_signed_rank,
    holm_floors,
    tost_paired,
    wilcoxon_power,
    wilcoxon_vs_control,
)


def _analyse(root: Path, **kw):
    from podbench.reports.analysis import analyse
    from podbench.reports.records import load_results, metric_info

    data = load_results(root)
    metric = metric_info(kw.pop("metric", "final_test_acc"))
    return analyse(data, control="pod", metric=metric, rope=1.0, alpha=0.05, **kw)


# -- attainable p from the zero pattern -------------------------------------------------------


def test_attainable_p_with_zero_differences_by_hand() -> None:
    # 8 blocks, one zero: the zero keeps its rank, split; 7 decide: 2 / 2^7
    assert attainable_wilcoxon_p([0, 1, 2, 3, 4, 5, 6, 7]) == pytest.approx(2 / 2**7)
    assert attainable_wilcoxon_p([0, 0, 1, 2, 3, 4, 5, 6]) == pytest.approx(2 / 2**6)
    assert attainable_wilcoxon_p(np.arange(1, 9)) == pytest.approx(2 / 2**8)
    assert attainable_wilcoxon_p(np.zeros(8)) == 1.0


def _holm_floor_by_enumeration(floors: list[float]) -> list[float]:
    """Each test at its floor, every other either at its floor or at 1: the least adjusted p
    (statsmodels' Holm) over all those configurations."""
    m, out = len(floors), []
    for i in range(m):
        best = 1.0
        others = [j for j in range(m) if j != i]
        for lows in itertools.product([True, False], repeat=len(others)):
            p = [1.0] * m
            p[i] = floors[i]
            for j, low in zip(others, lows, strict=True):
                p[j] = floors[j] if low else 1.0
            best = min(best, float(multipletests(p, method="holm")[1][i]))
        out.append(best)
    return out


@pytest.mark.parametrize(
    "floors",
    [[1 / 64, 1 / 128, 1 / 64, 1 / 64], [1 / 64] * 4, [1 / 128, 1 / 32, 1 / 16], [0.5, 0.01]],
)
def test_holm_floors_against_enumeration(floors: list[float]) -> None:
    assert holm_floors(floors) == pytest.approx(_holm_floor_by_enumeration(floors))


def test_seven_wins_one_tie_over_eight_blocks_is_unattainable_not_a_null_result() -> None:
    from podbench.reports.verdicts import _wilcoxon

    # the case: +2.62 points, 7 wins, 1 tie, 0 losses, four such comparisons
    ctrl = np.linspace(60, 95, 8)
    gain = np.array([0.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.46])
    table = pd.DataFrame({"pod": ctrl} | {f"m{i}": ctrl + gain for i in range(4)})
    results = wilcoxon_vs_control(table, "pod")
    for w in results:
        assert (w.wins, w.ties, w.losses) == (7, 1, 0)
        assert w.mean_diff == pytest.approx(gain.mean()) and w.mean_diff == pytest.approx(2.62)
        assert w.min_p == pytest.approx(2 / 2**7)
        assert w.min_p_holm == pytest.approx(4 * 2 / 2**7)  # 0.0625
        assert w.p_holm == pytest.approx(0.0625) and not w.significant

    class Result:  # the fields _wilcoxon reads
        control, alpha = "pod", 0.05
        per_block: list = []

        class across_blocks:  # noqa: N801
            blocks: list = []

    text = _wilcoxon(Result(), results[0], "points")
    assert "unattainable" in text and "not significantly different" not in text
    assert "0.062" in text and "1 zero difference" in text


# -- bootstrap with one run per block ---------------------------------------------------------


def test_one_run_per_block_resamples_blocks_and_has_width() -> None:
    a = [[81.0], [70.0], [90.0], [60.0], [75.0]]
    b = [[80.0], [71.0], [89.0], [59.0], [76.0]]
    got = probability_of_improvement(a, b, reps=4000, seed=0)
    assert got.resampling == "blocks"
    per_block = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    assert got.estimate == pytest.approx(per_block.mean())
    # plain loop: draw 5 blocks with replacement, average their 0/1 outcomes
    rng = np.random.default_rng(99)
    boot = [per_block[rng.integers(0, 5, 5)].mean() for _ in range(4000)]
    assert got.ci_low == pytest.approx(np.percentile(boot, 2.5), abs=0.05)
    assert got.ci_high == pytest.approx(np.percentile(boot, 97.5), abs=0.05)
    assert got.ci_high - got.ci_low > 0.5  # not the zero-width [0.6, 0.6]
    # with two runs everywhere the runs are resampled within blocks, as before
    assert probability_of_improvement([[1, 2], [3, 4]], [[1, 3], [2, 4]], reps=50).resampling == (
        "runs"
    )
    iqm = interquartile_mean(a, reps=500, seed=0)
    assert iqm.resampling == "blocks" and iqm.ci_high > iqm.ci_low


# -- IQM normalised per block -----------------------------------------------------------------


def test_iqm_is_normalised_per_block_by_hand() -> None:
    runs = {
        "a": [np.array([90.0, 92.0]), np.array([30.0, 34.0])],
        "b": [np.array([88.0, 91.0]), np.array([32.0, 36.0])],
    }
    norm = normalise_per_block(runs)
    # block 1: min 88, max 92 -> a 0.5, 1.0; b 0, 0.75. Block 2: min 30, max 36
    assert norm["a"][0] == pytest.approx([0.5, 1.0]) and norm["b"][0] == pytest.approx([0, 0.75])
    assert norm["a"][1] == pytest.approx([0, 4 / 6]) and norm["b"][1] == pytest.approx([2 / 6, 1])
    low = normalise_per_block(runs, higher_is_better=False)
    assert low["a"][0] == pytest.approx([0.5, 0.0])
    # a's IQM: pooled 0, 0.5, 0.667, 1 -> middle two (0.5, 0.667); raw values would keep only
    # the first block's (90, 92 after dropping 30 and 34)
    assert interquartile_mean(norm["a"], reps=100).estimate == pytest.approx((0.5 + 4 / 6) / 2)


# -- Bayesian mass, TOST, power ---------------------------------------------------------------


def test_posterior_mass_in_rope_against_independent_dirichlet() -> None:
    control = np.array([90.0, 85.0, 80.0, 92.0, 88.0, 75.0, 70.0, 60.0])
    diff = np.array([0.7, -1.4, 1.3, -1.0, -0.5, 0.0, 0.45, -0.1])
    got = bayesian_signed_rank(control, control + diff, rope=1.0, nsamples=20000, seed=1)
    z = np.concatenate([[0.0], diff])
    alpha = np.ones(z.size)
    alpha[0] = 0.5
    w = np.random.default_rng(5).dirichlet(alpha, size=40000)
    walsh = (z[:, None] + z[None, :]) / 2
    inside = (np.abs(walsh) < 1.0) + 0.5 * (np.abs(walsh) == 1.0)
    mass = np.einsum("si,ij,sj->s", w, inside.astype(float), w).mean()
    assert got.mass_equivalent == pytest.approx(mass, abs=0.01)
    total = got.mass_control_better + got.mass_equivalent + got.mass_other_better
    assert total == pytest.approx(1.0)
    assert got.p_equivalent > got.mass_equivalent  # the most-probable share is not the mass


def test_tost_against_two_one_sided_t_tests_written_out() -> None:
    d = np.array([0.72666667, -1.4, 1.26666667, -1.01851852, -0.46296296, 0.0, 0.45333333, -0.1])
    got = tost_paired(d, 1.0, alpha=0.05)
    n, m, se = d.size, d.mean(), d.std(ddof=1) / np.sqrt(d.size)
    p_low = stats.t.sf((m + 1.0) / se, n - 1)  # H0: mean <= -1
    p_high = stats.t.cdf((m - 1.0) / se, n - 1)  # H0: mean >= +1
    assert got.p == pytest.approx(max(p_low, p_high))
    half = stats.t.ppf(0.95, n - 1) * se
    assert (got.ci_low, got.ci_high) == pytest.approx((m - half, m + half))
    assert (round(got.ci_low, 2), round(got.ci_high, 2)) == (-0.66, 0.53)  # the numbers
    assert got.equivalent and got.confidence == pytest.approx(0.9)


def test_wilcoxon_power_against_the_all_one_sign_formula() -> None:
    # 8 blocks at alpha/m = 0.0125: only W+ = 0 or 36 (p = 2/256) rejects, so the power is
    # P(all 8 differences > 0) + P(all < 0) for normal differences
    for diff in (0.5, 1.0):
        z = diff / 0.888
        exact = stats.norm.cdf(z) ** 8 + stats.norm.cdf(-z) ** 8
        got = wilcoxon_power(0.888, 8, diff, 0.0125, nsamples=40000, seed=3)
        assert got == pytest.approx(exact, abs=0.01)
    # at 0.05 the region is larger (W+ <= 3 or >= 33): the t-test's power is the reference
    got = wilcoxon_power(1.0, 8, 1.0, 0.05, nsamples=40000, seed=3)
    from statsmodels.stats.power import TTestPower

    assert got == pytest.approx(TTestPower().power(1.0, nobs=8, alpha=0.05), abs=0.1)


# -- through the report -----------------------------------------------------------------------


def _noisy_table(n_blocks: int, datasets: int = 0, seed: int = 0):
    """pod, ce, center over n_blocks blocks, 3 seeds, no consistent ordering (Friedman keeps)."""
    rng = np.random.default_rng(seed)
    table = {}
    for b in range(n_blocks):
        ds, arch = (f"data{b % datasets}", f"arch{b // datasets}") if datasets else (f"d{b}", "mlp")
        for label in ("pod", "ce", "center"):
            table[(label, ds, arch)] = list(np.round(0.8 - 0.02 * b + rng.normal(0, 0.01, 3), 4))
    return table


def test_nemenyi_and_cd_only_after_friedman_rejects(results_factory, tmp_path: Path) -> None:
    from podbench.reports.build import build_report

    root = results_factory(_noisy_table(8, seed=4))
    out = _analyse(root)
    fr = out.across_blocks.friedman
    assert fr is not None and fr.p is not None and fr.p >= 0.05
    assert out.across_blocks.nemenyi is None and out.across_blocks.nemenyi_gated
    html = build_report(root, tmp_path / "rep", control="pod").read_text(encoding="utf-8")
    assert "critical_difference" not in html and "left out" in html
    stats_json = json.loads((tmp_path / "rep" / "stats.json").read_text(encoding="utf-8"))
    assert not any("critical difference of mean ranks at" in v for v in stats_json["verdicts"])


def test_cd_title_does_not_overprint_the_cd_label() -> None:
    import matplotlib.pyplot as plt

    from podbench.reports.analysis import AcrossBlocks, Nemenyi
    from podbench.reports.figures import cd_figure

    methods = ["a", "b", "c", "d", "e"]
    ranks = dict(zip(methods, [1.8, 2.4, 2.8, 3.2, 4.8], strict=True))
    pvals = {x: {y: 1.0 if x == y else 0.5 for y in methods} for x in methods}
    pvals["a"]["e"] = pvals["e"]["a"] = 0.01
    across = AcrossBlocks(8, 5, methods, [], {}, [], [], mean_ranks=ranks)
    across.nemenyi = Nemenyi(2.728, 2.16, 0.05, pvals)
    fig = cd_figure(across)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    title = ax.title.get_window_extent(renderer)
    (label,) = [t for t in ax.texts if t.get_text().startswith("CD = ")]
    box = label.get_window_extent(renderer)
    assert not title.overlaps(box) and title.y0 >= box.y1
    plt.close(fig)


def test_report_gives_mass_tost_power_and_dataset_level(results_factory) -> None:
    out = _analyse(results_factory(_noisy_table(8, datasets=4, seed=1)))
    across = out.across_blocks
    assert {e.label for e in across.equivalence} == {"ce", "center"}
    assert across.power is not None and across.power.level == pytest.approx(0.05 / 2)
    assert set(across.power.comparisons[0].power) == {"0.5", "1"}
    lev = across.by_dataset
    assert lev is not None and lev.n_datasets == 4
    # dataset means: the two architectures of each dataset averaged (seeds first)
    table = _noisy_table(8, datasets=4, seed=1)
    for d in range(4):
        want = np.mean([np.mean(table[("ce", f"data{d}", f"arch{a}")]) * 100 for a in (0, 1)])
        assert lev.means[f"data{d}"]["ce"] == pytest.approx(want)
    (w, _) = lev.wilcoxon
    assert w.min_p == pytest.approx(2 / 2**4)  # four datasets: 2/16 at best
    from podbench.reports.verdicts import dataset_sentences

    text = " ".join(dataset_sentences(out))
    assert "not independent" in text and "over 4 datasets" in text


def test_best_test_acc_gets_a_caveat(results_factory) -> None:
    from podbench.reports.verdicts import metric_caveat

    root = results_factory(_noisy_table(2))
    assert metric_caveat(_analyse(root)) is None
    caveat = metric_caveat(_analyse(root, metric="best_test_acc"))
    assert caveat is not None and "chosen on the test set" in caveat


def test_all_tied_methods_name_no_best(results_factory) -> None:
    from podbench.reports.tables import main_table
    from podbench.reports.verdicts import convergence_sentences

    table = {(lab, f"d{b}", "mlp"): [0.8, 0.81] for lab in ("pod", "ce") for b in range(6)}
    out = _analyse(results_factory(table))
    assert out.across_blocks.mean_ranks == {"pod": 1.5, "ce": 1.5}
    main = main_table(out)
    assert not any(c["bold"] for c in main["rank_row"])
    assert not any(c["bold"] for row in main["rows"] for c in row["cells"])
    scores = [s for s in convergence_sentences(out) if s.startswith("AlgoPerf")]
    assert scores and all("all tied" in s and "highest" not in s for s in scores)


@pytest.mark.parametrize(("n", "level"), [(8, 0.0125), (8, 0.05), (11, 0.05), (15, 0.01)])
def test_wilcoxon_rejection_region_matches_scipy_exact(n: int, level: float) -> None:
    from podbench.reports.stats import wilcoxon_rejection_region

    region = wilcoxon_rejection_region(n, level)
    ranks = np.arange(1, n + 1, dtype=float)
    for w in range(n * (n + 1) // 2 + 1):
        signs = -np.ones(n)  # the ranks 1..n signed so that the positive ones sum to w
        left = w
        for i in range(n - 1, -1, -1):
            if ranks[i] <= left:
                signs[i], left = 1.0, left - ranks[i]
        p = stats.wilcoxon(signs * ranks, method="exact").pvalue
        assert region[w] == (p < level), w


def test_single_run_blocks_report_a_block_bootstrap_and_its_variance_sources(
    results_factory,
) -> None:
    from podbench.reports.verdicts import variance_sentence, verdicts

    pod = [0.81, 0.70, 0.90, 0.60, 0.75, 0.66]
    ce = [0.80, 0.71, 0.89, 0.59, 0.76, 0.65]
    table = {("pod", f"d{b}", "mlp"): [pod[b]] for b in range(6)}
    table |= {("ce", f"d{b}", "mlp"): [ce[b]] for b in range(6)}
    out = _analyse(results_factory(table))
    (imp,) = out.bootstrap.improvement
    assert imp.resampling == "blocks" and imp.estimate == pytest.approx(2 / 6)
    assert imp.ci_high - imp.ci_low > 0.3
    text = variance_sentence(out)
    assert '"blocks": the blocks are resampled' in text and "test sets" in text
    assert '"runs"' not in text
    assert any("bootstrap over blocks" in v for v in verdicts(out))
