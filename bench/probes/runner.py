"""How the engine runs a run's probes: which are due at an epoch, and their values by probe."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import Tensor

from podbench.probes.base import ProbeContext, full_precision
from podbench.probes.registry import create_probe

if TYPE_CHECKING:
    from podbench.runs import ProbeEntry, RunSpec
    from podbench.tasks import Task

__all__ = ["probes_due", "run_probes"]


def probes_due(entries: list[ProbeEntry], epoch: int, last: bool) -> list[ProbeEntry]:
    """The probes to run after ``epoch`` (0-based): all after the last, else those whose
    ``every`` divides the epoch count."""
    if last:
        return list(entries)
    return [e for e in entries if e.every is not None and (epoch + 1) % e.every == 0]


def run_probes(
    run: RunSpec,
    entries: list[ProbeEntry],
    *,
    forward: Callable[[Tensor], Tensor],
    predict: Callable[[Tensor], Tensor],
    task: Task,
) -> dict[str, dict[str, float | None]]:
    """{probe: {name: value}} of ``entries`` on the trained network (in eval mode already)."""
    if not entries:
        return {}
    from podbench.tasks import load_task

    def load_other(name: str, limit: int | None, root: str | None) -> Task:
        # another dataset as far-OOD set: at the run's image size, on the run's device
        return load_task(
            name, root, device=task.device, image_size=task.image_size, limit=limit, augment=False
        )

    context = ProbeContext(
        forward=forward,
        predict=predict,
        task=task,
        split=run.eval_split,
        batch_size=run.batch_size,
        seed=run.seed,
        load_other=load_other,
    )
    out = {}
    for entry in entries:
        with full_precision():  # TF32 off while probes run: the same values on any GPU
            values = create_probe(entry.name, entry.probe_settings()).measure(context)
        # records are strict JSON: an undefined value (NaN) is recorded as null
        out[entry.name] = {
            k: v if v is None or math.isfinite(v) else None for k, v in values.items()
        }
    return out
