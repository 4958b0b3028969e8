"""The still-improving flag on hand-worked learning curves."""

from __future__ import annotations

import doctest

import pytest

import podbench.convergence
from podbench.convergence import held_out_accuracies, late_gain, still_improving


def _history(accs: list[float | None], key: str = "test_acc") -> list[dict[str, float | None]]:
    return [{"epoch": e, key: a} for e, a in enumerate(accs)]


@pytest.mark.parametrize(
    ("accs", "window"),
    [
        ([0.5, 0.6], 1),
        ([0.5, 0.6, 0.7], 1),  # 10 % of 3 epochs: rounded up to the last one
        ([0.1 * i for i in range(10)], 1),
        ([0.01 * i for i in range(11)], 2),  # ceil(1.1)
        ([0.01 * i for i in range(30)], 3),  # 0.1 * 30 = 3, not 3.0000000000000004 -> 4
        ([0.001 * i for i in range(100)], 10),
    ],
)
def test_late_gain_spans_the_last_tenth_of_the_epochs(accs: list[float], window: int) -> None:
    assert late_gain(accs) == pytest.approx(accs[-1] - accs[-1 - window])


def test_still_improving_on_hand_worked_curves() -> None:
    # the quickstart's ArcFace: 3 epochs, still climbing by 5 points in the last
    assert still_improving(_history([0.30, 0.42, 0.47])) is True
    # a plateau: 0.4 points in the last epoch
    assert still_improving(_history([0.70, 0.782, 0.786])) is False
    # exactly one point is not more than one point
    assert still_improving(_history([0.70, 0.79, 0.80])) is False
    assert still_improving(_history([0.70, 0.79, 0.8001])) is True
    # 20 epochs, window 2: the rise from epoch 17 to 19, not the dip at 18
    curve = [0.5] * 17 + [0.80, 0.70, 0.815]
    assert still_improving(_history(curve)) is True
    assert still_improving(_history(curve), threshold=0.02) is False
    # a falling curve is not improving
    assert still_improving(_history([0.8, 0.9, 0.85])) is False


def test_still_improving_reads_val_acc_and_says_when_it_cannot_tell() -> None:
    assert still_improving(_history([0.5, 0.6], key="val_acc")) is True
    assert held_out_accuracies([{"test_acc": None, "val_acc": 0.4}, {"test_acc": 0.3}]) == [0.4, 0.3]
    assert still_improving(_history([0.5])) is None  # one epoch: nothing to compare with
    assert still_improving([]) is None
    assert still_improving(_history([0.5, None])) is None
    assert still_improving(_history([0.5, float("nan")])) is None


def test_convergence_examples_run() -> None:
    assert doctest.testmod(podbench.convergence).failed == 0
