"""Read a results directory (run records only) into pandas tables.

Reports never import torch, Ray or the engine: everything comes from ``RESULTS/runs/*.json``,
``RESULTS/suite.yaml`` and ``RESULTS/tune/<study>/``, as described in docs/CONTRACTS.md. Records
are read and flattened by :mod:`podbench.record`, as results.csv is: the runs table has the same
dot-separated columns (``geometry.mean_cos_to_center``, ``env.device``, ``error.type``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from podbench.errors import UserError
from podbench.fileio import read_user_text
from podbench.record import GEOMETRY_KEYS, history_frame, load_record, records_frame
from podbench.runs import check_one_setting_per_method

__all__ = [
    "GEOMETRY_KEYS",
    "METRICS",
    "MetricInfo",
    "ResultsData",
    "TuningStudy",
    "load_results",
    "metric_info",
]


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


def metric_info(name: str, columns: Iterable[str] | None = None) -> MetricInfo:
    """Return the description of a comparable metric, or raise a one-sentence UserError.

    With the runs table's ``columns``, a probe's value is comparable too (``ece``,
    ``evaluation.ood.open-set.msp.auroc``: :func:`podbench.reports.criteria.criterion_metric`).
    """
    if name in METRICS:
        return METRICS[name]
    if columns is not None and (name.startswith("evaluation.") or "." not in name):
        from podbench.reports.criteria import criterion_metric

        return criterion_metric(name, columns)
    raise UserError(
        f"--metric {name!r} is not a recorded metric; use one of: {', '.join(METRICS)}, or "
        "a probe's value (ece, nll, brier, auroc, fpr95, mca, rel_ce_vs_softmax...)."
    )


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
    runs: pd.DataFrame  # one row per record, podbench.record.records_frame's columns
    history: pd.DataFrame  # one row per (run, epoch): podbench.record.history_frame
    records: list[dict[str, Any]]
    suite_yaml: str | None
    studies: list[TuningStudy] = field(default_factory=list)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(read_user_text(path, what))
    except json.JSONDecodeError as err:
        raise UserError(
            f"{what} {path} is not valid JSON ({err.msg} at line {err.lineno}); rerun tuning."
        ) from None


def _read_study(folder: Path) -> TuningStudy | None:
    trials_path = folder / "trials.csv"
    imp_path = folder / "importances.json"
    trials = pd.read_csv(trials_path) if trials_path.is_file() else None
    importances = None
    if imp_path.is_file():
        raw = _read_json(imp_path, "tuning importances file")
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
    models = [load_record(p) for p in paths]
    records = [m.to_json_dict() for m in models]
    # Runs of one label and block are pooled as seeds: refuse a folder where they differ.
    check_one_setting_per_method(
        ({**r["spec"], "label": r["label"]} for r in records),
        str(runs_dir),
        fix="the report pools a label's runs in a block as seeds; rerun the odd ones under a "
        "label of their own (label: in the suite's losses entry), or report them apart",
    )
    runs = records_frame(models)
    history = history_frame(models)
    suite_path = root / "suite.yaml"
    suite_yaml = read_user_text(suite_path, "suite file") if suite_path.is_file() else None
    studies = []
    tune_dir = root / "tune"
    if tune_dir.is_dir():
        for folder in sorted(p for p in tune_dir.iterdir() if p.is_dir()):
            study = _read_study(folder)
            if study is not None:
                studies.append(study)
    return ResultsData(root, runs, history, records, suite_yaml, studies)
