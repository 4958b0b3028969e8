"""Time to target, performance profiles and the AlgoPerf score against hand-worked values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from podbench.reports.convergence import (
    benchmark_score,
    convergence,
    performance_profile,
    performance_ratios,
    time_to_target,
)
from podbench.reports.observations import observations
from podbench.reports.records import load_results, metric_info

INF = math.inf


def test_time_to_target_by_hand() -> None:
    # target 90: first reached at the third epoch, after 2 + 3 + 4 seconds
    assert time_to_target([50, 80, 90, 95], [2.0, 3.0, 4.0, 5.0], 90.0) == (3.0, 9.0)
    assert time_to_target([91, 80], [1.5, 1.5], 90.0) == (1.0, 1.5)
    assert time_to_target([10, float("nan"), 89.9], [1, 1, 1], 90.0) == (INF, INF)
    epochs, seconds = time_to_target([50, 95], [2.0, None], 90.0)
    assert epochs == 2.0 and math.isnan(seconds)  # an epoch without its time: seconds unknown


def test_performance_ratios_by_hand() -> None:
    times = pd.DataFrame(
        {"a": [10.0, 30.0, INF, INF], "b": [20.0, 15.0, 8.0, INF]},
        index=["b1", "b2", "b3", "b4"],
    )
    ratios = performance_ratios(times)
    assert ratios["a"].tolist() == [1.0, 2.0, INF, INF]
    assert ratios["b"].tolist() == [2.0, 1.0, 1.0, INF]  # b4: nobody reached the target


def _rho(ratios: list[float], tau: float) -> float:
    return sum(1 for r in ratios if r <= tau) / len(ratios)


def test_profile_and_benchmark_score_by_hand_and_by_integration() -> None:
    ratios = [1.0, 2.0, 3.5, INF]
    assert performance_profile(ratios, [1.0, 1.9, 2.0, 4.0, 100.0]).tolist() == [
        0.25,
        0.25,
        0.5,
        0.75,
        0.75,
    ]
    # (1/(4-1)) * (1/4) * ((4-1) + (4-2) + (4-3.5) + 0) = 5.5 / 12
    assert benchmark_score(ratios) == pytest.approx(5.5 / 12)
    # AlgoPerf integrates rho numerically (trapezoid over tau in [1, r_max], normalised)
    taus = np.linspace(1.0, 4.0, 300001)
    rho = np.array([_rho(ratios, t) for t in taus[::100]])
    numeric = np.trapezoid(rho, taus[::100]) / 3.0
    assert benchmark_score(ratios) == pytest.approx(numeric, abs=1e-3)
    assert benchmark_score([1.0, 1.0]) == 1.0
    assert benchmark_score([4.5, INF]) == 0.0


def _curve(final: float, epochs: int = 5) -> list[float]:
    """conftest's learning curve, in percent: final * (1 - 0.5^(e+1)) / (1 - 0.5^epochs)."""
    return [100 * final * (1 - 0.5 ** (e + 1)) / (1 - 0.5**epochs) for e in range(epochs)]


def _first(curve: list[float], target: float) -> float:
    for i, acc in enumerate(curve):
        if acc >= target:
            return i + 1.0
    return INF


@pytest.mark.parametrize("failed", ["worst", "exclude"])
def test_convergence_step_on_records(results_factory, record_maker, failed: str) -> None:
    table = {
        ("pod", "d0", "mlp"): [0.90, 0.92, 0.94],
        ("ce", "d0", "mlp"): [0.80, 0.82, 0.84],
        ("pod", "d1", "mlp"): [0.90, 0.90, 0.90],
        ("ce", "d1", "mlp"): [0.95, 0.95, 0.95],
    }
    err = {"type": "Divergence", "message": "nan", "traceback": "", "epoch": 2}
    diverged = record_maker("pod", "d1", "mlp", 9, None, status="diverged", error=err)
    data = load_results(results_factory(table, extra=[diverged]))
    obs = observations(data, metric_info("final_test_acc"), "pod", failed)  # type: ignore[arg-type]
    blocks = [("d0", "mlp"), ("d1", "mlp")]
    conv = convergence(data, obs, ["pod", "ce"], blocks, fraction=0.9)

    targets = {t.block: t for t in conv.targets}
    assert targets["d0 / mlp"].best_method == "pod"
    assert targets["d0 / mlp"].target == pytest.approx(0.9 * 92.0)
    assert targets["d1 / mlp"].best_method == "ce"
    assert targets["d1 / mlp"].target == pytest.approx(0.9 * 95.0)

    # expected medians, worked from the curves (each epoch takes 1.5 s in conftest's records)
    t = {
        ("d0", lab): float(np.median([_first(_curve(f), 82.8) for f in table[(lab, "d0", "mlp")]]))
        for lab in ("pod", "ce")
    }
    t |= {
        ("d1", lab): [_first(_curve(f), 85.5) for f in table[(lab, "d1", "mlp")]]
        for lab in ("pod", "ce")
    }
    if failed == "worst":
        t[("d1", "pod")] = t[("d1", "pod")] + [INF]  # the diverged run never reaches it
    t[("d1", "pod")] = float(np.median(t[("d1", "pod")]))
    t[("d1", "ce")] = float(np.median(t[("d1", "ce")]))
    assert t[("d1", "pod")] == 4.0 and t[("d1", "ce")] == 3.0  # worked by hand: 87.1 / 85.8
    got = {(m.block.split(" ")[0], m.label): m for m in conv.methods}
    # only ce's 84% run reaches 82.8% (at its last epoch): the median ce run never does
    assert t[("d0", "ce")] == INF and got[("d0", "ce")].n_reached == 1
    for key, expected in t.items():
        if expected == INF:  # stats.json has no infinity: never reached is None
            assert got[key].epochs is None and got[key].seconds is None
            assert got[key].ratio_epochs is None and got[key].n_reached < got[key].n_runs
        else:
            assert got[key].epochs == pytest.approx(expected)
            assert got[key].seconds == pytest.approx(1.5 * expected)
    assert got[("d1", "pod")].n_runs == (4 if failed == "worst" else 3)
    ratios = {
        lab: [t[(b, lab)] / min(t[(b, "pod")], t[(b, "ce")]) for b in ("d0", "d1")]
        for lab in ("pod", "ce")
    }
    assert ratios["pod"][1] == pytest.approx(4 / 3)
    for p in conv.profiles:
        expected = sum(max(0.0, 4 - r) for r in ratios[p.label]) / (2 * 3)
        assert p.score == pytest.approx(expected)
        assert p.fastest_share == pytest.approx(sum(r == 1 for r in ratios[p.label]) / 2)
    assert {p.measure for p in conv.profiles} == {"epochs", "seconds"}
