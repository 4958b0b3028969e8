"""The bridge between Optuna and Ray Tune, and the trial function: tuning the losses of a file.

A Ray Tune searcher asks each loss's study for a point (seeded TPE with constant liar, so
parallel trials spread out), a Tune scheduler reports every epoch's validation accuracy to the
study and stops the trials Optuna's successive-halving pruner (ASHA) prunes, and the searcher
tells the study how each trial ended. Trials are ordinary runs of
:func:`~podbench.engine.train_run` with ``eval_split="val"``: the test set is never read.

Rerunning the same tune file resumes: trials that finished stay, and each loss runs only what it
lacks of ``n_trials`` (see :mod:`podbench.tuning.study`).

Example:
    >>> from podbench.tuning import load_tune, run_study
    >>> spec = load_tune("tune-quickstart")
    >>> outcome = run_study(spec, "results")  # doctest: +SKIP
    >>> outcome.best["pod"]["val_acc"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from pydantic import ValidationError

from podbench.errors import UserError
from podbench.runs import RunSpec
from podbench.tuning.outputs import best_points, write_outputs
from podbench.tuning.study import (
    ATTR_EPOCHS,
    ATTR_ERROR,
    ATTR_LABEL,
    ATTR_RUN_ID,
    ATTR_STATUS,
    METRIC,
    StudyOutcome,
    budget_used,
    open_storage,
    open_study,
    reap_interrupted,
    storage_url,
)
from podbench.tuning.tune_spec import TuneSpec

__all__ = ["run_study"]


class _Bridge:
    """What the searcher and the scheduler of one loss share (driver side)."""

    def __init__(self, spec: TuneSpec, label: str, study: optuna.Study) -> None:
        self.spec, self.label, self.study = spec, label, study
        self.distributions = spec.distributions(label)
        self.trials: dict[str, optuna.Trial] = {}
        self.pruned: set[str] = set()

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

        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            trial = bridge.study.ask(bridge.distributions)
            bridge.trials[trial_id] = trial
            trial.set_user_attr(ATTR_LABEL, bridge.label)
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
            result = result or {}
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
            bridge.progress(trial.number, bridge.study)

    return OptunaAskTell()


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
            ot.report(float(result[METRIC]), step)
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


def _tune_loss(spec: TuneSpec, label: str, study: optuna.Study, todo: int) -> None:
    """Run ``todo`` more trials of one loss on Ray (Ray already started)."""
    from ray import tune

    # our own one line per trial instead of Tune's tables
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ctrl-C must end the whole tuning run, not only this loss's Tuner (which would return)
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    bridge = _Bridge(spec, label, study)
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
        shutil.rmtree(bookkeeping, ignore_errors=True)


def run_study(
    spec: TuneSpec,
    results_dir: str | Path,
    *,
    storage: str | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    write: bool = True,
) -> StudyOutcome:
    """Tune every loss of ``spec`` up to ``n_trials`` finished trials each, then write the outputs.

    Args:
        spec: the tune file.
        results_dir: the results directory (outputs in ``tune/<study>/``).
        storage: an Optuna storage URL; None: the file's, else ``tune/<study>/optuna.db``.
        address: Ray cluster address; None: embedded local Ray with ``num_cpus``.
        num_cpus: CPUs of the embedded Ray.
        write: write trials.csv, best.yaml and importances.json.
    """
    from podbench.ray_cluster import init_ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(spec, results_dir, storage)
    store = open_storage(url, "--storage" if storage else "tune file field 'storage':")
    outcome = StudyOutcome(spec=spec, storage_url=url, studies={})
    for label in spec.losses:
        study = open_study(spec, label, store)
        outcome.studies[label] = study
        outcome.interrupted[label] = reap_interrupted(study)
    try:
        for label, study in outcome.studies.items():
            todo = spec.n_trials - budget_used(study)
            outcome.ran[label] = max(0, todo)
            if todo <= 0:
                continue
            init_ray(address, num_cpus)
            _tune_loss(spec, label, study, todo)
    finally:  # also on Ctrl-C: the outputs show what finished (a rerun resumes from there)
        outcome.best = best_points(spec, outcome.studies)
        if write:
            write_outputs(outcome, results_dir)
    return outcome
