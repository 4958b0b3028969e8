"""Focal loss (Lin et al. 2017) as a podbench loss plugin."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from podbench.losses import LossOutput, LossPlugin, check_number, register_loss


@register_loss(
    "focal",
    description="focal loss: cross-entropy down-weighting well-classified samples",
    reference="Lin, Goyal, Girshick, He, Dollar, 'Focal Loss for Dense Object Detection', ICCV 2017",
    search_space={"gamma": {"type": "float", "low": 0.0, "high": 5.0}},
    variants={"gamma-1": {"gamma": 1.0}, "ce": {"gamma": 0.0}},
)
class FocalLoss(LossPlugin):
    """mean_i -(1 - p_i)^gamma log p_i, p_i the softmax probability of the true class."""

    def __init__(self, num_classes: int, feat_dim: int, *, gamma: float = 2.0) -> None:
        super().__init__(num_classes, feat_dim)
        self.gamma = check_number("focal", "gamma", gamma)
        self.head = nn.Linear(feat_dim, num_classes)  # trained with the network

    def compute_loss(self, features: Tensor, targets: Tensor) -> LossOutput:
        log_p = F.log_softmax(self.head(features), dim=1).gather(1, targets[:, None]).squeeze(1)
        focal = (-(1.0 - log_p.exp()).pow(self.gamma) * log_p).mean()
        return LossOutput(total=focal, parts={"focal": focal})

    def scores(self, features: Tensor) -> Tensor:
        return self.head(features)

    def centroids_for_geometry(self) -> Tensor:
        return self.head.weight
