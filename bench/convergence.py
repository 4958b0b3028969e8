"""Is a run still improving when it stops? No verdict should rest on a learning curve still rising.

Comparing a method that has plateaued with one that is still climbing is a classic unfair
comparison. A run is *still improving* when its held-out accuracy (test, or validation when the
run evaluates on ``val``) rose by more than ``threshold`` (default one accuracy point) over its
last ``fraction`` (default 10 %) of epochs, rounded up and at least the last epoch: over epochs
E-1-w .. E-1 with w = max(1, ceil(fraction * E)). Torch-free.

Example:
    >>> round(late_gain([0.60, 0.70, 0.74]), 6)  # 3 epochs: the last one counts (w = 1)
    0.04
    >>> still_improving([{"test_acc": 0.60}, {"test_acc": 0.70}, {"test_acc": 0.74}])
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "STILL_IMPROVING_FRACTION",
    "STILL_IMPROVING_THRESHOLD",
    "held_out_accuracies",
    "late_gain",
    "rising",
    "still_improving",
]

#: Accuracy rise (a fraction: 0.01 = one point) above which a run counts as still improving.
STILL_IMPROVING_THRESHOLD = 0.01
#: The share of the epochs, at the end, over which the rise is measured.
STILL_IMPROVING_FRACTION = 0.1


def held_out_accuracies(history: Sequence[Mapping[str, Any]]) -> list[float | None]:
    """Each epoch's held-out accuracy: ``test_acc``, else ``val_acc``, else None."""
    out: list[float | None] = []
    for entry in history:
        value = entry.get("test_acc")
        if value is None:
            value = entry.get("val_acc")
        out.append(None if value is None or not math.isfinite(value) else float(value))
    return out


def late_gain(
    accuracies: Sequence[float | None], fraction: float = STILL_IMPROVING_FRACTION
) -> float | None:
    """Rise of the accuracy over the last max(1, ceil(fraction * E)) of E epochs; None if unknown.

    Unknown: fewer than two epochs, or a missing accuracy at either end of the window.
    """
    n = len(accuracies)
    if n < 2:
        return None
    # round first: 0.1 * 30 is 3.0000000000000004 in floating point, not more than 3 epochs
    window = min(n - 1, max(1, math.ceil(round(fraction * n, 9))))
    last, before = accuracies[-1], accuracies[-1 - window]
    if last is None or before is None:
        return None
    return last - before


def still_improving(
    history: Sequence[Mapping[str, Any]],
    threshold: float = STILL_IMPROVING_THRESHOLD,
    fraction: float = STILL_IMPROVING_FRACTION,
) -> bool | None:
    """Whether held-out accuracy rose by more than ``threshold`` at the end; None if unknown."""
    return rising(late_gain(held_out_accuracies(history), fraction), threshold)


def rising(gain: float | None, threshold: float = STILL_IMPROVING_THRESHOLD) -> bool | None:
    """Whether a :func:`late_gain` exceeds ``threshold``; None if the gain is unknown."""
    if gain is None:
        return None
    return gain > threshold + 1e-12  # a rise of exactly one point (0.79 -> 0.80) is not more
