"""Latent-geometry statistics of a run's evaluation features.

POD Loss claims well-separated, decorrelated latent features; these four numbers let a report
check that claim for every loss:

- ``mean_cos_to_center``: mean cosine between each feature and its own class centre (the loss's
  fixed centroid or learned class weight when it has one, else the class mean of the features);
- ``min_interclass_angle_deg``: the smallest angle between two class centres, in degrees;
- ``mean_abs_offdiag_corr``: mean absolute off-diagonal Pearson correlation between feature
  dimensions (dimensions with zero variance are left out);
- ``mean_feature_norm``: mean Euclidean norm of the features.
"""

from __future__ import annotations

import math

import torch

__all__ = ["geometry_stats"]


def geometry_stats(
    features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor | None = None
) -> dict[str, float | None]:
    """Geometry statistics of ``features`` (N, d) with integer ``labels`` (N,).

    Args:
        features: latent features, one row per sample.
        labels: class index of each row.
        centers: (K, d) class centres indexed by label; None = class means of ``features``
            (only the classes present are then compared).

    Returns:
        The four statistics; a statistic that is undefined for the input (a single class,
        fewer than two samples) is None.
    """
    x = features.detach().to(torch.float64).cpu()
    y = labels.detach().to(torch.long).cpu()
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"features must be (N, d) with N = len(labels) > 0, got {tuple(x.shape)}")
    if centers is None:
        present = torch.unique(y)
        c = torch.stack([x[y == k].mean(dim=0) for k in present.tolist()])
        index = {k: i for i, k in enumerate(present.tolist())}
        own = c[torch.tensor([index[k] for k in y.tolist()])]
    else:
        c = centers.detach().to(torch.float64).cpu()
        own = c[y]
    eps = 1e-12  # a zero vector has cosine 0 to everything rather than NaN
    x_unit = x / x.norm(dim=1, keepdim=True).clamp_min(eps)
    own_unit = own / own.norm(dim=1, keepdim=True).clamp_min(eps)
    mean_cos = float((x_unit * own_unit).sum(dim=1).mean())

    min_angle: float | None = None
    if c.shape[0] >= 2:
        c_unit = c / c.norm(dim=1, keepdim=True).clamp_min(eps)
        cos = (c_unit @ c_unit.T).clamp(-1.0, 1.0)
        i, j = torch.triu_indices(c.shape[0], c.shape[0], offset=1)
        min_angle = math.degrees(float(torch.arccos(cos[i, j]).min()))

    corr: float | None = None
    if x.shape[0] >= 2:
        centred = x - x.mean(dim=0)
        std = centred.pow(2).sum(dim=0).sqrt()
        keep = std > 1e-12
        if int(keep.sum()) >= 2:
            z = centred[:, keep] / std[keep]
            r = z.T @ z
            d = r.shape[0]
            off = r.abs().sum() - r.diagonal().abs().sum()
            corr = float(off / (d * (d - 1)))

    return {
        "mean_cos_to_center": mean_cos,
        "min_interclass_angle_deg": min_angle,
        "mean_abs_offdiag_corr": corr,
        "mean_feature_norm": float(x.norm(dim=1).mean()),
    }
