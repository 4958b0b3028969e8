"""Reproducible subsets of a split: the stratified validation carve-out and class-balanced limits."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedShuffleSplit

from podbench.errors import UserError

__all__ = ["balanced_head", "open_set_classes", "stratified_split"]


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held out) with class proportions preserved.

    The same ``(labels, fraction, seed)`` always gives the same split, on any machine.

    Args:
        labels: integer class of each sample.
        fraction: share of the samples held out, in (0, 1).
        seed: seed of the split.

    Returns:
        Two sorted index arrays that partition ``range(len(labels))``.

    Example:
        >>> keep, val = stratified_split(np.array([0, 0, 1, 1] * 5), 0.2, seed=0)
        >>> len(val)
        4
    """
    if not 0.0 < fraction < 1.0:
        raise UserError(f"val_fraction must be between 0 and 1 (exclusive), got {fraction}.")
    labels = np.asarray(labels)
    splitter = StratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    try:
        kept, held = next(splitter.split(np.zeros(len(labels)), labels))
    except ValueError as err:  # too few samples of a class for a stratified split
        raise UserError(
            f"val_fraction={fraction} cannot carve a stratified validation split from "
            f"{len(labels)} training samples ({err}); use more data or a larger val_fraction."
        ) from err
    return np.sort(kept), np.sort(held)


def balanced_head(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of the first ``n`` samples taken round-robin over classes, in original order.

    The k-th sample of every class comes before the (k+1)-th of any class, so class counts differ
    by at most one (until a class runs out).

    Example:
        >>> balanced_head(np.array([0, 0, 0, 1, 1, 1]), 4).tolist()
        [0, 1, 3, 4]
    """
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    first_of_class = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels)) - first_of_class
    picked = np.lexsort((np.arange(len(labels)), rank))[:n]
    return np.sort(picked)


def open_set_classes(num_classes: int, known: int, seed: int) -> tuple[int, ...]:
    """The sorted ``known`` classes of an open-set split, drawn without replacement by ``seed``.

    The other classes are the unknowns (Neal et al. 2018: 6 known of 10). The same
    ``(num_classes, known, seed)`` gives the same classes on any machine.

    Example:
        >>> len(open_set_classes(10, 6, seed=0))
        6
    """
    if not 2 <= known < num_classes:
        raise UserError(
            f"open_set.known must be between 2 and {num_classes - 1} (the dataset has "
            f"{num_classes} classes), got {known}."
        )
    picked = np.random.default_rng(seed).choice(num_classes, size=known, replace=False)
    return tuple(sorted(int(c) for c in picked))
