"""Training-loop pieces of airbench94's recipe: its triangular schedule and its lookahead.

Both are written from airbench94's description (github.com/KellerJordan/cifar10-airbench,
``legacy/airbench94.py``); the code is our own. Neither reads a tensor back to the host: the
schedule's factors and the lookahead's decays are Python floats of the step count.

Why the earlier fast-cifar10 preset diverged for softmax at lr 1.5 (3 of 13 H200 runs NaN in
epochs 2-4, 2 of 6 with ``amp: off``, none at lr 0.75, none with label smoothing), and what
replaced it. Mean vs summed loss is not it: at batch 1024, lr 1.5 on the mean is airbench's
11.5 / 7.67 / 1024 on the sum, step for step. Not bf16 (float32 diverged too), not the BN
shifts' 64x (airbench's own). Two differences from the recipe tuned at this learning rate:

- the schedule: OneCycleLR's cosine holds the rate within 10% of its peak for 101 of the 490
  steps of 10 epochs (steps 116-216, epochs 2.4-4.4: where the runs diverged), airbench's
  triangle for 53 (steps 97-149). At lr 1.5 plain cross-entropy sits at the edge of stability
  (half the rate never diverged); one-cycle kept it there twice as long. :func:`triangular` is
  airbench's schedule, with its constant momentum instead of a cycle 0.95 -> 0.85.
- the head: the preset trained a 256 -> 256 projection with bias and a 10-way classifier with
  bias at lr 1.5, where airbench trains one bias-free linear layer. Under plain cross-entropy
  (not label smoothing, whose optimal logits are bounded) the head's weights keep growing, and
  the curvature of a product of two layers grows with each factor's norm, so the effective step
  on the logits grows during training; a single layer's does not. fast-cifar10 now gives the
  cross-entropy losses airbench's head (``proj: none``, ``bias: false``).

These are measured schedule facts and an argument, not a rerun: whether 20+ seeds per loss now
train with no divergence needs the GPU check (``benchmarks/gpu_check.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

__all__ = [
    "LR_END",
    "LR_START",
    "LOOKAHEAD_EVERY",
    "MIN_WARMUP_STEPS",
    "Lookahead",
    "schedule_warmup",
    "triangular",
    "tta_scores",
    "warmup_steps",
    "warmup_warnings",
]

LR_START = 0.2  # the learning rate starts at 0.2x its peak ...
LR_END = 0.07  # ... and ends at 0.07x
LOOKAHEAD_EVERY = 5  # steps between two lookahead updates
LOOKAHEAD_BASE = 0.95**5  # the decay's scale: 0.95 per step over 5 steps
ONECYCLE_WARMUP = 0.3  # OneCycleLR's pct_start
TRIANGULAR_WARMUP = 0.23  # airbench94's
# fewer warm-up steps than this and `podbench validate` warns: airbench94's 94% has 109 (9.9
# epochs of 48 steps); on an H200 fast-cifar10 runs with 15 (1 epoch) and 29 (2 epochs) one-cycle
# warm-up steps failed (chance accuracy, divergence in epoch 0), at 10 epochs (147) 3 of 13 softmax
# runs still diverged with one-cycle's momentum cycle (issue #20)
MIN_WARMUP_STEPS = 50

if TYPE_CHECKING:
    from podbench.runs import RunSpec


def warmup_steps(total: int, warmup: float) -> int:
    """The steps of the rising part: ``int(total * warmup)``, as airbench rounds."""
    return int(total * warmup)


def triangular(step: int, total: int, warmup: float) -> float:
    """The learning-rate factor of update ``step`` (0-based) of ``total``.

    Linear from :data:`LR_START` to 1 over the first ``warmup`` share of the steps, then linear
    to :data:`LR_END` at the last step; the momentum stays constant. Unlike a one-cycle schedule
    there is no momentum cycle, and the first step already has 0.2x the peak rate.
    """
    rise = warmup_steps(total, warmup)
    if step < rise:
        frac = step / rise
        return LR_START * (1 - frac) + frac
    frac = (step - rise) / max(1, total - rise)
    return (1 - frac) + LR_END * frac


class Lookahead:
    """airbench's lookahead: an average of the weights that the weights are reset to.

    Every :data:`LOOKAHEAD_EVERY` steps, ``avg <- decay avg + (1 - decay) w`` and then
    ``w <- avg``, for every floating-point tensor of the state (BN statistics included), with
    ``decay = 0.95^5 (step / total)^3``: no averaging early, strong averaging late. After the last
    step the weights become the average (decay 1).

    Args:
        tensors: the state to average (kept by reference: updated in place).
    """

    def __init__(self, tensors: Iterable[torch.Tensor]) -> None:
        self.live = [t for t in tensors if t.is_floating_point()]
        self.average = [t.detach().clone() for t in self.live]

    @classmethod
    def of(cls, *modules: nn.Module) -> Lookahead:
        """Over ``modules[0]``'s state dict and the parameters of the others (a loss's head)."""
        tensors = list(modules[0].state_dict(keep_vars=True).values())
        for module in modules[1:]:
            tensors += list(module.parameters())
        return cls(tensors)

    @staticmethod
    def decay(step: int, total: int) -> float:
        return LOOKAHEAD_BASE * (step / total) ** 3

    @torch.no_grad()
    def update(self, decay: float) -> None:
        """``avg <- lerp(avg, w, 1 - decay)``, then ``w <- avg``."""
        torch._foreach_lerp_(self.average, [t.detach() for t in self.live], 1.0 - decay)
        for live, avg in zip(self.live, self.average, strict=True):
            live.detach().copy_(avg)

    def after_step(self, step: int, total: int) -> None:
        """Called after update ``step`` (1-based) of ``total``."""
        if step % LOOKAHEAD_EVERY == 0:
            self.update(self.decay(step, total))
        if step == total:
            self.update(1.0)


def schedule_warmup(schedule: str, warmup: float | None) -> float | None:
    """The rising share of ``schedule`` (None: a schedule without a warm-up)."""
    if schedule == "onecycle":
        return ONECYCLE_WARMUP if warmup is None else warmup
    if schedule == "triangular":
        return TRIANGULAR_WARMUP if warmup is None else warmup
    return None


def _planned_steps(run: RunSpec) -> int | None:
    """Optimiser steps of ``run`` from its dataset's declared size (None: size unknown)."""
    from podbench.tasks import dataset_info

    n = dataset_info(run.dataset).train_size
    if n is None:
        return None
    if run.limit_train is not None:
        n = min(n, run.limit_train)
    if run.eval_split == "val" or run.evaluate:  # validation carved out of the training split
        n = n - math.ceil(n * run.val_fraction)
    per_epoch = n // run.batch_size if run.drop_last else math.ceil(n / run.batch_size)
    if run.max_steps:
        per_epoch = min(per_epoch, run.max_steps)
    return per_epoch * run.epochs


def warmup_warnings(runs: Sequence[RunSpec], min_steps: int = MIN_WARMUP_STEPS) -> list[str]:
    """One sentence per distinct too-short warm-up among ``runs`` (the methods it concerns)."""
    found: dict[tuple, list[str]] = {}
    for run in runs:
        share = schedule_warmup(run.schedule, run.warmup)
        total = _planned_steps(run) if share is not None else None
        if share is None or total is None:
            continue
        rising = warmup_steps(total, share)
        if rising < min_steps:
            key = (run.dataset, run.arch, run.schedule, share, total, rising)
            found.setdefault(key, [])
            if run.label not in found[key]:
                found[key].append(run.label)
    return [
        f"{', '.join(labels)} on {dataset}/{arch}: the learning rate rises over {rising} steps "
        f"only ({schedule}, warmup {share:g} of {total} steps), fewer than {min_steps}; short "
        "warm-ups diverged on fast-cifar10: raise epochs or warmup, or lower lr"
        for (dataset, arch, schedule, share, total, rising), labels in found.items()
    ]


def tta_scores(
    forward: Callable[[torch.Tensor], torch.Tensor],
    predict: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
) -> torch.Tensor:
    """Class scores of a batch under airbench's test-time augmentation: the weighted mean of the
    scores of :func:`~podbench.tasks.augment.tta_views` (6 views)."""
    from podbench.tasks.augment import tta_views

    total: torch.Tensor | None = None
    for weight, view in tta_views(x):
        scores = predict(forward(view.contiguous(memory_format=_layout(x)))) * weight
        total = scores if total is None else total + scores
    assert total is not None
    return total


def _layout(x: torch.Tensor) -> torch.memory_format:
    if (
        x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    ):
        return torch.channels_last
    return torch.contiguous_format
