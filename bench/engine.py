"""The training engine: one function, :func:`train_run`, for suites, tuning and benchmarks.

``train_run(run)`` builds the task, the network and the loss plugin a :class:`RunSpec` names,
trains for ``run.epochs`` epochs with per-epoch evaluation, and returns the run record (a
:class:`~podbench.record.RunRecord` as plain JSON). It never raises for a plugin error or a
diverging run: the record says ``failed`` (with the traceback) or ``diverged`` (with the epoch).
Only KeyboardInterrupt and other BaseExceptions escape.

The run's life, module by module: :mod:`podbench.runtime` (the policy: seeds, deterministic
kernels, TF32, AMP, applied to torch for the run and restored after it), :mod:`podbench.factory`
(spec to parts: task, model, plugin, optimiser, schedule, scaler), :mod:`podbench.loop` (train,
evaluate, probe, fit) and :mod:`podbench.checkpoints` (save, resume, schedule replay, RNG).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from podbench.checkpoints import TrainingProgress
from podbench.factory import build_parts
from podbench.loop import RunDiverged, Trainer
from podbench.record import RunError, RunRecord, utc_now
from podbench.runs import RunSpec
from podbench.runtime import (
    RunPolicy,
    environment,
    nondeterminism_alerts,
    runtime_policy,
    seed_everything,
)
from podbench.tensorboard import RunCurves

__all__ = ["train_run", "RunDiverged", "environment", "nondeterminism_alerts", "seed_everything"]


def _error(exc: BaseException, epoch: int | None) -> RunError:
    return RunError(
        type=type(exc).__name__,
        message=str(exc),
        traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        epoch=epoch,
    )


def train_run(
    run: RunSpec,
    *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_dir: Path | None = None,
    tensorboard_dir: Path | None = None,
) -> dict[str, Any]:
    """Train and evaluate one run; return its record (never raises for plugin errors or NaN).

    Args:
        run: the fully resolved run.
        on_epoch: called with each epoch's history entry (for Ray reporting, pruning).
        checkpoint_dir: where to keep ``last.pt`` after each epoch; an existing checkpoint of the
            same run is resumed from. None: no checkpoints.
        tensorboard_dir: where to write the run's TensorBoard event files (per-epoch curves, then
            the hyperparameters with the final metrics). None: none.

    Returns:
        The run record: :meth:`RunRecord.to_json_dict` of a validated :class:`RunRecord`.
    """
    started_at = utc_now()
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    status = "completed"
    error: RunError | None = None
    geometry: dict[str, Any] | None = None
    policy: RunPolicy | None = None
    trainer: Trainer | None = None
    curves: RunCurves | None = None
    with nondeterminism_alerts() as nondeterministic_ops:  # filled when the block ends
        try:
            with runtime_policy(run) as policy:  # torch's settings restored when the run ends
                trainer = Trainer(build_parts(run, policy), policy, checkpoint_dir)
                if tensorboard_dir is not None:
                    curves = RunCurves(
                        tensorboard_dir, run, first_epoch=trainer.progress.start_epoch
                    )
                geometry = trainer.fit(on_epoch, curves)
        except FloatingPointError as exc:  # RunDiverged, or a plugin's NonFiniteFeaturesError
            status, error = "diverged", _error(exc, getattr(trainer, "current_epoch", None))
        except Exception as exc:  # a plugin or data error must not stop the suite
            status, error = "failed", _error(exc, getattr(trainer, "current_epoch", None))
    env = _environment(policy, nondeterministic_ops)
    record = _record(
        run,
        trainer,
        status=status,
        error=error,
        geometry=geometry,
        env=env,
        wall_time_s=time.perf_counter() - t0,
        cpu_time_s=time.process_time() - cpu0,  # this process's, all threads
        started_at=started_at,
    )
    if curves is not None:
        curves.finish(record)
    return record


def _environment(policy: RunPolicy | None, nondeterministic_ops: list[str]) -> dict[str, Any]:
    """The record's ``env``; a run refused before its policy was decided records the CPU."""
    if policy is None:
        return environment(torch.device("cpu"))
    return environment(
        policy.device,
        policy.deterministic,
        policy.tf32,
        nondeterministic_ops,
        policy.channels_last,
        policy.layout_probe,
    )


def _record(run: RunSpec, trainer: Trainer | None, **fields: Any) -> dict[str, Any]:
    """The run record as JSON, from what the trainer (None: never built) got through."""
    progress = trainer.progress if trainer is not None else TrainingProgress()
    history = progress.history
    accs = [h["test_acc"] for h in history if h.get("test_acc") is not None]
    images_per_s = None
    if progress.train_seconds > 0:
        images_per_s = progress.train_images / progress.train_seconds
    record = RunRecord.of_run(  # the record turns a NaN loss (a diverged epoch) into null
        run,
        # None when the data never loaded
        num_classes=trainer.parts.num_classes if trainer is not None else None,
        history=history,
        final_test_acc=accs[-1] if accs else None,
        best_test_acc=max(accs) if accs else None,
        epochs_completed=len(history),
        images_per_s=images_per_s,
        evaluation=trainer.evaluation if trainer is not None else {},
        finished_at=utc_now(),
        **fields,
    )
    return record.to_json_dict()
