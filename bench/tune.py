"""Tuning: one persistent Optuna study per loss, trials trained on Ray, the same budget for all.

The driver owns the studies (only it writes the storage, so a SQLite file is safe): a Ray Tune
searcher asks each study for a point (seeded TPE with constant liar, so parallel trials spread
out), a Tune scheduler reports every epoch's validation accuracy to the study and stops the
trials Optuna's successive-halving pruner (ASHA) prunes, and the searcher tells the study how
each trial ended. Trials are ordinary runs of :func:`~podbench.engine.train_run` with
``eval_split="val"``: the test set is never read.

Rerunning the same tune file resumes: trials that finished stay, trials cut off by an
interruption are marked failed (and do not count), and each loss runs only what it lacks of
``n_trials``. Outputs go to ``RESULTS/tune/<study>/``: ``trials.csv``, ``best.yaml``,
``importances.json`` (and ``optuna.db``, the default storage, which optuna-dashboard opens).

Example:
    >>> spec = load_tune("tune-quickstart")  # doctest: +SKIP
    >>> outcome = run_study(spec, "results")
    >>> outcome.best["pod"]["val_acc"]
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import yaml
from optuna.trial import TrialState
from pydantic import ValidationError

from podbench.errors import UserError
from podbench.results import atomic_write_text
from podbench.specs import RunSpec, SuiteSpec
from podbench.tune_specs import TUNABLE_RUN_FIELDS, TuneSpec, load_tune

__all__ = [
    "StudyOutcome",
    "best_suites",
    "budget_used",
    "importances",
    "load_tune",
    "open_study",
    "rerun_best",
    "run_study",
    "storage_url",
    "study_dir",
    "study_name",
    "trials_table",
    "write_outputs",
]

METRIC = "val_acc"
# user attributes each finished Optuna trial carries
_ATTR_LABEL, _ATTR_STATUS, _ATTR_EPOCHS, _ATTR_ERROR = "label", "status", "epochs_run", "error"
_ATTR_INTERRUPTED, _ATTR_RUN_ID = "interrupted", "run_id"
_FINGERPRINT = "podbench_fingerprint"


def study_dir(spec: TuneSpec, results_dir: str | Path) -> Path:
    """``RESULTS/tune/<study>/``."""
    return Path(results_dir) / "tune" / spec.name


def storage_url(spec: TuneSpec, results_dir: str | Path, storage: str | None = None) -> str:
    """The study storage: ``--storage``, else the file's ``storage``, else a SQLite file."""
    url = storage or spec.storage
    if url:
        return url
    path = (study_dir(spec, results_dir) / "optuna.db").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def study_name(spec: TuneSpec, label: str) -> str:
    """One Optuna study per loss: ``<study>/<loss label>``."""
    return f"{spec.name}/{label}"


def _storage(url: str, origin: str) -> optuna.storages.BaseStorage:
    try:
        if url.startswith("sqlite:"):
            # a reader (optuna-dashboard) may hold the file briefly: wait instead of failing
            return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
        return optuna.storages.get_storage(url)
    except Exception as err:  # bad URL, missing driver, unreachable server
        raise UserError(
            f"{origin} {url}: Optuna cannot open this storage ({err.__class__.__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); give an RDB URL such as "
            "sqlite:///path/optuna.db or postgresql://user@host/db."
        ) from None


def open_study(spec: TuneSpec, label: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Create the study of one loss, or load it to resume after checking the file is the same.

    A new study gets the loss's ``enqueue`` points as its first trials.

    Raises:
        UserError: the stored study was made by a tune file with other settings.
    """
    name = study_name(spec, label)
    es = spec.early_stopping
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.SuccessiveHalvingPruner(
            min_resource=es.grace_period, reduction_factor=es.reduction_factor
        )
        if es.enabled
        else optuna.pruners.NopPruner()
    )
    existing = {
        s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
    }
    fingerprint = spec.fingerprint(label)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        pruner=pruner,
        load_if_exists=True,
    )
    # constant liar: running trials count as bad, so parallel asks do not pile on one point.
    # Seeded by the trials so far: a resumed study must not redraw its first random points.
    study.sampler = optuna.samplers.TPESampler(
        seed=spec.seed + len(study.get_trials(deepcopy=False)),
        constant_liar=True,
        n_startup_trials=spec.n_startup_trials,
    )
    if name not in existing:
        study.set_user_attr(_FINGERPRINT, fingerprint)
        for point in spec.losses[label].enqueue:
            study.enqueue_trial(point)
        return study
    stored = study.user_attrs.get(_FINGERPRINT)
    if stored != fingerprint:
        changed = sorted(
            k
            for k in set(fingerprint) | set(stored or {})
            if (stored or {}).get(k) != fingerprint.get(k)
        )
        raise UserError(
            f"study '{name}' in the storage was made with other settings "
            f"({', '.join(changed) or 'unknown'} differ); restore them to resume, or give the "
            "tune file a new name (or delete the study) to start afresh."
        )
    return study


def reap_interrupted(study: optuna.Study) -> int:
    """Mark trials left RUNNING by an interrupted driver as failed; they do not count."""
    storage = study._storage  # the public Study API cannot end a trial it did not ask for
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        storage.set_trial_user_attr(trial._trial_id, _ATTR_INTERRUPTED, True)
        storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    return len(stale)


def budget_used(study: optuna.Study) -> int:
    """Trials that count towards ``n_trials``: every finished one but the interrupted ones."""
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state.is_finished() and not t.user_attrs.get(_ATTR_INTERRUPTED)
    )


# ---------------------------------------------------------------------------- Ray bridge


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
            f"  {self.label} trial {number}: {t.user_attrs.get(_ATTR_STATUS)} after "
            f"{t.user_attrs.get(_ATTR_EPOCHS)} epoch(s), {value}",
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
            trial.set_user_attr(_ATTR_LABEL, bridge.label)
            config: dict[str, Any] = {"number": trial.number}
            try:
                run = bridge.spec.run_for(bridge.label, trial.params)
            except (ValidationError, UserError) as err:  # a point the engine would refuse
                config["invalid"] = str(err).splitlines()[0]
            else:
                trial.set_user_attr(_ATTR_RUN_ID, run.run_id)
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
            trial.set_user_attr(_ATTR_EPOCHS, epochs_run)
            status = result.get("status")
            if trial_id in bridge.pruned:
                trial.set_user_attr(_ATTR_STATUS, "pruned")
                bridge.study.tell(trial, state=TrialState.PRUNED)
            elif error or status in (None, "failed"):
                message = result.get("error") or "the trial's worker raised (see Ray's error file)"
                trial.set_user_attr(_ATTR_STATUS, "failed")
                trial.set_user_attr(_ATTR_ERROR, str(message)[:2000])
                bridge.study.tell(trial, state=TrialState.FAIL)
            elif status == "diverged":
                # an early stop by the engine: pruned, ranked by its last accuracy, if any
                trial.set_user_attr(_ATTR_STATUS, "diverged")
                trial.set_user_attr(_ATTR_ERROR, str(result.get("error") or "")[:2000])
                bridge.study.tell(trial, state=TrialState.PRUNED)
            else:
                trial.set_user_attr(_ATTR_STATUS, "completed")
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
    import torch
    from ray import tune

    from podbench.engine import train_run

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
    torch.set_num_threads(max(1, int(run.cpus)))  # one thread per allotted CPU
    last: dict[str, float] = {}

    def on_epoch(entry: dict[str, Any]) -> None:
        last[METRIC] = float(entry["val_acc"])
        tune.report({METRIC: last[METRIC], "epochs_done": int(entry["epoch"]) + 1})

    record = train_run(run, on_epoch=on_epoch)
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


@dataclass
class StudyOutcome:
    """What a (resumed) tuning run ended with, per loss label."""

    spec: TuneSpec
    storage_url: str
    studies: dict[str, optuna.Study]
    ran: dict[str, int] = field(default_factory=dict)  # trials run by this invocation
    interrupted: dict[str, int] = field(default_factory=dict)  # stale trials marked failed
    best: dict[str, dict[str, Any]] = field(default_factory=dict)


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
    from podbench.executor import init_ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(spec, results_dir, storage)
    store = _storage(url, "--storage" if storage else "tune file field 'storage':")
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


# ---------------------------------------------------------------------------- outputs


def best_points(spec: TuneSpec, studies: dict[str, optuna.Study]) -> dict[str, dict[str, Any]]:
    """Per loss: the completed trial of highest validation accuracy (number, value, params)."""
    best: dict[str, dict[str, Any]] = {}
    for label, study in studies.items():
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not done:
            continue
        # ties: the earliest trial
        top = max(done, key=lambda t: (float(t.value or 0.0), -t.number))
        best[label] = {
            "trial": top.number,
            METRIC: float(top.value or 0.0),
            "params": dict(top.params),
        }
    return best


def trials_table(studies: dict[str, optuna.Study]) -> pd.DataFrame:
    """Every trial of every loss: number, loss, state, value, params_<name>..., epochs_run."""
    rows = []
    for label, study in studies.items():
        for t in study.get_trials(deepcopy=False):
            row: dict[str, Any] = {
                "number": t.number,
                "loss": label,
                "state": t.state.name,
                "value": t.value,
                "status": t.user_attrs.get(
                    _ATTR_STATUS, "interrupted" if t.user_attrs.get(_ATTR_INTERRUPTED) else None
                ),
                "epochs_run": t.user_attrs.get(_ATTR_EPOCHS, len(t.intermediate_values)),
                "duration_s": t.duration.total_seconds() if t.duration is not None else None,
                "completed_at": t.datetime_complete.isoformat() if t.datetime_complete else None,
                "run_id": t.user_attrs.get(_ATTR_RUN_ID),
                "error": t.user_attrs.get(_ATTR_ERROR),
            }
            row.update({f"params_{k}": v for k, v in t.params.items()})
            rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=["number", "loss", "state", "value", "epochs_run"])
    return table.sort_values(["loss", "number"], kind="stable").reset_index(drop=True)


def importances(studies: dict[str, optuna.Study]) -> dict[str, dict[str, float]]:
    """Optuna's parameter importances per loss with at least two completed trials."""
    out: dict[str, dict[str, float]] = {}
    for label, study in studies.items():
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(done) < 2:
            continue
        try:
            values = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError) as err:  # e.g. every completed trial had one value
            logging.getLogger(__name__).warning("no importances for %s: %s", label, err)
            continue
        out[label] = {k: float(v) for k, v in values.items()}
    return out


def best_suites(
    spec: TuneSpec, best: dict[str, dict[str, Any]], seeds: int | Sequence[int] = 1
) -> dict[str, dict[str, Any]]:
    """Per loss: a suite (plain mapping) that reruns its best point on the test set over seeds."""
    base = spec.settings().model_dump(mode="json", exclude={"eval_split"})
    suites: dict[str, dict[str, Any]] = {}
    for label, point in best.items():
        run = spec.run_for(label, point["params"], eval_split="test")
        settings = {k: base[k] for k in base}
        settings.update(
            {
                k: v
                for k, v in point["params"].items()
                if k in TUNABLE_RUN_FIELDS and k not in {"feat_dim", "batch_size", "variant"}
            }
        )
        suite = {
            "name": f"{spec.name}-best",
            "description": (
                f"best point of loss {label} in study {spec.name}: trial {point['trial']}, "
                f"validation accuracy {point[METRIC]:.4f}"
            ),
            **settings,
            "batch_size": run.batch_size,
            "milestones": list(run.milestones),
            "eval_split": "test",
            "losses": [
                {
                    "name": run.loss,
                    "variant": run.variant,
                    "params": dict(run.loss_params),
                    "label": label,
                }
            ],
            "datasets": [run.dataset],
            "archs": [run.arch],
            "feat_dim": [run.feat_dim],
            "seeds": seeds if isinstance(seeds, int) else list(seeds),
        }
        SuiteSpec.model_validate(suite)  # what we hand over must load as a suite
        suites[label] = suite
    return suites


def write_outputs(outcome: StudyOutcome, results_dir: str | Path) -> Path:
    """Write trials.csv, best.yaml and importances.json atomically; return the study folder."""
    folder = study_dir(outcome.spec, results_dir)
    table = trials_table(outcome.studies)
    atomic_write_text(folder / "trials.csv", table.to_csv(index=False))
    best = {
        "study": outcome.spec.name,
        "metric": f"{METRIC} (validation split; the test set was not read)",
        "storage": outcome.storage_url,
        "losses": {
            label: {**point, "suite": suite}
            for (label, point), suite in zip(
                outcome.best.items(), best_suites(outcome.spec, outcome.best).values(), strict=True
            )
        },
    }
    plain = json.loads(json.dumps(best))  # no shared objects, hence no YAML anchors
    atomic_write_text(folder / "best.yaml", yaml.safe_dump(plain, sort_keys=False))
    atomic_write_text(
        folder / "importances.json", json.dumps(importances(outcome.studies), indent=2) + "\n"
    )
    return folder


def rerun_best(
    outcome: StudyOutcome,
    results_dir: str | Path,
    seeds: int,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
) -> dict[str, int]:
    """Run each loss's best point over ``seeds`` seeds on the test set as ordinary suite runs.

    The records land in ``RESULTS/runs/`` like any suite's, so the report compares them.
    """
    from podbench.executor import run_suite
    from podbench.results import ResultsStore

    if seeds < 1:
        raise UserError(f"--seeds {seeds}: give a number of seeds >= 1.")
    missing = sorted(set(outcome.spec.losses) - set(outcome.best))
    if missing:
        raise UserError(
            f"losses {', '.join(missing)} have no completed trial to rerun; raise n_trials or "
            "check trials.csv for their errors, then run the same command again."
        )
    suites = best_suites(outcome.spec, outcome.best, seeds)
    runs: list[RunSpec] = []
    for suite in suites.values():
        runs.extend(SuiteSpec.model_validate(suite).expand())
    ResultsStore(results_dir).write_suite(
        {
            "name": f"{outcome.spec.name}-best",
            "tuned_by": outcome.spec.name,
            "suites": suites,
            "runs": [r.run_id for r in runs],
        }
    )
    return dict(
        run_suite(
            runs,
            results_dir,
            address=address,
            num_cpus=num_cpus,
            max_concurrent=outcome.spec.max_concurrent,
        )
    )
