"""Calibration of class probabilities: ECE, adaptive ECE, classwise ECE, NLL, Brier, temperature.

Every function takes the class probabilities ``probs`` (N, K) -- or, for the NLL and the
temperature, the scores ``scores`` (N, K) whose softmax they are -- and the integer labels (N,),
as tensors on any device, and returns plain floats. Computed in float64.

- ``expected_calibration_error`` (ECE, Guo et al. 2017): the confidence c_i = max_k p_ik is put
  into ``bins`` equal-width bins ((m-1)/M, m/M]; ECE = sum_m |B_m|/N |acc(B_m) - conf(B_m)|.
- ``adaptive_calibration_error``: AdaECE (Mukhoti et al. 2020, "Calibrating deep neural
  networks using focal loss"): the same top-label sum over equal-count bins (the samples sorted
  by confidence, split into ``bins`` runs whose sizes differ by at most one, as
  ``numpy.array_split``). Nixon et al. 2019's ACE is another metric: classwise, over the
  probabilities of every class, with adaptive ranges.
- ``classwise_calibration_error`` (Kull et al. 2019): for each class k, the ECE of p_ik against
  the indicator y_i = k over equal-width bins of p_ik; the mean over classes.
- ``negative_log_likelihood``: mean of -log softmax(scores)_y.
- ``brier_score``: mean over samples of sum_k (p_ik - [y_i = k])^2 (0 best, 2 worst).
- ``fit_temperature``: the T > 0 minimising the NLL of softmax(scores / T) (Guo et al. 2017);
  the NLL is convex in 1/T, so a bounded scalar search over log(1/T) finds the minimum.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import Tensor

__all__ = [
    "DEFAULT_BINS",
    "adaptive_calibration_error",
    "brier_score",
    "classwise_calibration_error",
    "expected_calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
    "reliability_bins",
    "softmax_probabilities",
]

DEFAULT_BINS = 15  # Guo et al. 2017
# 1/T searched in [1e-3, 1e4]: cosine scores in [-1, 1] need T near 1/30, large logits T > 1
_LOG_INV_T_BOUNDS = (math.log(1e-3), math.log(1e4))


def _check(values: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    if values.dim() != 2 or labels.dim() != 1 or values.shape[0] != labels.shape[0]:
        raise ValueError(
            f"expected (N, K) values and (N,) labels, got {tuple(values.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if values.shape[0] == 0:
        raise ValueError("no samples to measure")
    return values.to(torch.float64), labels.to(device=values.device, dtype=torch.long)


def softmax_probabilities(scores: Tensor, temperature: float = 1.0) -> Tensor:
    """softmax(scores / T) in float64."""
    return torch.softmax(scores.to(torch.float64) / float(temperature), dim=1)


def _equal_width_bin(values: Tensor, bins: int) -> Tensor:
    """Bin index 0..bins-1 of each value in [0, 1]: bin m holds ((m)/M, (m+1)/M], 0 also in bin 0."""
    return (torch.ceil(values * bins).long() - 1).clamp(0, bins - 1)


def _binned_gap(confidence: Tensor, hits: Tensor, index: Tensor, bins: int) -> float:
    """sum_m |B_m|/N |mean(hits in B_m) - mean(confidence in B_m)|."""
    n = confidence.shape[0]
    gap = torch.zeros(bins, dtype=torch.float64, device=confidence.device)
    gap.scatter_add_(0, index, confidence - hits)  # sum over the bin of (conf - hit)
    return float(gap.abs().sum()) / n


def expected_calibration_error(probs: Tensor, labels: Tensor, bins: int = DEFAULT_BINS) -> float:
    """Top-label ECE over ``bins`` equal-width confidence bins."""
    probs, labels = _check(probs, labels)
    confidence, predicted = probs.max(dim=1)
    hits = (predicted == labels).to(torch.float64)
    return _binned_gap(confidence, hits, _equal_width_bin(confidence, bins), bins)


def adaptive_calibration_error(probs: Tensor, labels: Tensor, bins: int = DEFAULT_BINS) -> float:
    """Top-label ECE over ``bins`` equal-count bins of the sorted confidences."""
    probs, labels = _check(probs, labels)
    confidence, predicted = probs.max(dim=1)
    hits = (predicted == labels).to(torch.float64)
    n = confidence.shape[0]
    order = torch.argsort(confidence, stable=True)
    # the first n % bins bins get one sample more, as numpy.array_split does
    sizes = torch.full((min(bins, n),), n // min(bins, n), dtype=torch.long)
    sizes[: n % min(bins, n)] += 1
    index = torch.empty(n, dtype=torch.long, device=confidence.device)
    index[order] = torch.repeat_interleave(torch.arange(len(sizes)), sizes).to(confidence.device)
    return _binned_gap(confidence, hits, index, len(sizes))


def classwise_calibration_error(probs: Tensor, labels: Tensor, bins: int = DEFAULT_BINS) -> float:
    """Mean over classes of the ECE of p_k against [y = k], equal-width bins of p_k."""
    probs, labels = _check(probs, labels)
    n, k = probs.shape
    onehot = torch.nn.functional.one_hot(labels, k).to(torch.float64)
    index = _equal_width_bin(probs, bins) + bins * torch.arange(k, device=probs.device)
    gap = torch.zeros(k * bins, dtype=torch.float64, device=probs.device)
    gap.scatter_add_(0, index.flatten(), (probs - onehot).flatten())
    return float(gap.abs().sum()) / (n * k)


def negative_log_likelihood(scores: Tensor, labels: Tensor, temperature: float = 1.0) -> float:
    """Mean -log softmax(scores / T)_y."""
    scores, labels = _check(scores, labels)
    return float(torch.nn.functional.cross_entropy(scores / float(temperature), labels))


def brier_score(probs: Tensor, labels: Tensor) -> float:
    """Mean over samples of the squared distance between p and the one-hot label."""
    probs, labels = _check(probs, labels)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).to(torch.float64)
    return float(((probs - onehot) ** 2).sum(dim=1).mean())


def reliability_bins(
    probs: Tensor, labels: Tensor, bins: int = DEFAULT_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: mean confidence, accuracy (NaN where empty) and share of the samples."""
    probs, labels = _check(probs, labels)
    confidence, predicted = probs.max(dim=1)
    hits = (predicted == labels).to(torch.float64)
    index = _equal_width_bin(confidence, bins)
    count = torch.bincount(index, minlength=bins).to(torch.float64)
    conf_sum = torch.zeros(bins, dtype=torch.float64, device=probs.device).scatter_add_(
        0, index, confidence
    )
    hit_sum = torch.zeros(bins, dtype=torch.float64, device=probs.device).scatter_add_(
        0, index, hits
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        count_np = count.cpu().numpy()
        return (
            conf_sum.cpu().numpy() / count_np,
            hit_sum.cpu().numpy() / count_np,
            count_np / count_np.sum(),
        )


def fit_temperature(scores: Tensor, labels: Tensor) -> float:
    """The temperature T minimising the NLL of softmax(scores / T) on these samples.

    Returns a value in [1e-4, 1e3]; a bound means the optimum lies beyond it (e.g. every sample
    classified correctly with a margin: the NLL keeps falling as T goes to 0).
    """
    scores, labels = _check(scores, labels)
    scores, labels = scores.cpu(), labels.cpu()

    def nll(log_inv_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(scores * math.exp(log_inv_t), labels))

    found = minimize_scalar(
        nll, bounds=_LOG_INV_T_BOUNDS, method="bounded", options={"xatol": 1e-7}
    )
    return float(math.exp(-found.x))
