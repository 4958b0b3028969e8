"""Out-of-distribution and open-set detection: the scores and the metrics.

Convention: **in-distribution is the positive class** and a higher score means "more likely
in-distribution" (as in Hendrycks & Gimpel 2017 and Liang et al. 2018). OpenOOD (Yang et al.
2022; ``openood/evaluators/metrics.py``) takes OOD as positive: its FPR@95 is the share of
in-distribution samples flagged at the threshold that flags 95% of the OOD samples, and its
AUPRs are trapezoids under scikit-learn's precision-recall curve, not average precision.
AUROC is the same either way; :func:`openood_metrics` gives OpenOOD's three others.

Scores of a sample with class scores s (the loss's ``predict``) and temperature T:

- ``msp``: the maximum softmax probability max_k softmax(s / T)_k (Hendrycks & Gimpel 2017);
- ``max-logit``: max_k s_k (Hendrycks et al. 2022); the maximum cosine for cosine losses;
- ``energy``: T log sum_k exp(s_k / T), the negative free energy (Liu et al. 2020).

Metrics of the in-distribution scores ``id_scores`` against the OOD scores ``ood_scores``:

- ``auroc``: area under the ROC curve (ties count one half);
- ``aupr_in``: average precision with in-distribution positive (sum over thresholds of
  (R_n - R_{n-1}) P_n, as scikit-learn's ``average_precision_score``);
- ``aupr_out``: average precision with OOD positive and the negated score;
- ``fpr95``: the share of OOD samples accepted at the highest threshold that accepts at
  least 95% of the in-distribution samples;
- ``openood_aupr_in``, ``openood_aupr_out``, ``openood_fpr95``: OpenOOD's convention (above).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DETECTION_SCORES",
    "ROC_FPR_GRID",
    "average_precision",
    "detection_metrics",
    "detection_score",
    "fpr_at_tpr",
    "openood_metrics",
    "pr_curve_area",
    "roc_auc",
    "roc_curve",
    "tpr_at_fpr",
]

DETECTION_SCORES = ("msp", "max-logit", "energy")
# false-positive rates at which the ROC curve is kept in the record (for the report's figure)
ROC_FPR_GRID = (0.0, 0.01, 0.02, 0.05, *[round(0.1 * i, 1) for i in range(1, 11)])


def detection_score(scores: Tensor, kind: str, temperature: float = 1.0) -> Tensor:
    """(N,) in-distribution score of each sample; higher = more in-distribution."""
    s = scores.to(torch.float64)
    if kind == "msp":
        return torch.softmax(s / temperature, dim=1).max(dim=1).values
    if kind == "max-logit":
        return s.max(dim=1).values
    if kind == "energy":
        return temperature * torch.logsumexp(s / temperature, dim=1)
    raise ValueError(f"unknown detection score {kind!r}; use one of {', '.join(DETECTION_SCORES)}")


def _labelled(positive: Tensor, negative: Tensor) -> tuple[Tensor, Tensor]:
    """Scores sorted descending and their labels (1 = positive)."""
    if positive.numel() == 0 or negative.numel() == 0:
        raise ValueError("detection metrics need at least one sample of each kind")
    scores = torch.cat([positive.flatten(), negative.flatten()]).to(torch.float64).cpu()
    labels = torch.cat([torch.ones(positive.numel()), torch.zeros(negative.numel())]).to(
        torch.float64
    )
    order = torch.argsort(scores, descending=True, stable=True)
    return scores[order], labels[order]


def roc_curve(positive: Tensor, negative: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at each distinct threshold, from (0, 0) at +inf to (1, 1)."""
    scores, labels = _labelled(positive, negative)
    # the last sample of each run of equal scores: a threshold accepts the whole run
    last = torch.ones_like(scores, dtype=torch.bool)
    last[:-1] = scores[1:] != scores[:-1]
    tps = torch.cumsum(labels, 0)[last]
    fps = torch.cumsum(1.0 - labels, 0)[last]
    tpr = torch.cat([torch.zeros(1, dtype=torch.float64), tps / tps[-1]]).numpy()
    fpr = torch.cat([torch.zeros(1, dtype=torch.float64), fps / fps[-1]]).numpy()
    thresholds = np.concatenate([[math.inf], scores[last].numpy()])
    return fpr, tpr, thresholds


def roc_auc(positive: Tensor, negative: Tensor) -> float:
    """Area under the ROC curve (trapezoids between distinct thresholds: ties count 1/2)."""
    fpr, tpr, _ = roc_curve(positive, negative)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def average_precision(positive: Tensor, negative: Tensor) -> float:
    """Average precision of the positives: sum_n (R_n - R_{n-1}) P_n over distinct thresholds."""
    scores, labels = _labelled(positive, negative)
    last = torch.ones_like(scores, dtype=torch.bool)
    last[:-1] = scores[1:] != scores[:-1]
    tps = torch.cumsum(labels, 0)[last]
    accepted = torch.cumsum(torch.ones_like(labels), 0)[last]
    precision = tps / accepted
    recall = tps / tps[-1]
    steps = torch.diff(recall, prepend=torch.zeros(1, dtype=torch.float64))
    return float((steps * precision).sum())


def pr_curve_area(positive: Tensor, negative: Tensor) -> float:
    """Trapezoids under the precision-recall curve of the positives: the points (R_n, P_n) of
    each distinct threshold and (0, 1), as ``sklearn.metrics.auc`` of ``precision_recall_curve``."""
    scores, labels = _labelled(positive, negative)
    last = torch.ones_like(scores, dtype=torch.bool)
    last[:-1] = scores[1:] != scores[:-1]
    tps = torch.cumsum(labels, 0)[last]
    precision = torch.cat(
        [torch.ones(1, dtype=torch.float64), tps / torch.cumsum(torch.ones_like(labels), 0)[last]]
    )
    recall = torch.cat([torch.zeros(1, dtype=torch.float64), tps / tps[-1]])
    return float(torch.sum(torch.diff(recall) * (precision[1:] + precision[:-1]) / 2.0))


def fpr_at_tpr(positive: Tensor, negative: Tensor, tpr: float = 0.95) -> float:
    """FPR at the first (highest) threshold whose TPR reaches ``tpr``."""
    fprs, tprs, _ = roc_curve(positive, negative)
    return float(fprs[np.argmax(tprs >= tpr - 1e-12)])


def tpr_at_fpr(
    positive: Tensor, negative: Tensor, grid: Sequence[float] = ROC_FPR_GRID
) -> list[float]:
    """The ROC curve read at the false-positive rates ``grid`` (linear between its points)."""
    fprs, tprs, _ = roc_curve(positive, negative)
    out = []
    for x in grid:
        # the last point at or left of x: at a vertical step, the highest TPR of that FPR
        i = int(np.searchsorted(fprs, x, side="right")) - 1
        if fprs[i] == x or i == len(fprs) - 1:
            out.append(float(tprs[i]))
        else:  # linear between the points either side
            w = (x - fprs[i]) / (fprs[i + 1] - fprs[i])
            out.append(float(tprs[i] + w * (tprs[i + 1] - tprs[i])))
    return out


def openood_metrics(id_scores: Tensor, ood_scores: Tensor) -> dict[str, float]:
    """OpenOOD's AUPR-in, AUPR-out (trapezoids) and FPR@95 (OOD positive, share of the
    in-distribution samples flagged when 95% of the OOD samples are)."""
    return {
        "openood_aupr_in": pr_curve_area(id_scores, ood_scores),
        "openood_aupr_out": pr_curve_area(-ood_scores, -id_scores),
        "openood_fpr95": fpr_at_tpr(-ood_scores, -id_scores, 0.95),
    }


def detection_metrics(id_scores: Tensor, ood_scores: Tensor) -> dict[str, float]:
    """AUROC, AUPR-in, AUPR-out and FPR@95%TPR, in-distribution positive, and OpenOOD's
    convention beside them (:func:`openood_metrics`)."""
    return {
        "auroc": roc_auc(id_scores, ood_scores),
        "aupr_in": average_precision(id_scores, ood_scores),
        "aupr_out": average_precision(-ood_scores, -id_scores),
        "fpr95": fpr_at_tpr(id_scores, ood_scores, 0.95),
        **openood_metrics(id_scores, ood_scores),
    }
