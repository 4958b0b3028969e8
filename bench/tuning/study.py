"""Tuning studies: one persistent Optuna study per loss, opened, resumed and counted.

Drivers own the studies: one ``podbench tune`` per machine or many on one server database
(PostgreSQL), as Optuna scales out. A study is named ``<study>/<loss label>`` and stores the tune
file's fingerprint: a rerun of the same file resumes it, a file that changes what a trial computes
is refused. A driver records a heartbeat for each trial it runs; a trial whose heartbeat stopped
for longer than the grace period (its driver was killed) is marked failed by the next driver that
looks, does not count towards ``n_trials``, and is queued again at the same point
(:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`). The ``n_trials`` budget is shared:
every driver counts the trials of all of them (finished, running and queued) before and after it
asks for one, so N drivers together run ``n_trials``, none twice.
"""

from __future__ import annotations

import datetime
import threading
import time
import warnings
from collections.abc import Sequence
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
    "Heartbeats",
    "budget_slots",
    "budget_used",
    "counts",
    "make_sampler",
    "open_storage",
    "open_study",
    "reap_stale",
    "storage_url",
    "study_dir",
    "study_name",
]

METRIC = "val_acc"
# user attributes each finished Optuna trial carries
ATTR_LABEL, ATTR_STATUS, ATTR_EPOCHS, ATTR_ERROR = "label", "status", "epochs_run", "error"
ATTR_INTERRUPTED, ATTR_RUN_ID, ATTR_SURPLUS = "interrupted", "run_id", "surplus"
ATTR_DRIVER = "driver"  # host:pid of the podbench tune that ran the trial
_FINGERPRINT = "podbench_fingerprint"
# a driver records each of its running trials' heartbeat every HEARTBEAT_S seconds; one silent
# for GRACE_S seconds is stale (its driver died) and is failed and queued again, at most
# RETRIES times
HEARTBEAT_S, GRACE_S, RETRIES = 20, 120, 2


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


def open_storage(
    url: str, origin: str, *, heartbeat_s: int = HEARTBEAT_S, grace_s: int = GRACE_S
) -> optuna.storages.RDBStorage:
    """The Optuna RDB storage at ``url`` with heartbeats; ``origin`` names the URL's source.

    A trial whose heartbeat is older than ``grace_s`` seconds is stale: marked failed and queued
    again at the same point (at most ``RETRIES`` times).
    """
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        # a reader (optuna-dashboard) may hold the file briefly: wait instead of failing
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    try:
        with warnings.catch_warnings():  # heartbeats are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=heartbeat_s,
                grace_period=grace_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=RETRIES
                ),
                **kwargs,
            )
    except ImportError:
        if not url.startswith("postgres"):
            raise UserError(
                f"{origin} {url}: the database driver of this URL is not installed; "
                "install it, or use sqlite:///path/optuna.db."
            ) from None
        raise UserError(f"{origin} {url}: {_pg_driver_missing(url)}.") from None
    except Exception as err:  # bad URL, unreachable server
        raise UserError(
            f"{origin} {url}: Optuna cannot open this storage ({err.__class__.__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); give an RDB URL such as "
            "sqlite:///path/optuna.db or postgresql+psycopg://user@host/db."
        ) from None


def _pg_driver_missing(url: str) -> str:
    scheme = url.split("://", 1)[0]
    if scheme == "postgresql+psycopg2":
        return (
            "the PostgreSQL driver psycopg2 is not installed; install it (pip install "
            "psycopg2-binary), or pip install 'podbench[postgres]' and write "
            "postgresql+psycopg:// for psycopg 3"
        )
    return (
        "the PostgreSQL driver psycopg 3 (which SQLAlchemy uses for postgresql:// and "
        "postgresql+psycopg://) is not installed; pip install 'podbench[postgres]' installs it"
    )


def make_sampler(spec: TuneSpec, n_trials_so_far: int) -> optuna.samplers.BaseSampler:
    """Seeded TPE with constant liar (running trials count as bad, so parallel asks spread out).

    Seeded by the trials so far, anew for each ask: a resumed study does not redraw its first
    random points, and drivers asking one after the other draw different ones.
    """
    return optuna.samplers.TPESampler(
        seed=spec.seed + n_trials_so_far,
        constant_liar=True,
        n_startup_trials=spec.n_startup_trials,
    )


def open_study(spec: TuneSpec, label: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Create the study of one loss, or load it to resume after checking the file is the same.

    The driver that creates the study gives it the loss's ``enqueue`` points as its first trials
    (another driver starting at the same moment loads it instead).

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
    fingerprint = spec.fingerprint(label)
    try:
        study = optuna.create_study(
            storage=storage, study_name=name, direction="maximize", pruner=pruner
        )
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, pruner=pruner)
    else:
        study.set_user_attr(_FINGERPRINT, fingerprint)
        for point in spec.losses[label].enqueue:
            study.enqueue_trial(point)
        study.sampler = make_sampler(spec, 0)
        return study
    study.sampler = make_sampler(spec, len(study.get_trials(deepcopy=False)))
    stored = _stored_fingerprint(study)
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


def _stored_fingerprint(study: optuna.Study, wait_s: float = 30.0) -> dict[str, Any]:
    """The creator's fingerprint; a driver that created the study a moment ago may not have
    written it yet, so wait for it a little."""
    deadline = time.monotonic() + wait_s
    while True:
        stored = optuna.load_study(study_name=study.study_name, storage=study._storage).user_attrs
        if _FINGERPRINT in stored or time.monotonic() > deadline:
            return stored.get(_FINGERPRINT) or {}
        time.sleep(0.5)


def counts(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a finished trial counts towards ``n_trials``: told by a driver (it has a status),
    not cut off by an interruption, not asked beyond the budget."""
    attrs = trial.user_attrs
    return (
        trial.state.is_finished()
        and ATTR_STATUS in attrs
        and not attrs.get(ATTR_INTERRUPTED)
        and not attrs.get(ATTR_SURPLUS)
    )


def budget_used(study: optuna.Study) -> int:
    """Trials that count towards ``n_trials``: every finished one but the interrupted ones."""
    return sum(1 for t in study.get_trials(deepcopy=False) if counts(t))


def budget_slots(trials: Sequence[optuna.trial.FrozenTrial]) -> list[int]:
    """Numbers of the trials that hold a place in the budget, in order: the counted finished ones,
    the running ones (of any driver) and the queued ones. The first ``n_trials`` are in it."""
    return sorted(
        t.number for t in trials if counts(t) or t.state in (TrialState.RUNNING, TrialState.WAITING)
    )


def _uncounted_failures(study: optuna.Study) -> int:
    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if ATTR_STATUS not in t.user_attrs and not t.user_attrs.get(ATTR_SURPLUS)
    )


def reap_stale(study: optuna.Study, grace_s: int = GRACE_S) -> int:
    """Fail the trials whose driver stopped beating (queued again at their point) and running
    trials asked without heartbeats longer than the grace period ago; return how many."""
    before = _uncounted_failures(study)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    storage = study._storage  # the public Study API cannot end a trial it did not ask for
    grace = datetime.timedelta(seconds=grace_s)
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # not a podbench driver's trial (they carry the label): nothing will ever end it
        if ATTR_LABEL not in t.user_attrs and t.datetime_start and now - t.datetime_start > grace:
            try:
                storage.set_trial_user_attr(t._trial_id, ATTR_INTERRUPTED, True)
                storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another driver got there first
    return _uncounted_failures(study) - before


class Heartbeats:
    """Heartbeats of the trials this driver runs, from a thread (Optuna beats only inside
    ``Study.optimize``; the driver asks and tells for Ray Tune)."""

    def __init__(self, storage: optuna.storages.RDBStorage) -> None:
        self.storage, self.ids = storage, set[int]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="optuna-heartbeats", daemon=True)
        self._thread.start()

    def __getstate__(self) -> dict[str, Any]:
        # Ray Tune pickles the searcher (for its own restore): a copy beats nothing
        return {"storage": self.storage}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.storage, self.ids = state["storage"], set()
        self._stop = threading.Event()
        self._stop.set()
        self._thread = threading.Thread(target=lambda: None)
        self._thread.start()

    def add(self, trial_id: int) -> None:
        self.storage.record_heartbeat(trial_id)
        self.ids.add(trial_id)

    def discard(self, trial_id: int) -> None:
        self.ids.discard(trial_id)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        interval = self.storage.get_heartbeat_interval() or HEARTBEAT_S
        while not self._stop.wait(interval):
            for trial_id in list(self.ids):
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception:  # a blip of the database: the next beat retries
                    pass


@dataclass
class StudyOutcome:
    """What a (resumed) tuning run ended with, per loss label."""

    spec: TuneSpec
    storage_url: str
    studies: dict[str, optuna.Study]
    ran: dict[str, int] = field(default_factory=dict)  # trials run by this invocation
    interrupted: dict[str, int] = field(default_factory=dict)  # stale trials marked failed
    best: dict[str, dict[str, Any]] = field(default_factory=dict)
