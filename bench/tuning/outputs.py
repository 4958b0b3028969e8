"""What tuning leaves behind: trials.csv, best.yaml, importances.json, and reruns of the best.

Outputs go to ``RESULTS/tune/<study>/`` (with ``optuna.db``, the default storage, which
optuna-dashboard opens). ``best.yaml`` holds, per loss, the best trial and a suite that reruns its
point on the test set; :func:`rerun_best` runs those suites over seeds as ordinary suite runs, so
the report compares them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import yaml
from optuna.trial import TrialState

from podbench.errors import UserError
from podbench.fileio import atomic_write_text
from podbench.runs import RunSpec, check_joins_results, with_tag
from podbench.suite_spec import SuiteSpec
from podbench.tuning.study import (
    ATTR_DRIVER,
    ATTR_EPOCHS,
    ATTR_ERROR,
    ATTR_INTERRUPTED,
    ATTR_RUN_ID,
    ATTR_STATUS,
    ATTR_SURPLUS,
    METRIC,
    StudyOutcome,
    study_dir,
)
from podbench.tuning.tune_spec import RUN_KEYWORDS, TUNABLE_RUN_FIELDS, TuneSpec

__all__ = [
    "TUNED_TAG",
    "best_points",
    "best_suites",
    "importances",
    "rerun_best",
    "trials_table",
    "write_outputs",
]


# The best point of a loss is its own method: `pod[tuned]` beside a suite's `pod`.
TUNED_TAG = "tuned"
# `podbench tune` bounded --seeds by --max-runs already (a suite's own bound is the default)
_UNBOUNDED = {"max_runs": float("inf")}


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
                "status": _status(t),
                "epochs_run": t.user_attrs.get(ATTR_EPOCHS, len(t.intermediate_values)),
                "duration_s": t.duration.total_seconds() if t.duration is not None else None,
                "completed_at": t.datetime_complete.isoformat() if t.datetime_complete else None,
                "run_id": t.user_attrs.get(ATTR_RUN_ID),
                "driver": t.user_attrs.get(ATTR_DRIVER),
                "error": t.user_attrs.get(ATTR_ERROR),
            }
            row.update({f"params_{k}": v for k, v in t.params.items()})
            rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=["number", "loss", "state", "value", "epochs_run"])
    return table.sort_values(["loss", "number"], kind="stable").reset_index(drop=True)


def _status(t: optuna.trial.FrozenTrial) -> str | None:
    """How a trial ended; ``interrupted``: its driver stopped (it does not count, and was queued
    again); ``surplus``: asked by a driver at the moment another took the last place."""
    if ATTR_STATUS in t.user_attrs:
        return t.user_attrs[ATTR_STATUS]
    if t.user_attrs.get(ATTR_SURPLUS):
        return "surplus"
    if t.user_attrs.get(ATTR_INTERRUPTED) or t.state == TrialState.FAIL:
        return "interrupted"
    return None  # running or queued


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
                if k in TUNABLE_RUN_FIELDS and k not in RUN_KEYWORDS
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
                    # not the label of an untuned run of the same loss in the folder
                    "label": with_tag(label, TUNED_TAG),
                }
            ],
            "datasets": [run.dataset],
            "archs": [run.arch],
            "feat_dim": [run.feat_dim],
            "seeds": seeds if isinstance(seeds, int) else list(seeds),
        }
        SuiteSpec.model_validate(
            suite, context=_UNBOUNDED
        )  # what we hand over must load as a suite
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
        runs.extend(SuiteSpec.model_validate(suite, context=_UNBOUNDED).expand())
    check_joins_results(runs, results_dir, f"the best points of study {outcome.spec.name}")
    ResultsStore(results_dir).write_suite(
        {
            "name": f"{outcome.spec.name}-best",
            "tuned_by": outcome.spec.name,
            "suites": suites,
            "runs": [r.run_id for r in runs],
        }
    )
    return dataclasses.asdict(
        run_suite(
            runs,
            results_dir,
            address=address,
            num_cpus=num_cpus,
            max_concurrent=outcome.spec.max_concurrent,
        )
    )
