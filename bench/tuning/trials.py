"""The bridge between Optuna and Ray Tune, and the trial function: tuning the losses of a file.

A Ray Tune searcher asks each loss's study for a point (seeded TPE with constant liar, so
parallel trials spread out), a Tune scheduler reports every epoch's validation accuracy to the
study and stops the trials Optuna's successive-halving pruner (ASHA) prunes, and the searcher
tells the study how each trial ended. Trials are ordinary runs of
:func:`~podbench.engine.train_run` with ``eval_split="val"``: the test set is never read.

Rerunning the same tune file resumes: trials that finished stay, and each loss runs only what it
lacks of ``n_trials`` (see :mod:`podbench.tuning.study`).

Example (it trains, so the doctests skip its study):
    >>> from podbench.tuning import load_tune, run_study
    >>> spec = load_tune("tune-quickstart")
    >>> outcome = run_study(spec, "results")  # doctest: +SKIP
    >>> outcome.best["pod"]["val_acc"]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from pydantic import ValidationError

from podbench.errors import UserError
from podbench.runs import RunSpec
from podbench.tuning.outputs import best_points, write_outputs
from podbench.tuning.study import (
    ATTR_DRIVER,
    ATTR_EPOCHS,
    ATTR_ERROR,
    ATTR_INTERRUPTED,
    ATTR_LABEL,
    ATTR_RUN_ID,
    ATTR_STATUS,
    ATTR_SURPLUS,
    GRACE_S,
    HEARTBEAT_S,
    METRIC,
    Heartbeats,
    StudyOutcome,
    budget_slots,
    budget_used,
    make_sampler,
    open_storage,
    open_study,
    reap_stale,
    storage_url,
)
from podbench.tuning.tune_spec import TuneSpec

__all__ = ["run_study"]


class _Bridge:
    """What the searcher and the scheduler of one loss share (driver side)."""

    def __init__(
        self, spec: TuneSpec, label: str, study: optuna.Study, beats: Heartbeats, grace_s: int
    ) -> None:
        self.spec, self.label, self.study = spec, label, study
        self.beats, self.grace_s = beats, grace_s
        self.distributions = spec.distributions(label)
        self.trials: dict[str, optuna.Trial] = {}
        self.pruned: set[str] = set()
        self.told = 0

    def ask(self) -> optuna.Trial | None:
        """A new trial, or None when the budget is taken (by this driver or others)."""
        reap_stale(self.study, self.grace_s)
        trials = self.study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if not waiting and len(budget_slots(trials)) >= self.spec.n_trials:
            return None
        self.study.sampler = make_sampler(self.spec, len(trials))
        with warnings.catch_warnings():  # we beat for the trials ourselves (see Heartbeats)
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = self.study.ask(self.distributions)
        self.beats.add(trial._trial_id)
        trial.set_user_attr(ATTR_LABEL, self.label)
        trial.set_user_attr(ATTR_DRIVER, f"{socket.gethostname()}:{os.getpid()}")
        # another driver may have asked at the same moment: the later trial number yields
        slots = budget_slots(self.study.get_trials(deepcopy=False))
        if trial.number in slots and slots.index(trial.number) < self.spec.n_trials:
            return trial
        trial.set_user_attr(ATTR_SURPLUS, True)
        self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        self.beats.discard(trial._trial_id)
        return None

    def abandon(self) -> None:
        """Trials this driver started but will not finish (Ctrl-C): failed, not counted, and
        queued again at their point, so a rerun runs them."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None)
        for trial in self.trials.values():
            frozen = copy.deepcopy(self.study._storage.get_trial(trial._trial_id))
            try:
                trial.set_user_attr(ATTR_INTERRUPTED, True)
                self.study.tell(trial, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry(self.study, frozen)  # without the mark: the retry counts
            self.beats.discard(trial._trial_id)
        self.trials.clear()

    def progress(self, number: int, study: optuna.Study) -> None:
        """One line per finished trial."""
        t = study.get_trials(deepcopy=False)[number]
        value = f"val acc {t.value:.4f}" if t.value is not None else "no val acc"
        print(
            f"  {self.label} trial {number}: {t.user_attrs.get(ATTR_STATUS)} after "
            f"{t.user_attrs.get(ATTR_EPOCHS)} epoch(s), {value}",
            flush=True,
        )


def _searcher(bridge: _Bridge) -> Any:
    from ray.tune.search import Searcher

    class OptunaAskTell(Searcher):
        """Ask the study for each new trial; tell it how the trial ended."""

        def __init__(self) -> None:
            super().__init__(metric=METRIC, mode="max")

        def save(self, checkpoint_path: str) -> None:
            """Nothing to save: the study in the Optuna storage is the state."""

        def restore(self, checkpoint_path: str) -> None:
            """Nothing to restore: a rerun reopens the study in the Optuna storage."""

        def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]  # Ray's FINISHED is a str
            trial = bridge.ask()
            if trial is None:  # the budget is taken: end once this driver's trials are done
                return Searcher.FINISHED
            bridge.trials[trial_id] = trial
            config: dict[str, Any] = {"number": trial.number}
            try:
                run = bridge.spec.run_for(bridge.label, trial.params)
            except (ValidationError, UserError) as err:  # a point the engine would refuse
                config["invalid"] = str(err).splitlines()[0]
            else:
                trial.set_user_attr(ATTR_RUN_ID, run.run_id)
                config["run"] = run.model_dump(mode="json")
            return config

        def on_trial_complete(
            self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
        ) -> None:
            trial = bridge.trials.pop(trial_id, None)
            if trial is None:
                return
            bridge.beats.discard(trial._trial_id)
            try:
                _tell(bridge, trial_id, trial, result or {}, error)
            except optuna.exceptions.UpdateFinishedTrialError:
                print(
                    f"  {bridge.label} trial {trial.number}: ended by another driver (its "
                    f"heartbeat was late by over {bridge.grace_s} s); its retry counts instead",
                    flush=True,
                )
                return
            bridge.told += 1
            bridge.progress(trial.number, bridge.study)

    return OptunaAskTell()


def _tell(
    bridge: _Bridge, trial_id: str, trial: optuna.Trial, result: dict[str, Any], error: bool
) -> None:
    """Tell the study how a trial ended: completed, pruned (by ASHA or diverged) or failed."""
    epochs_run = int(result.get("epochs_done") or len(_intermediate(bridge.study, trial)))
    trial.set_user_attr(ATTR_EPOCHS, epochs_run)
    status = result.get("status")
    if trial_id in bridge.pruned:
        trial.set_user_attr(ATTR_STATUS, "pruned")
        bridge.study.tell(trial, state=TrialState.PRUNED)
    elif error or status in (None, "failed"):
        message = result.get("error") or "the trial's worker raised (see Ray's error file)"
        trial.set_user_attr(ATTR_STATUS, "failed")
        trial.set_user_attr(ATTR_ERROR, str(message)[:2000])
        bridge.study.tell(trial, state=TrialState.FAIL)
    elif status == "diverged":
        # an early stop by the engine: pruned, ranked by its last accuracy, if any
        trial.set_user_attr(ATTR_STATUS, "diverged")
        trial.set_user_attr(ATTR_ERROR, str(result.get("error") or "")[:2000])
        bridge.study.tell(trial, state=TrialState.PRUNED)
    else:
        trial.set_user_attr(ATTR_STATUS, "completed")
        bridge.study.tell(trial, float(result[METRIC]))


def _intermediate(study: optuna.Study, trial: optuna.Trial) -> dict[int, float]:
    return study._storage.get_trial(trial._trial_id).intermediate_values


def _scheduler(bridge: _Bridge) -> Any:
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class OptunaPruning(FIFOScheduler):
        """Report each epoch to the study; stop the trials its pruner prunes."""

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
            ot = bridge.trials.get(trial.trial_id)
            if ot is None or result.get("final") or not math.isfinite(result.get(METRIC, math.nan)):
                return TrialScheduler.CONTINUE
            step = int(result["epochs_done"])
            try:
                ot.report(float(result[METRIC]), step)
            except optuna.exceptions.UpdateFinishedTrialError:  # ended by another driver
                return TrialScheduler.STOP
            # the last epoch is the result itself: nothing left to save by stopping
            if step < bridge.spec.epochs and ot.should_prune():
                bridge.pruned.add(trial.trial_id)
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE

    return OptunaPruning()


def _tune_trial(config: dict[str, Any]) -> None:
    """The Tune function trainable: one trial = one run on the validation split."""
    from ray import tune

    from podbench.worker import train_in_worker

    if "invalid" in config:
        tune.report(
            {
                METRIC: math.nan,
                "epochs_done": 0,
                "final": True,
                "status": "failed",
                "error": config["invalid"],
            }
        )
        return
    run = RunSpec.model_validate(config["run"])
    assert run.eval_split == "val", "tuning must never evaluate on the test split"
    last: dict[str, float] = {}

    def on_epoch(entry: dict[str, Any]) -> None:
        last[METRIC] = float(entry["val_acc"])
        tune.report({METRIC: last[METRIC], "epochs_done": int(entry["epoch"]) + 1})

    record = train_in_worker(run, on_epoch=on_epoch)  # on the device Ray gave the trial
    error = record.get("error") or {}
    tune.report(
        {
            METRIC: last.get(METRIC, math.nan),
            "epochs_done": int(record["epochs_completed"]),
            "final": True,
            "status": record["status"],
            "error": f"{error.get('type', '')}: {error.get('message', '')}" if error else None,
        }
    )


def _tune_loss(bridge: _Bridge, todo: int) -> None:
    """Run at most ``todo`` more trials of one loss on Ray (Ray already started)."""
    from ray import tune

    # our own one line per trial instead of Tune's tables
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ctrl-C must end the whole tuning run, not only this loss's Tuner (which would return)
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    spec, label = bridge.spec, bridge.label
    resources = {"cpu": spec.cpus, "gpu": spec.gpus}
    bookkeeping = tempfile.mkdtemp(prefix="podbench-tune-")  # Tune's own files, not results
    try:
        tuner = tune.Tuner(
            tune.with_resources(_tune_trial, resources),
            tune_config=tune.TuneConfig(
                search_alg=_searcher(bridge),
                scheduler=_scheduler(bridge),
                num_samples=todo,
                max_concurrent_trials=spec.max_concurrent,
                reuse_actors=True,  # a new worker per trial would re-import torch every time
            ),
            run_config=tune.RunConfig(
                name=label.replace("[", "_").replace("]", "_"),
                storage_path=bookkeeping,
                failure_config=tune.FailureConfig(max_failures=0),
                verbose=0,
            ),
        )
        tuner.fit()
    finally:
        bridge.abandon()  # trials still running here (Ctrl-C): queued again for a rerun
        shutil.rmtree(bookkeeping, ignore_errors=True)


def run_study(
    spec: TuneSpec,
    results_dir: str | Path,
    *,
    storage: str | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    write: bool = True,
    heartbeat_s: int = HEARTBEAT_S,
    grace_s: int = GRACE_S,
) -> StudyOutcome:
    """Tune every loss of ``spec`` up to ``n_trials`` finished trials each, then write the outputs.

    Other drivers may work on the same studies at the same time (a server database): the budget
    is shared, so together they run ``n_trials`` per loss.

    Args:
        spec: the tune file.
        results_dir: the results directory (outputs in ``tune/<study>/``).
        storage: an Optuna storage URL; None: the file's, else ``tune/<study>/optuna.db``.
        address: Ray cluster address; None: embedded local Ray with ``num_cpus``.
        num_cpus: CPUs of the embedded Ray.
        write: write trials.csv, best.yaml and importances.json.
        heartbeat_s: seconds between the heartbeats of this driver's running trials.
        grace_s: seconds without a heartbeat after which a running trial is stale.
    """
    from podbench.ray_cluster import init_ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(spec, results_dir, storage)
    origin = "--storage" if storage else "tune file field 'storage':"
    store = open_storage(url, origin, heartbeat_s=heartbeat_s, grace_s=grace_s)
    outcome = StudyOutcome(spec=spec, storage_url=url, studies={})
    for label in spec.losses:
        study = open_study(spec, label, store)
        outcome.studies[label] = study
        outcome.interrupted[label] = reap_stale(study, grace_s)
    beats = Heartbeats(store)
    try:
        for label, study in outcome.studies.items():
            bridge = _Bridge(spec, label, study, beats, grace_s)
            outcome.ran[label] = 0
            todo = spec.n_trials - budget_used(study)  # at most: other drivers may take some
            if todo <= 0:
                continue
            init_ray(address, num_cpus)
            try:
                _tune_loss(bridge, todo)
            finally:
                outcome.ran[label] = bridge.told
    finally:  # also on Ctrl-C: the outputs show what finished (a rerun resumes from there)
        beats.close()
        outcome.best = best_points(spec, outcome.studies)
        if write:
            write_outputs(outcome, results_dir)
    return outcome
