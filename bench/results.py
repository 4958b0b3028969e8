"""The results directory: one JSON record per run, written atomically, and a consolidated table.

Layout (readable without podbench)::

    RESULTS/suite.yaml           the expanded suite that produced the runs
    RESULTS/runs/<run_id>.json   one record per run
    RESULTS/results.csv          one row per run, flat columns
    RESULTS/claims/              the runs being trained now, and by whom (see podbench.claims)

A record is written by the process that trained the run, as a temporary file in the same folder
renamed over the final name, so a reader (or a resumed suite) sees either nothing or the whole
record, whatever happens to the writer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from podbench.claims import CLAIMS_DIR, ClaimStore
from podbench.errors import UserError
from podbench.fileio import atomic_write_text, local_path
from podbench.record import FINAL_STATUSES, RunRecord, load_record, parse_record, records_frame

__all__ = ["ResultsStore", "FINAL_STATUSES"]


class ResultsStore:
    """A results directory (see the module docstring).

    Args:
        root: the results directory; created on the first write.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = local_path(root, "results folder")
        self.runs_dir = self.root / "runs"

    def record_path(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}.json"

    def claims(self, **kwargs: Any) -> ClaimStore:
        """The claims of the runs being trained on this folder now (see podbench.claims)."""
        return ClaimStore(self.root / CLAIMS_DIR, **kwargs)

    def checkpoint_dir(self, run_id: str) -> Path:
        return self.root / "checkpoints" / run_id

    def write_record(self, record: RunRecord | Mapping[str, Any]) -> Path:
        """Validate one run record and write it atomically; returns its path."""
        checked = parse_record(record, "the run record to write")
        path = self.record_path(checked.run_id)
        atomic_write_text(path, checked.to_json_text())
        return path

    def read_record(self, run_id: str) -> dict[str, Any] | None:
        """The run's record (migrated to the current schema) as JSON, or None if it has none."""
        path = self.record_path(run_id)
        if not path.exists():
            return None
        return load_record(path).to_json_dict()

    def has_final(self, run_id: str) -> bool:
        """True when the run has a record that a rerun must not repeat."""
        record = self.read_record(run_id)
        return record is not None and record.get("status") in FINAL_STATUSES

    def run_records(self) -> Iterator[RunRecord]:
        """All run records (migrated to the current schema), sorted by run_id."""
        if not self.runs_dir.is_dir():
            return
        for path in sorted(self.runs_dir.glob("*.json")):
            if path.name.startswith("."):  # temporary files are never read
                continue
            yield load_record(path)

    def records(self) -> Iterator[dict[str, Any]]:
        """All run records as JSON, sorted by run_id."""
        for record in self.run_records():
            yield record.to_json_dict()

    def table(self) -> pd.DataFrame:
        """One row per run, dot-separated columns (the content of results.csv)."""
        frame = records_frame(self.run_records())
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
        header = (
            "# The suite that produced these runs (overrides applied); `podbench run` accepts it.\n"
        )
        atomic_write_text(path, header + yaml.safe_dump(spec_dump, sort_keys=False))
        return path

    @classmethod
    def open_existing(cls, root: str | Path) -> ResultsStore:
        """A store that must already hold run records (for ``podbench results``)."""
        store = cls(root)
        if not store.runs_dir.is_dir() and not (store.root / CLAIMS_DIR).is_dir():
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
