"""Latent-geometry statistics of a run's evaluation features: do they show what the loss claims?

POD Loss claims cosine alignment with its centroids and decorrelated residuals; the margin losses
claim compact, well-separated classes. Each statistic is measured on the features the loss
*classifies* (:meth:`~podbench.losses.LossPlugin.classified_features`: x for a linear head,
x / ||x|| for a cosine head, BN(x) / ||BN(x)|| for PEDCC-Loss), written f below, except the two
that describe the network's raw output x. Class centres c_k are the loss's own
(:meth:`~podbench.losses.LossPlugin.centroids_for_geometry`: fixed centroids, learned class
weights or centres), else the class means of f; m_k is the mean of f over class k.

Alignment and decorrelation:

- ``mean_cos_to_center``: mean_i cos(f_i, c_{y_i});
- ``residual_abs_offdiag_corr``: mean |off-diagonal Pearson correlation| between the dimensions of
  the residuals z_i = f_i / ||f_i|| - c_{y_i} / ||c_{y_i}|| (POD's SC term minimises their
  off-diagonal second moments);
- ``mean_abs_offdiag_corr``: the same over the raw features x of all classes together (dominated
  by the class means; shown next to the residual one).

Separation and compactness (angles in degrees):

- ``min_interclass_angle_deg``, ``mean_interclass_angle_deg``: over the pairs of class means m_k;
- ``mean_intraclass_angle_deg``: mean_i angle(f_i, m_{y_i});
- ``intra_inter_angle_ratio``: mean intra-class angle / mean inter-class angle (0: every class a
  single direction; near 1: classes as spread as they are apart).

Norms of the raw features: ``mean_feature_norm``, ``std_feature_norm`` (population std).

A statistic that is undefined for the input (one class, fewer than two samples, fewer than two
non-constant dimensions) is left out: the result is always a flat ``dict[str, float]``.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from podbench.record import GEOMETRY_KEYS  # the names are part of the record

if TYPE_CHECKING:
    from podbench.losses import LossPlugin

__all__ = ["GEOMETRY_KEYS", "geometry_stats", "plugin_geometry"]


_EPS = 1e-12  # a zero vector has cosine 0 to everything rather than NaN


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(_EPS)


def _angles_deg(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise angles in degrees between the rows of a and b."""
    cos = (_unit(a) * _unit(b)).sum(dim=-1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos))


def _mean_abs_offdiag_corr(x: Tensor) -> float | None:
    """Mean |off-diagonal Pearson correlation| between the columns of x; constant ones left out."""
    if x.shape[0] < 2:
        return None
    centred = x - x.mean(dim=0)
    std = centred.pow(2).sum(dim=0).sqrt()
    keep = std > 1e-12 * max(1.0, float(x.abs().max()))
    d = int(keep.sum())
    if d < 2:
        return None
    z = centred[:, keep] / std[keep]
    r = z.T @ z
    return float((r.abs().sum() - r.diagonal().abs().sum()) / (d * (d - 1)))


def geometry_stats(
    features: Tensor,
    labels: Tensor,
    centers: Tensor | None = None,
    *,
    classified: Tensor | None = None,
) -> dict[str, float]:
    """Geometry statistics (see the module docstring) of one evaluation set.

    Args:
        features: (N, d) raw latent features x, the network's output.
        labels: (N,) class index of each row.
        centers: (K, d') class centres indexed by label, in the space of ``classified``; None:
            the class means of the classified features.
        classified: (N, d') the features the loss classifies; None: ``features`` themselves.

    Returns:
        {statistic: value}; undefined statistics are left out.
    """
    x = features.detach().to(torch.float64).cpu()
    y = labels.detach().to(torch.long).cpu()
    f = x if classified is None else classified.detach().to(torch.float64).cpu()
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0 or f.shape[0] != x.shape[0]:
        raise ValueError(
            f"features must be (N, d) with N = len(labels) > 0, got {tuple(x.shape)}, "
            f"classified {tuple(f.shape)} and {tuple(y.shape)} labels"
        )
    present, index = torch.unique(y, return_inverse=True)
    counts = torch.bincount(index).to(torch.float64)
    means = torch.zeros(len(present), f.shape[1], dtype=torch.float64).index_add_(0, index, f)
    means /= counts[:, None]
    own = means[index] if centers is None else centers.detach().to(torch.float64).cpu()[y]

    out: dict[str, float] = {
        "mean_cos_to_center": float((_unit(f) * _unit(own)).sum(dim=1).mean()),
    }
    residual = _mean_abs_offdiag_corr(_unit(f) - _unit(own))
    if residual is not None:
        out["residual_abs_offdiag_corr"] = residual
    raw = _mean_abs_offdiag_corr(x)
    if raw is not None:
        out["mean_abs_offdiag_corr"] = raw
    intra = float(_angles_deg(f, means[index]).mean())
    out["mean_intraclass_angle_deg"] = intra
    if len(present) >= 2:
        i, j = torch.triu_indices(len(present), len(present), offset=1)
        inter = _angles_deg(means[i], means[j])
        out["min_interclass_angle_deg"] = float(inter.min())
        out["mean_interclass_angle_deg"] = float(inter.mean())
        if float(inter.mean()) > 0:
            out["intra_inter_angle_ratio"] = intra / float(inter.mean())
    norms = x.norm(dim=1)
    out["mean_feature_norm"] = float(norms.mean())
    out["std_feature_norm"] = float(norms.std(correction=0))
    return {key: value for key, value in out.items() if math.isfinite(value)}


def plugin_geometry(plugin: LossPlugin, features: Tensor, labels: Tensor) -> dict[str, float]:
    """:func:`geometry_stats` of ``features`` as ``plugin`` classifies them, in eval mode.

    The plugin's classified features and class centres are used; its state is left as it was
    (the mode is restored, ``classified_features`` changes nothing).
    """
    first = next(itertools.chain(plugin.parameters(), plugin.buffers()), None)
    device = first.device if first is not None else torch.device("cpu")
    was_training = plugin.training
    plugin.eval()
    try:
        with torch.no_grad():
            classified = plugin.classified_features(features.to(device, torch.float32)).cpu()
            centers = plugin.centroids_for_geometry()
            centers = None if centers is None else centers.detach().float().cpu()
    finally:
        plugin.train(was_training)
    return geometry_stats(features, labels, centers, classified=classified)
