"""Progress display: plain lines off a terminal, rich on one; ETA from finished runs."""

from __future__ import annotations

import io

import pytest

from podbench.progress import SuiteProgress, format_run_line


def _record(run_id: str, status: str, wall: float, acc: float | None = 0.9) -> dict:
    error = (
        None
        if status == "completed"
        else {"type": "RuntimeError", "message": "boom\nmore", "epoch": 2}
    )
    return {
        "run_id": run_id,
        "status": status,
        "label": "pod[no-sc]",
        "dataset": "digits",
        "arch": "mlp",
        "feat_dim": 16,
        "seed": 1,
        "wall_time_s": wall,
        "final_test_acc": acc,
        "error": error,
        "history": [],
    }


def test_plain_lines_counts_and_eta() -> None:
    out = io.StringIO()  # not a TTY: plain lines
    progress = SuiteProgress(5, skipped=2, concurrency=2, stream=out)
    with progress:
        for run_id in ("a", "b", "c"):
            progress.run_started(run_id, "pod")
        assert progress.eta_seconds() is None  # nothing finished yet
        progress.run_finished(_record("a", "completed", 30.0))
        progress.run_finished(_record("b", "failed", 10.0))
        # mean 20 s per run, 3 runs left, 2 at a time -> 30 s
        assert progress.eta_seconds() == pytest.approx(20.0 * 3 / 2)
        assert progress.state() == "1 done, 1 running, 1 failed, ETA 0m30s"
    lines = out.getvalue().splitlines()
    assert lines[0] == "5 run(s) to do, 2 already finished (skipped)"
    assert lines[1].startswith("[1/5] done     pod[no-sc] digits/mlp d=16 seed=1: test_acc=0.9000")
    assert lines[2].startswith(
        "[2/5] failed   pod[no-sc] digits/mlp d=16 seed=1 at epoch 2: RuntimeError: boom [b]"
    )
    assert lines[-1].endswith("1 completed, 1 diverged or failed")
    assert "\x1b[" not in out.getvalue()  # no terminal escapes in logs


def test_rich_display_prints_run_lines() -> None:
    out = io.StringIO()
    with SuiteProgress(1, stream=out, rich_display=True) as progress:
        progress.run_started("a", "pod")
        progress.run_finished(_record("a", "diverged", 5.0, acc=None))
    text = out.getvalue()
    assert "[1/1] diverged pod[no-sc]" in text and "finished in" in text


def test_val_only_record_shows_val_accuracy() -> None:
    record = _record("v", "completed", 1.0, acc=None)
    record["history"] = [{"val_acc": 0.5}]
    assert "val_acc=0.5000" in format_run_line(record)
