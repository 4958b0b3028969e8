"""Read a results directory (run records only) into pandas tables.

Reports never import torch, Ray or the engine: everything comes from ``RESULTS/runs/*.json``,
``RESULTS/suite.yaml`` and ``RESULTS/tune/<study>/``, as described in docs/CONTRACTS.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from podbench.errors import UserError

__all__ = [
    "GEOMETRY_KEYS",
    "METRICS",
    "MetricInfo",
    "ResultsData",
    "TuningStudy",
    "load_results",
    "metric_info",
]

REQUIRED_FIELDS = ("run_id", "label", "dataset", "arch", "seed", "status")
STATUSES = ("completed", "diverged", "failed")
GEOMETRY_KEYS = (
    "mean_cos_to_center",
    "min_interclass_angle_deg",
    "mean_abs_offdiag_corr",
    "mean_feature_norm",
)


@dataclass(frozen=True)
class MetricInfo:
    """How a compared metric is read, scaled and ordered."""

    name: str
    title: str
    unit: str
    scale: float  # records store accuracies as fractions; reports show percent
    higher_is_better: bool


METRICS: dict[str, MetricInfo] = {
    "final_test_acc": MetricInfo("final_test_acc", "final test accuracy", "%", 100.0, True),
    "best_test_acc": MetricInfo("best_test_acc", "best test accuracy", "%", 100.0, True),
    "wall_time_s": MetricInfo("wall_time_s", "wall time", "s", 1.0, False),
    "images_per_s": MetricInfo("images_per_s", "training throughput", "images/s", 1.0, True),
    "geometry.mean_cos_to_center": MetricInfo(
        "geometry.mean_cos_to_center", "mean cosine to class centre", "", 1.0, True
    ),
    "geometry.min_interclass_angle_deg": MetricInfo(
        "geometry.min_interclass_angle_deg", "minimum inter-class angle", "deg", 1.0, True
    ),
    "geometry.mean_abs_offdiag_corr": MetricInfo(
        "geometry.mean_abs_offdiag_corr", "mean |off-diagonal feature correlation|", "", 1.0, False
    ),
    "geometry.mean_feature_norm": MetricInfo(
        "geometry.mean_feature_norm", "mean feature norm", "", 1.0, True
    ),
}


def metric_info(name: str) -> MetricInfo:
    """Return the description of a comparable metric, or raise a one-sentence UserError."""
    try:
        return METRICS[name]
    except KeyError:
        raise UserError(
            f"--metric {name!r} is not a recorded metric; use one of: {', '.join(METRICS)}."
        ) from None


@dataclass
class TuningStudy:
    """One tuning study found under ``RESULTS/tune/<study>/``."""

    name: str
    trials: pd.DataFrame | None
    importances: dict[str, dict[str, float]] | None


@dataclass
class ResultsData:
    """Everything a report needs, read from one results directory."""

    root: Path
    runs: pd.DataFrame  # one row per record, flat columns
    history: pd.DataFrame  # one row per (run, epoch)
    records: list[dict[str, Any]]
    suite_yaml: str | None
    studies: list[TuningStudy] = field(default_factory=list)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno}); delete it and rerun that run."
        ) from None


def _check_record(rec: Any, path: Path) -> dict[str, Any]:
    if not isinstance(rec, dict):
        raise UserError(f"{path} does not hold a run record (a JSON object); delete it or rerun.")
    if rec.get("schema", 1) != 1:
        raise UserError(
            f"{path} has schema {rec.get('schema')!r} but this podbench reads schema 1; "
            "upgrade podbench or rerun."
        )
    missing = [k for k in REQUIRED_FIELDS if k not in rec]
    if missing:
        raise UserError(f"{path} lacks the field(s) {', '.join(missing)}; rerun that run.")
    if rec["status"] not in STATUSES:
        raise UserError(
            f"{path} has status {rec['status']!r}; the field status must be one of "
            f"{', '.join(STATUSES)}."
        )
    return rec


def _flat_row(rec: dict[str, Any]) -> dict[str, Any]:
    err = rec.get("error") or {}
    env = rec.get("env") or {}
    geometry = rec.get("geometry") or {}
    row: dict[str, Any] = {
        "run_id": str(rec["run_id"]),
        "suite": rec.get("suite"),
        "label": str(rec["label"]),
        "loss": rec.get("loss"),
        "variant": rec.get("variant"),
        "dataset": str(rec["dataset"]),
        "arch": str(rec["arch"]),
        "feat_dim": rec.get("feat_dim"),
        "seed": rec["seed"],
        "status": rec["status"],
        "error_type": err.get("type") if isinstance(err, dict) else None,
        "error_message": err.get("message") if isinstance(err, dict) else str(err),
        "error_epoch": err.get("epoch") if isinstance(err, dict) else None,
        "final_test_acc": rec.get("final_test_acc"),
        "best_test_acc": rec.get("best_test_acc"),
        "epochs_completed": rec.get("epochs_completed"),
        "wall_time_s": rec.get("wall_time_s"),
        "images_per_s": rec.get("images_per_s"),
        "started_at": rec.get("started_at"),
        "finished_at": rec.get("finished_at"),
    }
    for key in GEOMETRY_KEYS:
        row[f"geometry.{key}"] = geometry.get(key) if isinstance(geometry, dict) else None
    for key in ("podbench", "torch", "python", "device", "git_commit", "hostname", "ray"):
        row[f"env.{key}"] = env.get(key) if isinstance(env, dict) else None
    return row


def _read_study(folder: Path) -> TuningStudy | None:
    trials_path = folder / "trials.csv"
    imp_path = folder / "importances.json"
    trials = pd.read_csv(trials_path) if trials_path.is_file() else None
    importances = None
    if imp_path.is_file():
        raw = _read_json(imp_path)
        if not isinstance(raw, dict):
            raise UserError(
                f"{imp_path} must map each loss to {{param: importance}}; rerun tuning."
            )
        importances = {
            str(loss): {str(p): float(v) for p, v in (params or {}).items()}
            for loss, params in raw.items()
        }
    if trials is None and importances is None:
        return None
    return TuningStudy(folder.name, trials, importances)


def load_results(results_dir: str | Path) -> ResultsData:
    """Read every run record of ``results_dir`` into tables.

    Args:
        results_dir: a results directory (``RESULTS/`` with ``runs/*.json``).

    Returns:
        The runs table (one row per record, every status), the per-epoch history table, the raw
        records, the expanded suite file text and any tuning studies.

    Raises:
        UserError: the directory or its records are missing or unreadable.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise UserError(
            f"results directory {root} does not exist; pass the folder `podbench run` wrote."
        )
    runs_dir = root / "runs"
    paths = sorted(runs_dir.glob("*.json")) if runs_dir.is_dir() else []
    if not paths:
        raise UserError(f"{runs_dir} holds no run records (*.json); run a suite into {root} first.")
    records = [_check_record(_read_json(p), p) for p in paths]
    runs = pd.DataFrame([_flat_row(r) for r in records])
    hist_rows = []
    for rec in records:
        for entry in rec.get("history") or []:
            if not isinstance(entry, dict):
                continue
            hist_rows.append(
                {
                    "run_id": str(rec["run_id"]),
                    "label": str(rec["label"]),
                    "dataset": str(rec["dataset"]),
                    "arch": str(rec["arch"]),
                    "seed": rec["seed"],
                    "status": rec["status"],
                    "epoch": entry.get("epoch"),
                    "train_loss": entry.get("train_loss"),
                    "train_acc": entry.get("train_acc"),
                    "test_acc": entry.get("test_acc"),
                    "val_acc": entry.get("val_acc"),
                    "lr": entry.get("lr"),
                }
            )
    history = pd.DataFrame(
        hist_rows,
        columns=[
            "run_id",
            "label",
            "dataset",
            "arch",
            "seed",
            "status",
            "epoch",
            "train_loss",
            "train_acc",
            "test_acc",
            "val_acc",
            "lr",
        ],
    )
    for col in ("epoch", "train_loss", "train_acc", "test_acc", "val_acc", "lr"):
        history[col] = pd.to_numeric(history[col], errors="coerce")
    numeric = ["final_test_acc", "best_test_acc", "epochs_completed", "wall_time_s", "images_per_s"]
    numeric += [f"geometry.{k}" for k in GEOMETRY_KEYS]
    for col in numeric:
        runs[col] = pd.to_numeric(runs[col], errors="coerce")
    suite_path = root / "suite.yaml"
    suite_yaml = suite_path.read_text(encoding="utf-8") if suite_path.is_file() else None
    studies = []
    tune_dir = root / "tune"
    if tune_dir.is_dir():
        for folder in sorted(p for p in tune_dir.iterdir() if p.is_dir()):
            study = _read_study(folder)
            if study is not None:
                studies.append(study)
    return ResultsData(root, runs, history, records, suite_yaml, studies)
