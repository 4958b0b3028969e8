"""Synthetic label noise on training labels: transition matrices and seeded noisy labels.

A noise model is a row-stochastic K x K matrix T with T[i, j] = P(noisy label j | true label i);
each training label is redrawn from its row with a seeded generator (as Patrini et al. 2017's
``multiclass_noisify``). Kinds:

- ``symmetric``: a label becomes each *other* class with probability rate / (K - 1), so a share
  ``rate`` of the labels is wrong (T[i, i] = 1 - rate).
- ``asymmetric``: the class-dependent flips of the noisy-label literature (Patrini et al. 2017,
  used by Ma et al. 2020 and others), a label flipped to its partner with probability ``rate``:
  CIFAR-10 truck -> automobile, bird -> airplane, deer -> horse, cat <-> dog; digits (MNIST, SVHN,
  scikit-learn's digits) 2 -> 7, 3 -> 8, 5 <-> 6, 7 -> 1. Recognised by the class names.
- ``pair``: pair flipping (Han et al. 2018): class i becomes class i + 1 (mod K) with probability
  ``rate``; defined for any dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from podbench.errors import UserError

__all__ = ["ASYMMETRIC_FLIPS", "NOISE_KINDS", "LabelNoise", "noisy_labels", "transition_matrix"]

NOISE_KINDS = ("symmetric", "asymmetric", "pair")

# Class-name flips of the literature, keyed by the name of the set of classes they apply to.
ASYMMETRIC_FLIPS: dict[str, dict[str, str]] = {
    "CIFAR-10": {
        "truck": "automobile",
        "bird": "airplane",
        "deer": "horse",
        "cat": "dog",
        "dog": "cat",
    },
    "digits": {"2": "7", "3": "8", "5": "6", "6": "5", "7": "1"},
}
_FLIP_CLASSES = {
    "CIFAR-10": {
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    },
    "digits": {str(i) for i in range(10)},
}


def _asymmetric_flips(classes: Sequence[str]) -> dict[str, str]:
    names = set(classes)
    for key, known in _FLIP_CLASSES.items():
        # an open-set subset of the classes keeps the flips among the classes it kept
        if names <= known:
            return {a: b for a, b in ASYMMETRIC_FLIPS[key].items() if a in names and b in names}
    raise UserError(
        "label_noise.kind: asymmetric has flips from the literature only for CIFAR-10 and digit "
        f"datasets (MNIST, SVHN, digits), not for classes {', '.join(classes)}; use kind: pair "
        "(each class to the next, Han et al. 2018) or kind: symmetric."
    )


def transition_matrix(kind: str, rate: float, classes: Sequence[str]) -> np.ndarray:
    """The K x K noise transition matrix of ``kind`` at ``rate`` for these class names.

    Raises:
        UserError: an unknown kind, a rate outside [0, 1), or asymmetric noise for classes
            without a literature map.
    """
    k = len(classes)
    if kind not in NOISE_KINDS:
        raise UserError(f"label_noise.kind must be one of {', '.join(NOISE_KINDS)}, got {kind!r}.")
    if not 0.0 <= rate < 1.0:
        raise UserError(f"label_noise.rate must be in [0, 1), got {rate}.")
    if k < 2:
        raise UserError("label_noise needs at least two classes.")
    matrix = np.eye(k)
    if kind == "symmetric":
        matrix = np.full((k, k), rate / (k - 1))
        np.fill_diagonal(matrix, 1.0 - rate)
    elif kind == "pair":
        for i in range(k):
            matrix[i, i] = 1.0 - rate
            matrix[i, (i + 1) % k] = rate
    else:
        index = {name: i for i, name in enumerate(classes)}
        for source, target in _asymmetric_flips(classes).items():
            i, j = index[source], index[target]
            matrix[i, i] = 1.0 - rate
            matrix[i, j] = rate
    return matrix


def noisy_labels(labels: np.ndarray, matrix: np.ndarray, seed: int) -> np.ndarray:
    """Each label redrawn from its row of ``matrix`` (one uniform draw per sample, seeded)."""
    labels = np.asarray(labels, dtype=np.int64)
    cumulative = np.cumsum(matrix, axis=1)
    cumulative[:, -1] = 1.0  # rounding must not leave a gap above the last class
    draws = np.random.default_rng(seed).random(len(labels))
    return (draws[:, None] >= cumulative[labels]).sum(axis=1).astype(np.int64)


@dataclass(frozen=True)
class LabelNoise:
    """A noise model for :func:`~podbench.tasks.load_task`: kind, rate and the seed of the draws."""

    kind: str
    rate: float
    seed: int = 0
