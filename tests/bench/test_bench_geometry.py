"""Geometry statistics against independent NumPy/SciPy computations and hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from podbench.geometry import geometry_stats


def _reference(x: np.ndarray, y: np.ndarray, centers: np.ndarray | None) -> dict[str, float]:
    """The four statistics written differently: scipy distances, np.corrcoef, explicit loops."""
    classes = np.unique(y)
    if centers is None:
        centers_used = np.stack([x[y == k].mean(axis=0) for k in classes])
        own = np.stack([centers_used[np.searchsorted(classes, k)] for k in y])
    else:
        centers_used = centers
        own = centers[y]
    cos_own = 1.0 - np.array([cdist(x[i : i + 1], own[i : i + 1], "cosine")[0, 0] for i in range(len(x))])
    angles = []
    for a in range(len(centers_used)):
        for b in range(a + 1, len(centers_used)):
            c = 1.0 - cdist(centers_used[a : a + 1], centers_used[b : b + 1], "cosine")[0, 0]
            angles.append(math.degrees(math.acos(max(-1.0, min(1.0, c)))))
    corr = np.corrcoef(x, rowvar=False)
    d = corr.shape[0]
    offdiag = [abs(corr[i, j]) for i in range(d) for j in range(d) if i != j]
    return {
        "mean_cos_to_center": float(cos_own.mean()),
        "min_interclass_angle_deg": min(angles),
        "mean_abs_offdiag_corr": float(np.mean(offdiag)),
        "mean_feature_norm": float(np.mean(np.sqrt((x**2).sum(axis=1)))),
    }


@pytest.mark.parametrize("with_centers", [False, True])
def test_geometry_matches_numpy_reference(with_centers: bool) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 5)) + rng.normal(size=(1, 5))
    y = rng.integers(0, 4, size=60)
    centers = rng.normal(size=(4, 5)) if with_centers else None
    got = geometry_stats(
        torch.from_numpy(x), torch.from_numpy(y), None if centers is None else torch.from_numpy(centers)
    )
    want = _reference(x, y, centers)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_geometry_hand_worked_orthogonal_case() -> None:
    # two classes on the axes: features exactly on their centres, 90 degrees apart
    x = torch.tensor([[2.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 5.0]])
    y = torch.tensor([0, 0, 1, 1])
    got = geometry_stats(x, y, torch.eye(2))
    assert got["mean_cos_to_center"] == pytest.approx(1.0)
    assert got["min_interclass_angle_deg"] == pytest.approx(90.0)
    assert got["mean_feature_norm"] == pytest.approx((2 + 3 + 1 + 5) / 4)
    # Pearson r of the two columns (2,3,0,0) and (0,0,1,5), computed from its definition
    a = np.array([2, 3, 0, 0.0]) - 1.25
    b = np.array([0, 0, 1, 5.0]) - 1.5
    r = (a @ b) / math.sqrt((a @ a) * (b @ b))
    assert got["mean_abs_offdiag_corr"] == pytest.approx(abs(r))


def test_geometry_skips_constant_dimensions_and_single_class() -> None:
    x = torch.tensor([[1.0, 0.0, 7.0], [2.0, 1.0, 7.0], [3.0, 3.0, 7.0]])
    got = geometry_stats(x, torch.zeros(3, dtype=torch.long))
    assert got["min_interclass_angle_deg"] is None  # one class: no pair of centres
    r = np.corrcoef(np.array([1.0, 2, 3]), np.array([0.0, 1, 3]))[0, 1]
    assert got["mean_abs_offdiag_corr"] == pytest.approx(abs(r))


def test_geometry_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        geometry_stats(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
