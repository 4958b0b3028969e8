"""Center loss (Wen et al. 2016): softmax CE + (lam / 2) mean_i ||x_i - c_{y_i}||^2.

The centres are not trained by the optimiser: after each training batch they move by the
authors' rule c_j <- c_j - alpha * sum_{i: y_i = j} (c_j - x_i) / (1 + n_j). They start as the
authors' Caffe prototxt fills them (``center_filler { type: "xavier" }``): Caffe's Xavier filler
on the (K, d) blob draws uniformly from [-sqrt(3 / d), sqrt(3 / d)] (fan-in d), from torch's
generator, so the run's seed fixes them. The latent geometry is read from these centres.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from podbench.losses.base import LossOutput, check_number
from podbench.losses.registry import register_loss
from podbench.losses.softmax import SoftmaxLoss

__all__ = ["CenterLoss"]


@register_loss(
    "center",
    description="softmax CE + distance to per-class centres updated with their own rate",
    reference="Wen, Zhang, Li, Qiao, 'A Discriminative Feature Learning Approach for Deep Face "
    "Recognition', ECCV 2016",
    search_space={
        "lam": {"type": "float", "low": 0.0001, "high": 0.1, "log": True},
        "alpha": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
    },
    variants={"lam-0.01": {"lam": 0.01}, "alpha-0.1": {"alpha": 0.1}},
)
class CenterLoss(SoftmaxLoss):
    """Softmax head plus learned centres; predicts argmax of W x + b.

    Args:
        num_classes: K.
        feat_dim: d.
        lam: weight of the centre term (authors: 0.003 to 0.01).
        alpha: update rate of the centres (authors: 0.5).
    """

    centers: Tensor

    def __init__(
        self, num_classes: int, feat_dim: int, *, lam: float = 0.003, alpha: float = 0.5
    ) -> None:
        super().__init__(num_classes, feat_dim)
        self.lam = check_number("center", "lam", lam)
        self.alpha = check_number("center", "alpha", alpha)
        bound = math.sqrt(3.0 / feat_dim)  # Caffe's XavierFiller, variance_norm FAN_IN
        self.register_buffer("centers", torch.empty(num_classes, feat_dim).uniform_(-bound, bound))

    def compute_loss(self, features: Tensor, targets: Tensor) -> LossOutput:
        ce = F.cross_entropy(self.head(features), targets)
        diff = features - self.centers[targets]  # indexing copies: the update below is safe
        center = 0.5 * diff.square().sum(dim=1).mean()
        if self.training:
            with torch.no_grad():
                # index_add_, not bincount: bincount's output size makes the host wait for a GPU
                counts = diff.new_zeros(self.num_classes).index_add_(
                    0, targets, diff.new_ones(targets.shape[0])
                )
                # sum_{i: y_i = j} (c_j - x_i) = -(sum of diff over class j)
                delta = torch.zeros_like(self.centers).index_add_(0, targets, -diff.detach())
                self.centers -= self.alpha * delta / (1.0 + counts[:, None])
        return LossOutput(total=ce + self.lam * center, parts={"ce": ce, "center": center})

    def centroids_for_geometry(self) -> Tensor:
        return self.centers
