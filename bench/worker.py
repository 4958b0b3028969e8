"""A run inside a Ray worker: its device, its training, and what it leaves for the next run.

:func:`train_in_worker` is :func:`~podbench.engine.train_run` as a Ray trial or task runs it: on
the device Ray gave it (:func:`trial_device`), within its CPU and GPU-memory share, its record
naming the GPU ids and the node, and the memory the run held freed afterwards for the next run
of the (reused) worker.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from podbench.record import RunError, RunRecord, utc_now
from podbench.runs import RunSpec

__all__ = ["train_in_worker", "trial_device", "GPUNotVisible", "failed_record"]


class GPUNotVisible(RuntimeError):
    """Ray gave a run GPUs (``ids``) that torch cannot see on that node."""

    def __init__(self, message: str, ids: list[str]) -> None:
        super().__init__(message)
        self.ids = ids


def trial_device() -> tuple[str, list[str]]:
    """The device of the run this Ray task or trial executes, and the GPU ids Ray gave it.

    ``("cuda", ids)`` exactly when Ray gave it GPUs (Ray then makes only those visible), else
    ``("cpu", [])`` even where GPUs are visible. Raises :class:`GPUNotVisible` when Ray gave a GPU
    that torch cannot see, rather than training on the CPU instead.
    """
    import ray
    import torch

    ids = [str(i) for i in ray.get_gpu_ids()] if ray.is_initialized() else []
    if not ids:
        return "cpu", []
    if not torch.cuda.is_available():
        raise GPUNotVisible(
            f"Ray gave this run GPU {', '.join(ids)} but torch sees no CUDA device there "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, torch "
            f"{torch.__version__} built for CUDA {torch.version.cuda or 'none'}); install the "
            "NVIDIA driver and a CUDA build of torch on that node, or set gpus: 0 to train on "
            "its CPUs",
            ids,
        )
    return "cuda", ids


def train_in_worker(
    run: RunSpec,
    *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_dir: Path | None = None,
    tensorboard_dir: Path | None = None,
) -> dict[str, Any]:
    """:func:`~podbench.engine.train_run` inside a Ray trial; returns the run record.

    The run trains on the device of :func:`trial_device` (a run given no GPU never touches
    CUDA); a fractional run may fill only its share of the GPU's memory. The record's ``env``
    names the GPU ids and the Ray node. Whatever the run held is freed after it, for the next
    run of this (reused) worker.
    """
    import torch

    from podbench.engine import environment, train_run

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(run.cpus)))  # one thread per allotted CPU, no oversubscription
    # one inter-op thread: a run's parallelism is its intra-op threads (settable once per
    # process, before any inter-op work: the next run of a reused worker finds it set)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    gpu_ids: list[str] = []
    try:
        device, gpu_ids = trial_device()
        if gpu_ids and run.gpus < 1:  # packed runs share the GPU's memory by their shares
            torch.cuda.set_per_process_memory_fraction(run.gpus)
        on_device = run.model_copy(update={"device": device})
        record = train_run(
            on_device,
            on_epoch=on_epoch,
            checkpoint_dir=checkpoint_dir,
            tensorboard_dir=tensorboard_dir,
        )
    except GPUNotVisible as err:
        gpu_ids = err.ids
        record = failed_record(run, "GPUNotVisible", str(err), env=environment(torch.device("cpu")))
    finally:
        _release_memory(bool(gpu_ids) and run.gpus < 1)
        torch.set_num_threads(threads)  # the next run of this worker starts as this one did
    record["env"] = {
        **(record.get("env") or {}),
        "gpu_ids": gpu_ids,
        "ray_node": _ray_node(),
        "pid": os.getpid(),
    }
    return record


def _release_memory(capped: bool = False) -> None:
    """Give back what a finished run held, before this worker takes the next run; ``capped``:
    the run limited this process's share of the GPU's memory, lifted again."""
    import gc

    import torch

    gc.collect()  # a model or plugin caught in a reference cycle (a hook on itself) goes now
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        if capped:
            torch.cuda.set_per_process_memory_fraction(1.0)


def _ray_node() -> str | None:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def failed_record(
    run: RunSpec,
    kind: str,
    message: str,
    *,
    trace: str | None = None,
    env: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The record of a run that failed before or outside the engine."""
    error = RunError(type=kind, message=message, traceback=trace, epoch=None)
    return RunRecord.of_run(
        run, status="failed", error=error, env=env, finished_at=utc_now()
    ).to_json_dict()
