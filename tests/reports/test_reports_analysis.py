"""The analysis steps on synthetic records: failure policy, primary analysis, still improving,
seeds and power; each against numbers worked here independently."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.power import TTestIndPower

from podbench.reports.analysis import Analysis, analyse
from podbench.reports.records import load_results, metric_info
from podbench.reports.verdicts import improving_sentence, primary_reason, verdicts

ERR = {"type": "Divergence", "message": "loss is NaN", "traceback": "", "epoch": 1}


def _analyse(root: Path, columns: dict[str, Any] | None = None, **kwargs: Any) -> Analysis:
    """analyse() with defaults; ``columns`` are added to the runs table (fields such as
    num_classes and still_improving that the record loader flattens into columns)."""
    options: dict[str, Any] = {
        "control": "pod",
        "metric": metric_info("final_test_acc"),
        "rope": 1.0,
        "alpha": 0.05,
    }
    data = load_results(root)
    for name, value in (columns or {}).items():
        data.runs[name] = value(data.runs) if callable(value) else value
    return analyse(data, **(options | kwargs))


def test_worst_policy_enters_diverged_runs_at_chance(
    results_factory: Callable[..., Path], record_maker: Callable[..., dict[str, Any]]
) -> None:
    records = [
        record_maker("pod", "d0", "mlp", 0, 0.90),
        record_maker("pod", "d0", "mlp", 1, 0.91),
        record_maker("pod", "d0", "mlp", 2, None, status="diverged", error=ERR),
        record_maker("ce", "d0", "mlp", 0, 0.80),
        record_maker("ce", "d0", "mlp", 1, 0.82),
    ]
    out = _analyse(results_factory({}, extra=records), {"num_classes": 10})  # chance: 1/10
    assert out.failure_handling.policy == "worst" and out.failure_handling.basis == "chance"
    assert out.failure_handling.worst_values == {"d0 / mlp": pytest.approx(10.0)}
    pod = next(s for s in out.per_block if s.label == "pod")
    assert pod.values == pytest.approx([90.0, 91.0, 10.0]) and pod.imputed == [False, False, True]
    assert pod.mean == pytest.approx((90 + 91 + 10) / 3)
    (comp,) = out.within_blocks[0].comparisons
    ref = stats.ttest_ind([80.0, 82.0], [90.0, 91.0, 10.0], equal_var=False)
    assert comp.p == pytest.approx(ref.pvalue) and comp.t == pytest.approx(ref.statistic)
    (excluded,) = out.excluded_runs
    assert excluded.status == "diverged" and excluded.counted_as == pytest.approx(10.0)
    assert out.counts.used == 5

    # the same runs under --failed exclude: the diverged run is left out
    out = _analyse(results_factory({}, extra=records, name="again"), failed="exclude")
    pod = next(s for s in out.per_block if s.label == "pod")
    assert pod.values == pytest.approx([90.0, 91.0]) and out.counts.used == 4
    assert out.excluded_runs[0].counted_as is None


def test_worst_value_without_number_of_classes_or_for_other_metrics(
    results_factory: Callable[..., Path], record_maker: Callable[..., dict[str, Any]]
) -> None:
    records = [
        record_maker("pod", "d0", "mlp", 0, 0.90),
        record_maker("pod", "d0", "mlp", 1, None, status="failed", error=ERR),
        record_maker("ce", "d0", "mlp", 0, 0.80),
        record_maker("ce", "d0", "mlp", 3, 0.81),
    ]
    root = results_factory({}, extra=records)
    out = _analyse(root)
    assert out.failure_handling.basis == "accuracy floor"  # K unknown: accuracy 0
    assert next(s for s in out.per_block if s.label == "pod").values == [90.0, 0.0]
    # wall time (lower is better): conftest's records take 10 + seed s; the worst is ce's 13 s
    out = _analyse(root, metric=metric_info("wall_time_s"))
    assert out.failure_handling.basis == "worst recorded"
    assert next(s for s in out.per_block if s.label == "pod").values == [10.0, 13.0]


def test_a_method_diverging_on_hard_blocks_ranks_last_there(
    results_factory: Callable[..., Path], record_maker: Callable[..., dict[str, Any]]
) -> None:
    # 'fragile' beats pod by a point wherever it survives, but diverges on blocks 4 and 5
    table: dict[tuple[str, str, str], list[float]] = {}
    for b in range(6):
        table[("pod", f"d{b}", "mlp")] = [0.80 - 0.01 * b, 0.81 - 0.01 * b]
        if b < 4:
            table[("fragile", f"d{b}", "mlp")] = [0.81 - 0.01 * b, 0.82 - 0.01 * b]
    extra = [
        record_maker("fragile", f"d{b}", "mlp", s, None, status="diverged", error=ERR)
        for b in (4, 5)
        for s in (0, 1)
    ]
    root = results_factory(table, extra=extra)
    worst = _analyse(root)
    # ranks per block (1 = best): fragile 1,1,1,1,2,2 -> 8/6; pod 2,2,2,2,1,1 -> 10/6
    assert worst.across_blocks.mean_ranks == pytest.approx({"pod": 10 / 6, "fragile": 8 / 6})
    assert worst.across_blocks.incomplete_blocks == []  # no block dropped
    excluded = _analyse(results_factory(table, extra=extra, name="ex"), failed="exclude")
    # without the policy the two hard blocks vanish and fragile wins everywhere it is compared
    assert [b.block for b in excluded.across_blocks.incomplete_blocks] == ["d4 / mlp", "d5 / mlp"]
    assert excluded.primary_analysis == "within-blocks"  # 4 blocks cannot reach p < 0.05


def test_primary_analysis_needs_attainable_significance(
    results_factory: Callable[..., Path], many_blocks: dict[tuple[str, str, str], list[float]]
) -> None:
    five = {k: v for k, v in many_blocks.items() if int(k[1][4:]) < 5}
    out = _analyse(results_factory(five))
    basis = out.primary_basis
    # 3 methods: 2 comparisons; 5 blocks: 2 * 2/2^5 = 0.125 >= 0.05; 7 blocks needed
    assert out.primary_analysis == "within-blocks" and basis.why == "unattainable"
    assert (basis.n_blocks, basis.n_comparisons) == (5, 2)
    assert basis.min_p == pytest.approx(0.125) and basis.blocks_needed == 7
    reason = primary_reason(out)
    assert "2/2^5 = 0.0625" in reason and "0.125" in reason
    assert "at least 7 blocks would be needed" in reason
    assert out.across_blocks.wilcoxon == [] and out.across_blocks.friedman is None
    assert not any("Wilcoxon" in v for v in verdicts(out))
    out = _analyse(results_factory(many_blocks, name="seven"))
    assert out.primary_analysis == "across-blocks"
    assert out.primary_basis.min_p == pytest.approx(2 * 2 / 2**7)
    assert all(w.significant for w in out.across_blocks.wilcoxon)  # 7 wins of 7: p = 2/128


def test_verdicts_resting_on_runs_still_improving_say_so(
    results_factory: Callable[..., Path], record_maker: Callable[..., dict[str, Any]]
) -> None:
    table = {}
    for b in range(6):
        table[("pod", f"d{b}", "mlp")] = [0.90 - 0.01 * b, 0.901 - 0.01 * b]
        table[("ce", f"d{b}", "mlp")] = [0.85 - 0.01 * b, 0.851 - 0.01 * b]
    root = results_factory(table)

    def rising(runs: Any) -> Any:  # ce's second seed on d2 was still improving
        return (runs["label"] == "ce") & (runs["dataset"] == "d2") & (runs["seed"] == 1)

    out = _analyse(root, {"still_improving": rising})
    assert out.still_improving_recorded
    ce2 = next(s for s in out.per_block if s.label == "ce" and s.block == "d2 / mlp")
    assert ce2.still_improving == [False, True]
    text = verdicts(out)
    wilcoxon = next(v for v in text if v.startswith("ce vs pod (Wilcoxon"))
    assert "rests on 1 run(s) still improving when training stopped (ce: 1)" in wilcoxon
    assert all("still improving" in v for v in text if "ce" in v)
    assert out.counts.still_improving == 1
    assert improving_sentence(out).startswith("1 of the 24 runs that enter were still improving")
    out = _analyse(root, {"still_improving": None})  # records that cannot tell (one epoch)
    assert not out.still_improving_recorded
    assert not any("still improving" in v for v in verdicts(out))
    assert "do not say whether runs were still improving" in improving_sentence(out)


def test_seed_power_from_pooled_seed_variance(
    results_factory: Callable[..., Path], record_maker: Callable[..., dict[str, Any]]
) -> None:
    table = {
        ("pod", "d0", "mlp"): [0.900, 0.904, 0.898, 0.906],
        ("ce", "d0", "mlp"): [0.880, 0.889, 0.884],
    }
    diverged = record_maker("ce", "d0", "mlp", 7, None, status="diverged", error=ERR)
    out = _analyse(results_factory(table, extra=[diverged]), difference=0.5)
    (block,) = out.seed_power.blocks
    pod, ce = np.array([90.0, 90.4, 89.8, 90.6]), np.array([88.0, 88.9, 88.4])
    pooled = math.sqrt((3 * pod.var(ddof=1) + 2 * ce.var(ddof=1)) / 5)  # failed run: no noise
    assert block.sd == pytest.approx(pooled) and block.df == 5
    assert block.seeds_run == 4  # ce: 3 completed + 1 diverged at the worst value
    power = TTestIndPower()
    n = block.seeds_needed
    assert power.power(0.5 / pooled, nobs1=n, alpha=0.05) >= 0.8
    assert power.power(0.5 / pooled, nobs1=n - 1, alpha=0.05) < 0.8
    assert power.power(block.min_detectable / pooled, nobs1=4, alpha=0.05) == pytest.approx(0.8)
    assert out.seed_power.seeds_needed == n


def test_seeds_figure_when_seeds_are_very_noisy() -> None:
    from podbench.reports.analysis import BlockPower, SeedPower
    from podbench.reports.figures import render, seeds_figure

    # sd 12 points: detecting 0.5 points needs thousands of seeds (the figure samples the range)
    block = BlockPower("d / a", 12.0, 4, 3, 9045, 40.0)
    power = SeedPower(0.5, 0.8, 0.05, "t-test", [block], 9045)
    png, pdf = render(seeds_figure(power, "points"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and pdf[:5] == b"%PDF-"
