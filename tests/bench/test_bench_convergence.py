"""The still-improving flag on hand-worked learning curves."""

from __future__ import annotations

import doctest
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import podbench.convergence
from podbench.convergence import held_out_accuracies, late_gain, still_improving
from podbench.record import parse_record
from podbench.reports.records import load_results
from podbench.results import ResultsStore


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
    assert held_out_accuracies([{"test_acc": None, "val_acc": 0.4}, {"test_acc": 0.3}]) == [
        0.4,
        0.3,
    ]
    assert still_improving(_history([0.5])) is None  # one epoch: nothing to compare with
    assert still_improving([]) is None
    assert still_improving(_history([0.5, None])) is None
    assert still_improving(_history([0.5, float("nan")])) is None


def test_convergence_examples_run() -> None:
    assert doctest.testmod(podbench.convergence).failed == 0


# -- in the run record ---------------------------------------------------------------------


def _record(accs: list[float], **fields: Any) -> dict[str, Any]:
    return {
        "schema": 2, "run_id": "0123456789abcdef", "suite": "s", "label": "arcface",
        "loss": "arcface", "dataset": "digits", "arch": "mlp", "feat_dim": 8, "seed": 0,
        "spec": {}, "status": "completed", "history": _history(accs),
        "epochs_completed": len(accs), **fields,
    }  # fmt: skip


def test_records_carry_the_flag_computed_from_their_history(tmp_path: Path) -> None:
    rising = parse_record(_record([0.30, 0.42, 0.47]))  # a schema-2 record, migrated
    assert rising.schema_version == 4  # migrated to the current schema
    assert rising.late_acc_gain == pytest.approx(0.05) and rising.still_improving is True
    flat = parse_record(_record([0.70, 0.782, 0.786]))
    assert flat.late_acc_gain == pytest.approx(0.004) and flat.still_improving is False
    # a value the record gives is kept
    given = parse_record(_record([0.30, 0.42, 0.47], late_acc_gain=0.0, still_improving=False))
    assert given.still_improving is False
    # results.csv and the report's runs table have the column; the report reads it
    store = ResultsStore(tmp_path)
    store.write_record(_record([0.30, 0.42, 0.47]))
    store.write_record(_record([0.70, 0.782, 0.786]) | {"run_id": "fedcba9876543210", "seed": 1})
    csv = pd.read_csv(store.write_table()).set_index("run_id")
    assert csv.loc["0123456789abcdef", "still_improving"]
    assert not csv.loc["fedcba9876543210", "still_improving"]
    runs = load_results(tmp_path).runs.set_index("run_id")
    assert runs.loc["0123456789abcdef", "late_acc_gain"] == pytest.approx(0.05)
    assert bool(runs.loc["0123456789abcdef", "still_improving"]) is True
