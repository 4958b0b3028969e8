"""TensorBoard curves of every run: ``tensorboard --logdir RESULTS`` shows each run of a suite.

Each run writes event files into its own folder, ``RESULTS/tensorboard/<label>/<dataset>-<arch>-
d<d>-seed<seed>-<run_id>`` (see :func:`run_log_dir`), from the engine's per-epoch step:

- ``train/loss`` and ``train/<part>`` (POD: ``train/nac``, ``train/sc``), ``accuracy/train``,
  ``accuracy/test`` or ``accuracy/val``, ``lr``, ``seconds/epoch``;
- ``loss_state/<name>``: the loss's own state in that epoch (:meth:`LossPlugin.epoch_state`; POD:
  ``loss_state/delta``);
- ``geometry/<name>`` at the last epoch, ``evaluation/<probe>/<metric>`` when probes ran
  (calibration, OOD, corruptions: the suite's ``evaluate``);
- the hyperparameters (HPARAMS tab) with the final metrics ``final/test_acc``, ``final/best_test_acc``,
  ``final/wall_time_s``, ... when the run ends, whatever its status.

Steps are epochs (0-based). A resumed run purges what an interrupted attempt wrote from its first
epoch on, so no epoch appears twice. Writing curves never fails a run: a problem is a warning.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from podbench.runs import RunSpec

__all__ = ["FOLDER", "RunCurves", "hparams_of", "run_log_dir"]

FOLDER = "tensorboard"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# run settings shown as hyperparameters (besides the loss's own, prefixed "loss.")
_SETTINGS = (
    "label",
    "loss",
    "variant",
    "dataset",
    "arch",
    "feat_dim",
    "seed",
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "schedule",
    "amp",
    "eval_split",
    "image_size",
)
# record field -> metric tag of the HPARAMS tab
_FINAL = {
    "final_test_acc": "final/test_acc",
    "best_test_acc": "final/best_test_acc",
    "epochs_completed": "final/epochs_completed",
    "wall_time_s": "final/wall_time_s",
    "images_per_s": "final/images_per_s",
}


def run_log_dir(results: str | Path, run: RunSpec) -> Path:
    """The event-file folder of ``run`` under the results folder ``results``."""
    name = f"{run.dataset}-{run.arch}-d{run.feat_dim}-seed{run.seed}-{run.run_id}"
    return Path(results) / FOLDER / _UNSAFE.sub("_", run.label) / _UNSAFE.sub("_", name)


def hparams_of(run: RunSpec) -> dict[str, Any]:
    """The run's settings and loss hyperparameters as TensorBoard hparams (bool/int/float/str)."""
    out: dict[str, Any] = {}
    for key in _SETTINGS:
        out[key] = getattr(run, key)
    for key, value in sorted(run.loss_params.items()):
        out[f"loss.{key}"] = value
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in out.items()}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class RunCurves:
    """The event-file writer of one run; every method warns instead of raising.

    Args:
        log_dir: the run's folder (:func:`run_log_dir`).
        run: the run (its settings become the hparams).
        first_epoch: the epoch training starts from (a resumed run: what it purges from).
    """

    def __init__(self, log_dir: str | Path, run: RunSpec, first_epoch: int = 0) -> None:
        self.run = run
        self.writer: Any = None
        self.last_epoch = first_epoch - 1
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events an interrupted attempt wrote from first_epoch on are dropped
            self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=first_epoch, flush_secs=30)
        except Exception as err:  # noqa: BLE001  curves are a view: the run goes on without them
            self._warn("cannot write TensorBoard curves", err)

    def _warn(self, what: str, err: BaseException) -> None:
        warnings.warn(
            f"run {self.run.run_id}: {what} ({type(err).__name__}: {err}); the run "
            "continues without them (install tensorboard, check the results folder).",
            stacklevel=3,
        )
        self.writer = None

    def epoch(
        self,
        entry: Mapping[str, Any],
        state: Mapping[str, float] | None = None,
        geometry: Mapping[str, Any] | None = None,
        evaluation: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """Write one epoch's history entry, the loss's state in it, and, when given, the
        geometry and the probes' values ({probe: {metric: value}})."""
        if self.writer is None:
            return
        step = int(entry["epoch"])
        scalars: dict[str, Any] = {
            "train/loss": entry.get("train_loss"),
            "accuracy/train": entry.get("train_acc"),
            "accuracy/test": entry.get("test_acc"),
            "accuracy/val": entry.get("val_acc"),
            "lr": entry.get("lr"),
            "seconds/epoch": entry.get("seconds"),
        }
        scalars.update({f"train/{k}": v for k, v in (entry.get("parts") or {}).items()})
        scalars.update({f"loss_state/{k}": v for k, v in (state or {}).items()})
        scalars.update({f"geometry/{k}": v for k, v in (geometry or {}).items()})
        scalars.update(
            {
                f"evaluation/{probe}/{k}": v
                for probe, metrics in (evaluation or {}).items()
                for k, v in metrics.items()
            }
        )
        try:
            for tag, value in scalars.items():
                if _finite(value):
                    self.writer.add_scalar(tag, float(value), step)
            self.last_epoch = step
        except Exception as err:  # noqa: BLE001
            self._warn("writing TensorBoard curves failed", err)

    def finish(self, record: Mapping[str, Any]) -> None:
        """Write the hyperparameters with the final metrics of ``record``, then close."""
        if self.writer is None:
            return
        try:
            from torch.utils.tensorboard.summary import hparams

            found: dict[str, Any] = {tag: record.get(key) for key, tag in _FINAL.items()}
            history = record.get("history") or []
            if history:  # tuning runs evaluate on the validation split only
                found["final/val_acc"] = history[-1].get("val_acc")
            found.update(
                {f"final/geometry/{k}": v for k, v in (record.get("geometry") or {}).items()}
            )
            found.update(
                {
                    f"final/evaluation/{probe}/{k}": v
                    for probe, values in (record.get("evaluation") or {}).items()
                    for k, v in values.items()
                }
            )
            metrics = {k: float(v) for k, v in found.items() if _finite(v)}
            params = {**hparams_of(self.run), "status": str(record.get("status"))}
            step = max(self.last_epoch, 0)
            for summary in hparams(params, metrics):
                self.writer.file_writer.add_summary(summary, step)
            for tag, value in metrics.items():
                self.writer.add_scalar(tag, value, step)
            self.writer.close()
        except Exception as err:  # noqa: BLE001
            self._warn("writing TensorBoard hyperparameters failed", err)
