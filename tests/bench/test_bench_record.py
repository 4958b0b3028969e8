"""The one run record: every path that writes one, old records, the one flattening, file modes."""

from __future__ import annotations

import importlib
import json
import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import pytest
import torch

from podbench.engine import train_run
from podbench.errors import UserError
from podbench.executor import worker_failure_record
from podbench.geometry import GEOMETRY_KEYS
from podbench.record import RunRecord, flatten_record, load_record, parse_record
from podbench.reports.build import build_report
from podbench.reports.records import load_results
from podbench.results import ResultsStore
from podbench.runs import RunSettings, RunSpec, resolve_run

HERE = Path(__file__).resolve().parent

# The keys of a schema-4 record file, written out by hand: every path must write all of them.
SCHEMA_4_KEYS = {
    "schema",
    "run_id",
    "suite",
    "label",
    "loss",
    "variant",
    "dataset",
    "arch",
    "feat_dim",
    "num_classes",
    "seed",
    "spec",
    "status",
    "error",
    "history",
    "final_test_acc",
    "best_test_acc",
    "epochs_completed",
    "late_acc_gain",
    "still_improving",
    "wall_time_s",
    "cpu_time_s",
    "images_per_s",
    "geometry",
    "evaluation",
    "env",
    "started_at",
    "finished_at",
}


@pytest.fixture(scope="module", autouse=True)
def _test_plugins_on_one_thread() -> Iterator[None]:
    """The engine tests' misbehaving plugins registered; torch on one thread meanwhile."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(HERE))
        importlib.import_module("engine_test_plugins")
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


def _run(loss: str = "softmax", params: dict | None = None, **settings: Any) -> RunSpec:
    base = dict(
        epochs=2,
        lr=0.05,
        batch_size=64,
        schedule="constant",
        device="cpu",
        limit_train=200,
        limit_eval=100,
    )
    base.update(settings)
    return resolve_run(
        RunSettings(**base),
        suite="t",
        loss=loss,
        dataset="digits",
        arch="mlp",
        seed=0,
        feat_dim=8,
        loss_params=params,
    )


def _strict(text: str) -> Any:
    def no_constant(name: str) -> None:
        raise AssertionError(f"{name} in a record file")

    return json.loads(text, parse_constant=no_constant)


def _check_against_schema(record: dict[str, Any]) -> None:
    """The record as the JSON Schema of the model describes it, checked by jsonschema."""
    schema = RunRecord.model_json_schema(by_alias=True, mode="serialization")
    jsonschema.validate(record, schema)
    assert set(record) == SCHEMA_4_KEYS
    assert record["schema"] == 4


@pytest.fixture(scope="module")
def path_records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """One record of each path that writes records: completed, diverged, failed, worker died."""
    completed = train_run(_run())
    diverged = train_run(_run("test-nan", params={"at_epoch": 1}))
    failed = train_run(_run("test-raising"))
    store = ResultsStore(tmp_path_factory.mktemp("died"))
    error_file = store.root / "error.txt"
    error_file.write_text(
        "Traceback (most recent call last):\n  ...\nray.exceptions.WorkerCrashedError\n"
    )
    died = worker_failure_record(store, _run(lr=0.07).model_dump(mode="json"), error_file)
    return {"completed": completed, "diverged": diverged, "failed": failed, "died": died}


@pytest.mark.parametrize("path", ["completed", "diverged", "failed", "died"])
def test_every_path_writes_the_one_schema(
    path_records: dict[str, dict[str, Any]], path: str, tmp_path: Path
) -> None:
    record = path_records[path]
    _check_against_schema(record)
    store = ResultsStore(tmp_path)
    written = store.write_record(record)
    assert _strict(written.read_text()) == record  # strict JSON, and nothing lost on the way
    assert store.read_record(record["run_id"]) == record


def test_each_path_says_what_happened(path_records: dict[str, dict[str, Any]]) -> None:
    completed, diverged = path_records["completed"], path_records["diverged"]
    failed, died = path_records["failed"], path_records["died"]
    assert completed["status"] == "completed" and completed["error"] is None
    assert set(completed["geometry"]) == set(GEOMETRY_KEYS)
    assert completed["cpu_time_s"] > 0 and completed["env"]["deterministic"] is True
    assert diverged["status"] == "diverged" and diverged["error"]["epoch"] == 1
    assert diverged["epochs_completed"] == 1 and diverged["geometry"] is None
    assert failed["status"] == "failed" and failed["error"]["type"] == "RuntimeError"
    assert died["status"] == "failed" and died["error"]["type"] == "WorkerDied"
    assert "WorkerCrashedError" in died["error"]["traceback"]
    assert died["cpu_time_s"] is None and died["history"] == []
    assert died["finished_at"] is not None
    # digits has 10 classes: every run whose data loaded says so (chance is 1/10); the
    # executor's record of a dead worker cannot know
    assert completed["num_classes"] == diverged["num_classes"] == failed["num_classes"] == 10
    assert died["num_classes"] is None
    # the convergence fields: 2 epochs, so the rise over the last one, against one point
    accs = [h["test_acc"] for h in completed["history"]]
    assert completed["late_acc_gain"] == pytest.approx(accs[1] - accs[0])
    assert completed["still_improving"] is (accs[1] - accs[0] > 0.01)
    assert died["late_acc_gain"] is None and died["still_improving"] is None
    assert diverged["still_improving"] is None  # one epoch completed: nothing to compare
    # the same run, from the executor and from the engine, has the same identity fields
    assert died["spec"]["lr"] == 0.07 and died["run_id"] == _run(lr=0.07).run_id


def _schema_1_record() -> dict[str, Any]:
    """A record exactly as the engine wrote it before schema 2 (commit 3a8f6ee)."""
    return {
        "schema": 1,
        "run_id": "0123456789abcdef",
        "suite": "quickstart",
        "label": "pod",
        "loss": "pod",
        "variant": None,
        "dataset": "fashion-mnist",
        "arch": "small-cnn",
        "feat_dim": 32,
        "seed": 0,
        "spec": {
            "suite": "quickstart",
            "loss": "pod",
            "variant": None,
            "loss_params": {"alpha": 1.5},
            "dataset": "fashion-mnist",
            "epochs": 2,
            "lr": 0.1,
            "milestones": [1],
        },
        "status": "completed",
        "error": None,
        "history": [
            {
                "epoch": 0,
                "train_loss": 0.41,
                "parts": {"nac": 0.3, "sc": 0.11},
                "train_acc": 0.81,
                "test_acc": 0.85,
                "val_acc": None,
                "lr": 0.1,
                "seconds": 12.3,
            },
            {
                "epoch": 1,
                "train_loss": 0.31,
                "parts": {"nac": 0.2, "sc": 0.11},
                "train_acc": 0.86,
                "test_acc": 0.87,
                "val_acc": None,
                "lr": 0.01,
                "seconds": 12.1,
            },
        ],
        "final_test_acc": 0.87,
        "best_test_acc": 0.87,
        "epochs_completed": 2,
        "wall_time_s": 40.1,
        "cpu_time_s": 70.3,
        "images_per_s": 1500.0,
        "geometry": {
            "mean_cos_to_center": 0.93,
            "min_interclass_angle_deg": 88.1,
            "mean_abs_offdiag_corr": 0.05,
            "mean_feature_norm": 7.2,
        },
        "env": {
            "podbench": "0.1.0",
            "torch": "2.5.1",
            "python": "3.11.7",
            "device": "cpu",
            "git_commit": "abc123",
            "hostname": "x",
            "ray": "2.40.0",
            "threads": 4,
        },
        "started_at": "2026-11-28T14:00:00+00:00",
        "finished_at": "2026-11-28T14:00:40+00:00",
    }


def _schema_1_worker_died() -> dict[str, Any]:
    """The executor's schema-1 record of a dead worker: it had no cpu_time_s."""
    return {
        "schema": 1,
        "run_id": "fedcba9876543210",
        "suite": "quickstart",
        "label": "softmax",
        "loss": "softmax",
        "variant": None,
        "dataset": "fashion-mnist",
        "arch": "small-cnn",
        "feat_dim": 32,
        "seed": 1,
        "spec": {"loss": "softmax", "seed": 1},
        "status": "failed",
        "error": {
            "type": "WorkerDied",
            "message": "the worker died",
            "traceback": None,
            "epoch": None,
        },
        "history": [],
        "final_test_acc": None,
        "best_test_acc": None,
        "epochs_completed": 0,
        "wall_time_s": None,
        "images_per_s": None,
        "geometry": None,
        "env": None,
        "started_at": None,
        "finished_at": "2026-11-28T14:01:00+00:00",
    }


def test_schema_1_records_load_migrated(tmp_path: Path) -> None:
    old, died = _schema_1_record(), _schema_1_worker_died()
    runs = tmp_path / "runs"
    runs.mkdir()
    for rec in (old, died):
        (runs / f"{rec['run_id']}.json").write_text(json.dumps(rec, indent=2))
    store = ResultsStore(tmp_path)
    migrated = store.read_record(old["run_id"])
    assert migrated is not None
    _check_against_schema(migrated)
    assert migrated["evaluation"] == {} and migrated["cpu_time_s"] == 70.3
    assert migrated["history"] == old["history"] and migrated["env"]["threads"] == 4
    migrated_died = store.read_record(died["run_id"])
    assert migrated_died is not None and migrated_died["cpu_time_s"] is None
    _check_against_schema(migrated_died)
    assert store.has_final(old["run_id"]) and not store.has_final(died["run_id"])
    data = load_results(tmp_path)
    row = data.runs.set_index("run_id").loc[old["run_id"]]
    assert row["final_test_acc"] == 0.87 and row["geometry.min_interclass_angle_deg"] == 88.1
    assert row["spec.loss_params.alpha"] == 1.5 and row["last_epoch.parts.nac"] == 0.2
    assert data.runs.set_index("run_id").loc[died["run_id"], "error.type"] == "WorkerDied"
    assert data.history["epoch"].tolist() == [0, 1]


def test_a_newer_or_broken_record_is_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "0123456789abcdef.json"
    path.parent.mkdir()
    path.write_text(json.dumps(_schema_1_record() | {"schema": 5}))
    with pytest.raises(
        UserError, match=r"schema-5 run record from a newer podbench.*upgrade podbench"
    ):
        load_record(path)
    path.write_bytes(b"\x00\x01binary")
    with pytest.raises(UserError, match="binary file") as err:
        ResultsStore(tmp_path).read_record("0123456789abcdef")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="binary file"):
        load_results(tmp_path)
    path.write_text(
        json.dumps(_schema_1_record() | {"final_test_acc": 87.0})
    )  # percent, not a fraction
    with pytest.raises(UserError, match=r"the field final_test_acc is invalid .*87\.0"):
        load_record(path)


def test_non_finite_values_are_written_as_null() -> None:
    record = parse_record(
        _schema_1_record() | {"geometry": {"mean_feature_norm": math.nan}, "wall_time_s": math.inf}
    )
    data = _strict(record.to_json_text())
    assert data["geometry"] == {"mean_feature_norm": None} and data["wall_time_s"] is None


def _records_with_new_metrics() -> list[dict[str, Any]]:
    """A completed record carrying an extra geometry statistic and two evaluation probes."""
    new = _schema_1_record() | {"schema": 2}
    new["geometry"] = new["geometry"] | {"effective_rank": 12.5}
    new["evaluation"] = {"calibration": {"ece": 0.05, "nll": 0.4}, "ood": {"auroc": 0.91}}
    return [new, _schema_1_worker_died()]


def test_results_csv_and_report_share_the_columns(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    for rec in _records_with_new_metrics():
        store.write_record(rec)
    csv = pd.read_csv(store.write_table())
    report = load_results(tmp_path).runs
    # what the report derives across runs (condition blocks, mCE against softmax) is added in
    # its own view (podbench.reports.criteria.with_criteria), not to the loaded table
    assert list(csv.columns) == list(report.columns)
    for name in (
        "geometry.mean_cos_to_center",
        "geometry.effective_rank",
        "env.device",
        "evaluation.calibration.ece",
        "evaluation.ood.auroc",
        "error.type",
        "spec.loss_params.alpha",
        "last_epoch.parts.nac",
        "cpu_time_s",
    ):
        assert name in csv.columns, name
    assert "history" not in csv.columns and "error.traceback" not in csv.columns
    by_id = csv.set_index("run_id")
    assert by_id.loc["0123456789abcdef", "evaluation.calibration.ece"] == 0.05
    assert by_id.loc["0123456789abcdef", "geometry.effective_rank"] == 12.5
    assert by_id.loc["0123456789abcdef", "spec.milestones"] == "[1]"
    assert pd.isna(by_id.loc["fedcba9876543210", "evaluation.ood.auroc"])
    assert report.set_index("run_id").loc["0123456789abcdef", "evaluation.ood.auroc"] == 0.91


def test_flattening_names_columns_as_pandas_json_normalize_does() -> None:
    """pandas alone (json_normalize, '.') reads a record file into the same column names."""
    record = _records_with_new_metrics()[0]
    text = RunRecord.model_validate(record).to_json_text()
    plain = pd.json_normalize(json.loads(text), sep=".").iloc[0].to_dict()
    row = flatten_record(record)
    expected = {k for k, v in plain.items() if k not in {"history", "error"}}
    assert expected == {k for k in row if not k.startswith("last_epoch.")}
    for key in expected - {"spec.milestones"}:  # lists stay one cell, as JSON text
        assert row[key] == plain[key] or (row[key] is None and plain[key] is None), key
    assert row["spec.milestones"] == json.dumps(plain["spec.milestones"])


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_results_and_report_files_get_umask_permissions(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        store = ResultsStore(tmp_path)
        store.write_record(_schema_1_record())
        store.write_record(
            _schema_1_worker_died()
            | {"run_id": "1111111111111111", "label": "pod", "status": "completed", "error": None}
        )
        store.write_table()
        store.write_suite({"name": "t"})
        html = build_report(tmp_path, tmp_path / "report", control="pod")
    finally:
        os.umask(old)
    expected = {0o022: 0o644, 0o027: 0o640}[umask]
    files = [
        store.record_path("0123456789abcdef"),
        tmp_path / "results.csv",
        tmp_path / "suite.yaml",
        html,
        html.with_name("stats.json"),
        html.with_name("report.tex"),
    ]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
