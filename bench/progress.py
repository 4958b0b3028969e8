"""Progress of a suite: runs done / running / failed, an ETA, and one line per finished run.

On a terminal a rich progress bar stays at the bottom while the per-run lines scroll above it;
otherwise (CI logs, files, pipes) each event is one plain line.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

__all__ = ["SuiteProgress", "format_run_line"]


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def format_run_line(record: dict[str, Any]) -> str:
    """One line summarising a finished run record."""
    status = record.get("status", "?")
    what = (
        f"{record.get('label')} {record.get('dataset')}/{record.get('arch')} d={record.get('feat_dim')} "
        f"seed={record.get('seed')}"
    )
    wall = _fmt_duration(record.get("wall_time_s"))
    if status == "completed":
        acc = record.get("final_test_acc")
        if acc is None and record.get("history"):
            acc = record["history"][-1].get("val_acc")
            metric = "val_acc"
        else:
            metric = "test_acc"
        shown = "n/a" if acc is None else f"{acc:.4f}"
        return f"done     {what}: {metric}={shown} in {wall} [{record.get('run_id')}]"
    error = record.get("error") or {}
    epoch = error.get("epoch")
    where = f" at epoch {epoch}" if epoch is not None else ""
    message = str(error.get("message", "")).splitlines()[0][:160] if error.get("message") else ""
    return f"{status:<8} {what}{where}: {error.get('type', '')}: {message} [{record.get('run_id')}]"


class SuiteProgress:
    """Tracks and displays the state of a suite.

    Args:
        total: runs to execute in this invocation (skipped ones excluded).
        skipped: runs already finished by an earlier invocation.
        concurrency: how many runs can run at once (for the ETA).
        stream: where plain lines go (default stdout).
        rich_display: force the rich display on (True) or off (False); None = when a TTY.
    """

    def __init__(
        self,
        total: int,
        *,
        skipped: int = 0,
        concurrency: int = 1,
        stream: IO[str] | None = None,
        rich_display: bool | None = None,
    ) -> None:
        self.total = total
        self.skipped = skipped
        self.concurrency = max(1, concurrency)
        self.stream = stream or sys.stdout
        self.done = 0
        self.failed = 0
        self.running: set[str] = set()
        self.durations: list[float] = []
        self.started = time.monotonic()
        use_rich = self.stream.isatty() if rich_display is None else rich_display
        self._rich: Any = None
        self._task: Any = None
        if use_rich:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            console = Console(file=self.stream)
            self._rich = Progress(
                TextColumn("[bold]runs"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[state]}"),
                console=console,
                transient=False,
            )

    def eta_seconds(self) -> float | None:
        """Remaining time: mean run duration x remaining runs / concurrency."""
        if not self.durations:
            return None
        remaining = self.total - self.done - self.failed
        return sum(self.durations) / len(self.durations) * remaining / self.concurrency

    def state(self) -> str:
        return (
            f"{self.done} done, {len(self.running)} running, {self.failed} failed, "
            f"ETA {_fmt_duration(self.eta_seconds())}"
        )

    def __enter__(self) -> SuiteProgress:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        head = f"{self.total} run(s) to do"
        if self.skipped:
            head += f", {self.skipped} already finished (skipped)"
        if self._rich is not None:
            self._rich.start()
            self._rich.console.print(head)
            self._task = self._rich.add_task("runs", total=self.total, state=self.state())
        else:
            self._line(head)

    def run_started(self, run_id: str, label: str) -> None:
        self.running.add(run_id)
        self._refresh()

    def run_left(self, run_id: str) -> None:
        """A run that started here but that another driver trains (its line comes later)."""
        self.running.discard(run_id)
        self._refresh()

    def note(self, text: str) -> None:
        """One line for people between the run lines (waiting for, taking over runs)."""
        if self._rich is not None:
            self._rich.console.print(text, markup=False, highlight=False)
        else:
            self._line(text)

    def run_finished(self, record: dict[str, Any], suffix: str = "") -> None:
        """One line per finished run; ``suffix`` is appended (" (trained by another driver)")."""
        self.running.discard(record.get("run_id", ""))
        if record.get("status") == "completed":
            self.done += 1
        else:
            self.failed += 1
        if record.get("wall_time_s") is not None:
            self.durations.append(float(record["wall_time_s"]))
        line = f"[{self.done + self.failed}/{self.total}] {format_run_line(record)}{suffix}"
        if self._rich is not None:
            self._rich.console.print(line, markup=False, highlight=False)
            self._rich.update(self._task, completed=self.done + self.failed, state=self.state())
        else:
            self._line(f"{line} | {self.state()}")

    def _refresh(self) -> None:
        if self._rich is not None and self._task is not None:
            self._rich.update(self._task, state=self.state())

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        elapsed = _fmt_duration(time.monotonic() - self.started)
        tail = f"finished in {elapsed}: {self.done} completed, {self.failed} diverged or failed"
        if self._rich is not None:
            self._rich.console.print(tail)
            self._rich.stop()
            self._rich = None
        else:
            self._line(tail)
