"""The suite executor without Ray: pending runs -> trials -> records -> outcome, and resume."""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from podbench import executor
from podbench.executor import SuiteOutcome, pending_runs, run_trial
from podbench.results import ResultsStore
from podbench.runs import RunSettings, RunSpec, resolve_run
from podbench.worker import failed_record

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(seed: int, cpus: float = 1) -> RunSpec:
    settings = RunSettings(
        epochs=1,
        max_steps=2,
        lr=0.05,
        batch_size=32,
        schedule="constant",
        device="cpu",
        cpus=cpus,
        limit_train=64,
        limit_eval=32,
    )
    return resolve_run(
        settings, suite="t", loss="softmax", dataset="digits", arch="mlp", seed=seed, feat_dim=8
    )


def test_a_suite_resumes_with_the_runs_that_have_no_final_record(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    done, failed, fresh, diverged = (_run(seed) for seed in range(4))
    assert run_trial(done, tmp_path)["status"] == "completed"
    store.write_record(failed_record(failed, "WorkerDied", "killed"))
    diverged_record = failed_record(diverged, "RunDiverged", "NaN")
    diverged_record["status"] = "diverged"
    store.write_record(diverged_record)
    runs = [done, failed, fresh, diverged]
    todo = pending_runs(runs, store)
    assert [r.run_id for r in todo] == [failed.run_id, fresh.run_id]  # failed runs again
    # a retried trial of a run that finished meanwhile trains nothing
    assert run_trial(done, tmp_path) == {"status": "completed", "skipped": True}
    before = (tmp_path / "runs" / f"{done.run_id}.json").read_text()
    assert run_trial(fresh, tmp_path)["status"] == "completed"
    assert (tmp_path / "runs" / f"{done.run_id}.json").read_text() == before
    # `failed` was not rerun (as if the suite was stopped): its old record still counts
    assert SuiteOutcome.of_records(todo, store, skipped=2) == SuiteOutcome(
        skipped=2, completed=1, failed=1
    )
    assert not SuiteOutcome.of_records(todo, store, skipped=2).ok
    unrun = _run(7)
    outcome = SuiteOutcome.of_records([fresh, unrun], store, skipped=0)
    assert (outcome.completed, outcome.interrupted, outcome.ok) == (1, 1, False)
    assert SuiteOutcome.of_records([done, fresh], store, skipped=0).ok


@pytest.mark.parametrize(
    ("cluster", "cpus", "limit", "expected"),
    [
        (8, [2, 3], None, 2),
        (8, [2, 2], 3, 3),
        (8, [1], 2, 2),
        (1, [2], None, 1),
        (7.5, [2.5], None, 3),
    ],
)
def test_concurrency_is_the_cluster_cpus_by_the_largest_run(
    cluster: float, cpus: list[float], limit: int | None, expected: int
) -> None:
    runs = [_run(i, cpus=c) for i, c in enumerate(cpus)]
    assert executor._concurrency(cluster, runs, limit) == expected


class _Display:
    """A progress display holding a stream that cannot be pickled (as pytest's capture)."""

    def __init__(self) -> None:
        self.stream = io.TextIOWrapper(io.BytesIO())
        self.events: list[tuple[str, str]] = []

    def run_started(self, run_id: str, label: str) -> None:
        self.events.append(("started", run_id))

    def run_finished(self, record: dict[str, Any]) -> None:
        self.events.append((record["status"], record["run_id"]))


def test_the_progress_callback_pickles_without_its_display(tmp_path: Path) -> None:
    import ray.cloudpickle

    store = ResultsStore(tmp_path)
    display = _Display()
    with pytest.raises(TypeError):
        pickle.dumps(display)
    callback = executor._progress_callback(store, display)
    copy = ray.cloudpickle.loads(ray.cloudpickle.dumps(callback))  # as Tune saves its RunConfig
    assert copy.progress is None and copy.root == str(store.root)
    run = _run(0)
    trial = SimpleNamespace(config={"run": run.model_dump(mode="json")}, error_file=None)
    callback.on_trial_start(0, [], trial)
    callback.on_trial_error(0, [], trial)  # its worker died on every try: the driver records it
    copy.on_trial_error(0, [], trial)  # a copy without a display still records (it exists)
    record = store.read_record(run.run_id)
    assert record is not None and record["error"]["type"] == "WorkerDied"
    assert display.events == [("started", run.run_id), ("failed", run.run_id)]


def test_the_installed_ray_is_the_pinned_one_with_the_private_api_the_connection_uses() -> None:
    import ray
    from packaging.requirements import Requirement

    project = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    (pin,) = [Requirement(r) for r in re.findall(r'^\s*"(ray\W[^"]*)"', project, flags=re.M)]
    assert ray.__version__ in pin.specifier
    assert list(pin.specifier.filter(["2.59.0", "2.61.0"])) == []  # no other minor version
    # what podbench.ray_cluster reaches into: the GCS probe and the switch of the auth mode
    from ray._raylet import AuthenticationTokenLoader, Config, GcsClient
    from ray.exceptions import AuthenticationError

    assert callable(Config.initialize) and callable(AuthenticationTokenLoader.instance)
    assert issubclass(AuthenticationError, Exception) and GcsClient is not None
