"""Ray Tune as the executor of a suite: one trial per run, records written by the trials.

A suite's life here: the runs without a final record (:func:`pending_runs`) become one Tune
trial each, a function trainable with the run's own resources (:func:`trial_resources`). The
trial (:func:`run_trial`) trains with :func:`~podbench.worker.train_in_worker` and writes its
record atomically into ``RESULTS/runs/<run_id>.json`` itself, so every finished run is on disk even
if the driver dies. A trial whose worker died is retried ``max_failures`` times; after that the
driver records it ``failed`` (:func:`worker_failure_record`). The records then give the
:class:`SuiteOutcome`. Rerunning the suite runs only the runs without a final record (completed
or diverged; failed runs are tried again). All but :func:`run_suite` and its Tune callback work
without Ray; the connection to Ray is :mod:`podbench.ray_cluster`'s.

Several drivers may share one results folder (two terminals, a job submitted twice, nodes on
NFS): a trial claims its run before training it (:mod:`podbench.run_claims`), and the driver
waits for the runs other drivers hold, taking over those whose holder died, so each run is
trained once.

On a cluster of several machines the results directory must be on storage every node sees (NFS,
a shared volume), since the trials write their records there themselves.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podbench import ray_cluster
from podbench.results import ResultsStore
from podbench.run_claims import (
    CLAIMED,
    claim_settings,
    drop_dead_claim,
    share_suite,
    train_claimed,
)
from podbench.runs import RunSpec
from podbench.worker import failed_record, train_in_worker

__all__ = [
    "run_suite",
    "pending_runs",
    "run_trial",
    "worker_failure_record",
    "SuiteOutcome",
    "trial_resources",
]


@dataclass(frozen=True)
class SuiteOutcome:
    """Counts of a suite invocation: runs skipped (a final record existed), and of the runs it
    ran, those completed, diverged, failed, and interrupted (no record: the suite was stopped);
    ``elsewhere``: runs another driver on the same folder trained meanwhile."""

    skipped: int = 0
    completed: int = 0
    diverged: int = 0
    failed: int = 0
    interrupted: int = 0
    elsewhere: int = 0

    @classmethod
    def of_records(
        cls,
        ran: Sequence[RunSpec],
        store: ResultsStore,
        skipped: int,
        elsewhere: Sequence[RunSpec] = (),
    ) -> SuiteOutcome:
        """The counts after running ``ran``, from their records in ``store``."""
        counts = {"completed": 0, "diverged": 0, "failed": 0, "interrupted": 0}
        others = {r.run_id for r in elsewhere}
        for run in ran:
            if run.run_id in others:
                continue
            record = store.read_record(run.run_id)
            counts["interrupted" if record is None else record["status"]] += 1
        return cls(skipped=skipped, elsewhere=len(others), **counts)

    @property
    def ok(self) -> bool:
        """Every run it ran has a record, and none failed."""
        return self.failed == 0 and self.interrupted == 0


def pending_runs(runs: Sequence[RunSpec], store: ResultsStore) -> list[RunSpec]:
    """Runs without a final (completed or diverged) record."""
    return [r for r in runs if not store.has_final(r.run_id)]


def run_trial(
    run: RunSpec, results_dir: str | Path, claims: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One trial's work: claim ``run``, train it and write its record, unless a final record
    exists already (a retried trial of a run that finished, or another driver's) or another
    process holds the run (``claims``: :func:`~podbench.run_claims.claim_settings`); returns what
    the trial reports to Tune (``skipped`` when it trained nothing)."""
    from podbench.tensorboard import run_log_dir

    store = ResultsStore(results_dir)
    existing = store.read_record(run.run_id)
    if existing is not None and existing.get("status") in ("completed", "diverged"):
        return {"status": existing["status"], "skipped": True}
    checkpoint_dir = store.checkpoint_dir(run.run_id) if run.checkpoint else None
    record = train_claimed(
        store,
        run,
        claims or claim_settings(),
        lambda on_epoch: train_in_worker(
            run,
            on_epoch=on_epoch,
            checkpoint_dir=checkpoint_dir,
            tensorboard_dir=run_log_dir(store.root, run),
        ),
    )
    if record is None:
        return {"status": CLAIMED, "skipped": True}
    return {"status": record["status"], "final_test_acc": record["final_test_acc"] or 0.0}


def _trial(config: dict[str, Any]) -> None:
    """The Tune function trainable: :func:`run_trial` on the trial's run."""
    from ray import tune

    tune.report(
        run_trial(
            RunSpec.model_validate(config["run"]), config["results_dir"], config.get("claims")
        )
    )


def trial_resources(config: dict[str, Any]) -> Any:
    """The Ray resources of a run's trial: its CPUs, and its GPU share when ``gpus`` > 0."""
    from ray import tune

    bundle = {"CPU": float(config["run"]["cpus"])}
    if config["run"]["gpus"]:
        bundle["GPU"] = float(config["run"]["gpus"])
    return tune.PlacementGroupFactory([bundle])


def _run_id(run_json: dict[str, Any]) -> str:
    return RunSpec.model_validate(run_json).run_id


def worker_failure_record(
    store: ResultsStore, run_json: dict[str, Any], error_file: Any
) -> dict[str, Any]:
    """The driver's record of a run whose worker died more often than allowed (the trial's own
    record when it wrote one before its worker died)."""
    run = RunSpec.model_validate(run_json)
    existing = store.read_record(run.run_id)
    if existing is not None:
        return existing
    message = "the worker running this run died (out of memory, killed, or node lost) on every try"
    trace = None
    if error_file and Path(str(error_file)).is_file():
        trace = Path(str(error_file)).read_text(encoding="utf-8", errors="replace")[-20000:]
    record = failed_record(run, "WorkerDied", message, trace=trace)
    store.write_record(record)
    drop_dead_claim(store, run.run_id)  # the dead worker's claim would linger until a rerun
    return record


def _progress_callback(store: ResultsStore, progress: Any) -> Any:
    """The Tune callback that shows the suite's progress on the driver and records dead workers.

    Tune pickles its RunConfig, callbacks included, and a display holds a stream that may not
    pickle (pytest's capture, a rich console): a pickled copy goes without the display.
    """
    from ray.tune import Callback

    class ProgressCallback(Callback):
        # given as arguments: a closure's cells would be pickled with the (local) class
        def __init__(self, root: str, progress: Any) -> None:
            self.root = root
            self.progress = progress

        def __getstate__(self) -> dict[str, Any]:
            return {**self.__dict__, "progress": None}

        def on_trial_start(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            if self.progress is not None:
                run = trial.config["run"]
                self.progress.run_started(_run_id(run), run.get("label") or run["loss"])

        def on_trial_complete(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            run_id = _run_id(trial.config["run"])
            record = ResultsStore(self.root).read_record(run_id)
            if self.progress is not None and (trial.last_result or {}).get("skipped"):
                self.progress.run_left(run_id)  # another driver's: shown when it finishes
            elif self.progress is not None and record is not None:
                self.progress.run_finished(record)

        def on_trial_error(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            record = worker_failure_record(
                ResultsStore(self.root), trial.config["run"], trial.error_file
            )
            if self.progress is not None:
                self.progress.run_finished(record)

    return ProgressCallback(str(store.root), progress)


def _concurrency(cluster_cpus: float, todo: Sequence[RunSpec], max_concurrent: int | None) -> int:
    """How many runs fit at once: the cluster's CPUs by the largest run's share, at most
    ``max_concurrent``."""
    fit = max(1, int(cluster_cpus // max(r.cpus for r in todo)))
    return min(fit, max_concurrent) if max_concurrent else fit


def _tuner(
    todo: Sequence[RunSpec],
    results_abs: str,
    storage: str,
    max_concurrent: int | None,
    max_failures: int,
    callback: Any,
    claims: dict[str, Any],
) -> Any:
    from ray import tune

    return tune.Tuner(
        tune.with_resources(_trial, trial_resources),
        param_space={
            "run": tune.grid_search([r.model_dump(mode="json") for r in todo]),
            "results_dir": results_abs,
            "claims": claims,
        },
        tune_config=tune.TuneConfig(
            max_concurrent_trials=max_concurrent or None,
            # one worker process serves run after run (of the same resources): torch's import,
            # CUDA's set-up and compiled code are paid once; each run puts back the global
            # state it changed (podbench.runtime.runtime_policy, podbench.worker)
            reuse_actors=True,
            trial_name_creator=lambda t: f"run-{_run_id(t.config['run'])}",
            trial_dirname_creator=lambda t: f"run-{_run_id(t.config['run'])}",
        ),
        run_config=tune.RunConfig(
            name="podbench",
            storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            verbose=0,
            callbacks=[callback],
        ),
    )


def run_suite(
    runs: Sequence[RunSpec],
    results_dir: str | Path,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    max_concurrent: int | None = None,
    max_failures: int = 2,
    progress_stream: Any = None,
    rich_display: bool | None = None,
) -> SuiteOutcome:
    """Execute the runs that have no final record yet; return the counts.

    Args:
        runs: the expanded suite.
        results_dir: the results directory (records go to ``runs/``).
        address: Ray cluster address; None = embedded local Ray with ``num_cpus``.
        num_cpus: CPUs of the embedded Ray.
        max_concurrent: at most this many runs at once (None: as many as resources allow).
        max_failures: retries of a run whose worker died.
        progress_stream, rich_display: passed to :class:`~podbench.progress.SuiteProgress`.
    """
    from podbench.progress import SuiteProgress

    store = ResultsStore(results_dir)
    todo = pending_runs(runs, store)
    skipped = len(runs) - len(todo)
    if not todo:
        print(
            f"all {len(runs)} run(s) already have records in {store.root}; nothing to do.",
            file=progress_stream,
            flush=True,
        )
        return SuiteOutcome(skipped=skipped)
    # Tune's own tables would interleave with our progress lines; verbose=0 then prints nothing
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ray_cluster.init_ray(address, num_cpus)
    import ray

    concurrency = _concurrency(float(ray.cluster_resources().get("CPU", 1)), todo, max_concurrent)
    progress = SuiteProgress(
        len(todo),
        skipped=skipped,
        concurrency=concurrency,
        stream=progress_stream,
        rich_display=rich_display,
    )
    results_abs = str(Path(results_dir).resolve())
    if address:  # the trials write their records on their own nodes
        ray_cluster.check_nodes_write(Path(results_abs))
    claims = claim_settings()

    def train(batch: list[RunSpec]) -> set[str]:
        """One round of trials; returns the runs they found held or finished by another driver."""
        storage = tempfile.mkdtemp(prefix="podbench-tune-")  # Tune's bookkeeping, not results
        try:
            grid = _tuner(
                batch,
                results_abs,
                storage,
                max_concurrent,
                max_failures,
                _progress_callback(store, progress),
                claims,
            ).fit()
        finally:
            shutil.rmtree(storage, ignore_errors=True)
        return {_run_id(r.config["run"]) for r in grid if (r.metrics or {}).get("skipped")}

    with progress:
        shared = share_suite(
            todo,
            store,
            claims,
            train,
            progress.note,
            lambda record: progress.run_finished(record, " (another driver)"),
        )
    return SuiteOutcome.of_records(todo, store, skipped, shared.elsewhere)
