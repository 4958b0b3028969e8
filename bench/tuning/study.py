"""Tuning studies: one persistent Optuna study per loss, opened, resumed and counted.

The driver owns the studies (only it writes the storage, so a SQLite file is safe). A study is
named ``<study>/<loss label>`` and stores the tune file's fingerprint: a rerun of the same file
resumes it, a file that changes what a trial computes is refused. Trials cut off by an
interruption are marked failed and do not count towards ``n_trials``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from podbench.errors import UserError
from podbench.runs import NON_RESULT_FIELDS
from podbench.tuning.tune_spec import TuneSpec

__all__ = [
    "METRIC",
    "StudyOutcome",
    "budget_used",
    "open_storage",
    "open_study",
    "reap_interrupted",
    "storage_url",
    "study_dir",
    "study_name",
]

METRIC = "val_acc"
# user attributes each finished Optuna trial carries
ATTR_LABEL, ATTR_STATUS, ATTR_EPOCHS, ATTR_ERROR = "label", "status", "epochs_run", "error"
ATTR_INTERRUPTED, ATTR_RUN_ID = "interrupted", "run_id"
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


def open_storage(url: str, origin: str) -> optuna.storages.BaseStorage:
    """The Optuna storage at ``url``; ``origin`` names where the URL came from in messages."""
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
    stored = study.user_attrs.get(_FINGERPRINT) or {}
    # studies stored before device, imports... left the fingerprint still hold them: ignored
    changed = sorted(
        k
        for k in set(fingerprint) | set(stored)
        if k not in NON_RESULT_FIELDS and stored.get(k) != fingerprint.get(k)
    )
    if changed:
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
        storage.set_trial_user_attr(trial._trial_id, ATTR_INTERRUPTED, True)
        storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    return len(stale)


def budget_used(study: optuna.Study) -> int:
    """Trials that count towards ``n_trials``: every finished one but the interrupted ones."""
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state.is_finished() and not t.user_attrs.get(ATTR_INTERRUPTED)
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
