"""Tuning: a tune file -> one persistent Optuna study per loss -> trials on Ray -> best points.

Modules, in the order the data flows through them:

- :mod:`~podbench.tuning.tune_spec`: the tune file's model, its search spaces and
  :func:`load_tune` (the loading pipeline of :mod:`podbench.spec_files`, ``imports:`` included);
- :mod:`~podbench.tuning.study`: the studies in their storage: opened, resumed, counted;
- :mod:`~podbench.tuning.trials`: the Optuna/Ray Tune bridge, the trial function and
  :func:`run_study`, which tunes every loss with the same budget;
- :mod:`~podbench.tuning.outputs`: ``trials.csv``, ``best.yaml``, ``importances.json`` and
  :func:`rerun_best`, the best points rerun over seeds on the test set as ordinary suite runs.

Example (it trains, so the doctests skip it):
    >>> from podbench.tuning import load_tune, run_study
    >>> outcome = run_study(load_tune("tune-quickstart"), "results")  # doctest: +SKIP
"""

from __future__ import annotations

from podbench.tuning.outputs import best_suites, rerun_best, trials_table, write_outputs
from podbench.tuning.study import StudyOutcome, budget_used, storage_url, study_name
from podbench.tuning.trials import run_study
from podbench.tuning.tune_spec import TuneSpec, load_tune

__all__ = [
    "StudyOutcome",
    "TuneSpec",
    "best_suites",
    "budget_used",
    "load_tune",
    "rerun_best",
    "run_study",
    "storage_url",
    "study_name",
    "trials_table",
    "write_outputs",
]
