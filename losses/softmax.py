"""Softmax cross-entropy on a learned linear head, plain and with label smoothing."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from podbench.errors import UserError
from podbench.losses.base import LossOutput, LossPlugin, check_number
from podbench.losses.registry import register_loss

__all__ = ["LabelSmoothingLoss", "SoftmaxLoss"]


@register_loss(
    "softmax",
    description="cross-entropy on a learned linear classifier (W x + b; bias: false for W x)",
    reference="the standard softmax classifier",
)
class SoftmaxLoss(LossPlugin):
    """Cross-entropy of a linear head; the baseline every ratio is measured against."""

    def __init__(self, num_classes: int, feat_dim: int, *, bias: bool = True) -> None:
        super().__init__(num_classes, feat_dim)
        if not isinstance(bias, bool):
            raise UserError(f"{type(self).__name__}: bias={bias!r} is invalid; give true or false.")
        # bias: false is airbench94's classifier (W x, on its features scaled by 1/9)
        self.head = nn.Linear(feat_dim, num_classes, bias=bias)

    def compute_loss(self, features: Tensor, targets: Tensor) -> LossOutput:
        ce = F.cross_entropy(self.head(features), targets)
        return LossOutput(total=ce, parts={"ce": ce})

    def scores(self, features: Tensor) -> Tensor:
        return self.head(features)

    def centroids_for_geometry(self) -> Tensor:
        return self.head.weight


@register_loss(
    "label-smoothing",
    description="cross-entropy with targets smoothed towards the uniform distribution",
    reference="Szegedy et al., 'Rethinking the Inception Architecture', CVPR 2016",
    search_space={"epsilon": {"type": "float", "low": 0.01, "high": 0.3}},
    variants={"eps-0.05": {"epsilon": 0.05}, "eps-0.2": {"epsilon": 0.2}},
)
class LabelSmoothingLoss(SoftmaxLoss):
    """Cross-entropy against (1 - epsilon) one-hot + epsilon / K uniform targets."""

    def __init__(
        self, num_classes: int, feat_dim: int, *, epsilon: float = 0.1, bias: bool = True
    ) -> None:
        super().__init__(num_classes, feat_dim, bias=bias)
        self.epsilon = check_number("label-smoothing", "epsilon", epsilon)
        if self.epsilon >= 1.0:
            raise UserError(
                f"label-smoothing: epsilon={epsilon!r} is invalid; give 0 <= epsilon < 1."
            )

    def compute_loss(self, features: Tensor, targets: Tensor) -> LossOutput:
        ce = F.cross_entropy(self.head(features), targets, label_smoothing=self.epsilon)
        return LossOutput(total=ce, parts={"ce": ce})
