"""The results directory: one JSON record per run, written atomically, and a consolidated table.

Layout (readable without podbench)::

    RESULTS/suite.yaml           the expanded suite that produced the runs
    RESULTS/runs/<run_id>.json   one record per run
    RESULTS/results.csv          one row per run, flat columns

A record is written by the process that trained the run, as a temporary file in the same folder
renamed over the final name, so a reader (or a resumed suite) sees either nothing or the whole
record, whatever happens to the writer.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from podbench.errors import UserError

__all__ = ["ResultsStore", "atomic_write_text", "flatten_record", "FINAL_STATUSES"]

SCHEMA_VERSION = 1
# A record with one of these statuses is final: a rerun skips it. "failed" runs are retried.
FINAL_STATUSES = frozenset({"completed", "diverged"})


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def flatten_record(record: dict[str, Any]) -> dict[str, Any]:
    """One flat row of a record for the consolidated table."""
    spec = record.get("spec") or {}
    row: dict[str, Any] = {
        key: record.get(key)
        for key in (
            "run_id", "suite", "label", "loss", "variant", "dataset", "arch", "feat_dim", "seed",
            "status", "final_test_acc", "best_test_acc", "epochs_completed", "wall_time_s",
            "images_per_s", "started_at", "finished_at",
        )
    }
    history = record.get("history") or []
    last = history[-1] if history else {}
    row["final_val_acc"] = last.get("val_acc")
    row["final_train_loss"] = last.get("train_loss")
    row["final_train_acc"] = last.get("train_acc")
    for key, value in (record.get("geometry") or {}).items():
        row[f"geometry_{key}"] = value
    error = record.get("error") or {}
    row["error_type"] = error.get("type")
    row["error_epoch"] = error.get("epoch")
    for key in ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule", "amp", "device"):
        row[f"spec_{key}"] = spec.get(key)
    row["loss_params"] = json.dumps(spec.get("loss_params") or {}, sort_keys=True)
    env = record.get("env") or {}
    row["env_device"] = env.get("device")
    row["env_git_commit"] = env.get("git_commit")
    return row


class ResultsStore:
    """A results directory (see the module docstring).

    Args:
        root: the results directory; created on the first write.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.runs_dir = self.root / "runs"

    def record_path(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}.json"

    def checkpoint_dir(self, run_id: str) -> Path:
        return self.root / "checkpoints" / run_id

    def write_record(self, record: dict[str, Any]) -> Path:
        """Write one run record atomically; returns its path."""
        path = self.record_path(record["run_id"])
        atomic_write_text(path, json.dumps(record, indent=2, sort_keys=False, allow_nan=False) + "\n")
        return path

    def read_record(self, run_id: str) -> dict[str, Any] | None:
        path = self.record_path(run_id)
        if not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def has_final(self, run_id: str) -> bool:
        """True when the run has a record that a rerun must not repeat."""
        record = self.read_record(run_id)
        return record is not None and record.get("status") in FINAL_STATUSES

    def records(self) -> Iterator[dict[str, Any]]:
        """All run records, sorted by run_id (temporary files are never read)."""
        if not self.runs_dir.is_dir():
            return
        for path in sorted(self.runs_dir.glob("*.json")):
            if path.name.startswith("."):
                continue
            yield json.loads(path.read_text(encoding="utf-8"))

    def table(self) -> pd.DataFrame:
        """One row per run, flat columns (the content of results.csv)."""
        rows = [flatten_record(r) for r in self.records()]
        frame = pd.DataFrame(rows)
        if not frame.empty:
            frame = frame.sort_values(["dataset", "arch", "label", "seed", "run_id"], kind="stable")
        return frame.reset_index(drop=True)

    def write_table(self) -> Path:
        """Consolidate every record into results.csv (atomically); returns its path."""
        path = self.root / "results.csv"
        atomic_write_text(path, self.table().to_csv(index=False))
        return path

    def write_suite(self, spec_dump: dict[str, Any]) -> Path:
        """Save the suite that produced the runs (provenance)."""
        path = self.root / "suite.yaml"
        header = "# The suite that produced these runs (overrides applied); `podbench run` accepts it.\n"
        atomic_write_text(path, header + yaml.safe_dump(spec_dump, sort_keys=False))
        return path

    @classmethod
    def open_existing(cls, root: str | Path) -> ResultsStore:
        """A store that must already hold run records (for ``podbench results``)."""
        store = cls(root)
        if not store.runs_dir.is_dir():
            raise UserError(
                f"{root}: not a results directory (no runs/ folder); give the --results folder of "
                "a `podbench run`."
            )
        return store

    def summary(self) -> pd.DataFrame:
        """Mean and standard deviation of the final test accuracy per method and block."""
        frame = self.table()
        if frame.empty:
            return frame
        grouped = frame.groupby(["dataset", "arch", "label"], sort=True, dropna=False)
        out = grouped.agg(
            runs=("run_id", "size"),
            completed=("status", lambda s: int((s == "completed").sum())),
            diverged=("status", lambda s: int((s == "diverged").sum())),
            failed=("status", lambda s: int((s == "failed").sum())),
            test_acc_mean=("final_test_acc", "mean"),
            test_acc_std=("final_test_acc", "std"),
            best_test_acc_mean=("best_test_acc", "mean"),
            images_per_s=("images_per_s", "mean"),
        )
        return out.reset_index()
