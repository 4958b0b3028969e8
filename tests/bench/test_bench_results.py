"""The results store: atomic records, skipping final runs, the table and summary."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from podbench.errors import UserError
from podbench.fileio import atomic_write_text
from podbench.record import RunRecord
from podbench.results import ResultsStore


def _record(
    run_id: str, label: str, seed: int, acc: float | None, status: str = "completed"
) -> dict:
    return RunRecord(
        run_id=run_id,
        suite="s",
        label=label,
        loss=label,
        variant=None,
        dataset="digits",
        arch="mlp",
        feat_dim=8,
        seed=seed,
        spec={"epochs": 1, "lr": 0.1, "loss_params": {}},
        status=status,
        error=None,
        history=[
            {
                "epoch": 0,
                "train_loss": 1.0,
                "parts": {},
                "train_acc": 0.5,
                "test_acc": acc,
                "val_acc": None,
                "lr": 0.1,
                "seconds": 1.0,
            }
        ],
        final_test_acc=acc,
        best_test_acc=acc,
        epochs_completed=1,
        wall_time_s=2.0,
        images_per_s=100.0,
        geometry={"mean_feature_norm": 3.0},
        env={"git_commit": "x"},
        started_at="t0",
        finished_at="t1",
    ).to_json_dict()


def test_atomic_write_leaves_old_file_when_writer_fails(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "runs" / "a.json"
    atomic_write_text(target, "old")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]  # no temporary left behind


def test_store_table_summary_and_final_statuses(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.write_record(_record("r1", "pod", 0, 0.8))
    store.write_record(_record("r2", "pod", 1, 0.6))
    store.write_record(_record("r3", "softmax", 0, None, status="failed"))
    store.write_record(_record("r4", "softmax", 1, 0.5, status="diverged"))
    (store.runs_dir / ".r5.json.123.tmp").write_text("{half")  # a killed writer's leftover
    assert store.has_final("r1") and store.has_final("r4")
    assert not store.has_final("r3") and not store.has_final("nope")
    assert sorted(r["run_id"] for r in store.records()) == ["r1", "r2", "r3", "r4"]

    csv = pd.read_csv(store.write_table())  # pandas alone reads it
    assert len(csv) == 4
    assert set(csv.columns) >= {
        "run_id",
        "label",
        "status",
        "final_test_acc",
        "geometry.mean_feature_norm",
    }
    summary = store.summary().set_index("label")
    assert summary.loc["pod", "test_acc_mean"] == pytest.approx(0.7)
    assert summary.loc["pod", "test_acc_std"] == pytest.approx(pd.Series([0.8, 0.6]).std())
    assert summary.loc["softmax", "failed"] == 1 and summary.loc["softmax", "diverged"] == 1
    assert json.loads(store.record_path("r1").read_text())["final_test_acc"] == 0.8


def test_open_existing_requires_runs_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a results directory"):
        ResultsStore.open_existing(tmp_path / "nothing")
