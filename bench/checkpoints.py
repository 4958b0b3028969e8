"""A run's checkpoint (``last.pt``, written after each epoch) and how a run resumes from it.

A checkpoint holds the state dicts of the model, the loss plugin, the optimiser and the loss
scaler, the run's :class:`TrainingProgress` and torch's random states (the CPU's, and the GPU's
on CUDA). The learning-rate schedule is not saved but replayed: a resumed run steps a fresh
scheduler as often as the interrupted one had. A checkpoint of another run (another run id) is
ignored, and a run then starts afresh.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from podbench.factory import RunParts

__all__ = [
    "CHECKPOINT_NAME",
    "TrainingProgress",
    "save_checkpoint",
    "load_checkpoint",
    "rng_states",
    "restore_rng_states",
]

CHECKPOINT_NAME = "last.pt"


@dataclass
class TrainingProgress:
    """How far a run has come: its history entries and its counters, which a checkpoint keeps.

    ``start_epoch``: the epoch the run trains next (0 for a fresh run).
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    train_images: int = 0
    train_seconds: float = 0.0
    optimizer_steps: int = 0
    start_epoch: int = 0


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """torch's random states a resumed run needs: the CPU's, and the run's GPU's when on CUDA."""
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":  # dropout, augmentation and centroids may draw on the GPU
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng_states(states: dict[str, torch.Tensor], device: torch.device) -> None:
    """Put back what :func:`rng_states` saved (a CPU-only checkpoint leaves the GPU's alone)."""
    torch.set_rng_state(states["cpu"].cpu())
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"].cpu(), device)


def save_checkpoint(
    directory: Path, parts: RunParts, progress: TrainingProgress, epoch: int, device: torch.device
) -> Path:
    """Write the checkpoint after ``epoch`` atomically: a killed run leaves the previous one."""
    directory.mkdir(parents=True, exist_ok=True)
    counters = asdict(progress)
    del counters["start_epoch"]  # the next epoch is epoch + 1
    state = {
        "epoch": epoch,
        "run_id": parts.run.run_id,
        "model": parts.model.state_dict(),
        "plugin": parts.plugin.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scaler": parts.scaler.state_dict(),
        **counters,
        "rng": rng_states(device),
        "lookahead": parts.lookahead.average if parts.lookahead is not None else None,
    }
    path = directory / CHECKPOINT_NAME
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def _replay_schedule(parts: RunParts, steps: int) -> None:
    """Step a fresh scheduler ``steps`` times (before the optimiser's state is loaded)."""
    if parts.scheduler is None:
        return
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()"
        warnings.simplefilter("ignore")
        for _ in range(steps):
            parts.scheduler.step()


def load_checkpoint(path: Path, parts: RunParts, device: torch.device) -> TrainingProgress | None:
    """Load ``path`` into ``parts`` and torch's random states; the progress to resume from.

    None (and ``parts`` untouched) when the checkpoint is another run's.
    """
    # weights_only: a checkpoint file cannot run code when loaded
    state = torch.load(path, map_location=device, weights_only=True)
    if state.get("run_id") != parts.run.run_id:
        return None
    parts.model.load_state_dict(state["model"])
    parts.plugin.load_state_dict(state["plugin"])
    per_update = parts.step_scheduler_per_update
    _replay_schedule(parts, state["optimizer_steps"] if per_update else state["epoch"] + 1)
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scaler.load_state_dict(state["scaler"])
    if parts.lookahead is not None and state.get("lookahead") is not None:
        for average, saved in zip(parts.lookahead.average, state["lookahead"], strict=True):
            average.copy_(saved)
    restore_rng_states(state["rng"], device)
    return TrainingProgress(
        history=list(state["history"]),
        train_images=int(state["train_images"]),
        train_seconds=float(state["train_seconds"]),
        optimizer_steps=int(state["optimizer_steps"]),
        start_epoch=int(state["epoch"]) + 1,
    )
