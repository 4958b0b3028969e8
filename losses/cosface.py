"""CosFace / AM-Softmax (Wang et al. 2018): CE(s (cos theta_j - m [j = y])), W and x normalised."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from podbench.losses.base import LossOutput, LossPlugin, check_number
from podbench.losses.registry import register_loss

__all__ = ["CosFaceLoss", "NormalizedHead"]


class NormalizedHead(LossPlugin):
    """Shared part of the cosine-margin losses: unit-norm class weights, cosine scores."""

    def __init__(self, num_classes: int, feat_dim: int) -> None:
        super().__init__(num_classes, feat_dim)
        self.weight = nn.Parameter(torch.empty(num_classes, feat_dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def cosines(self, features: Tensor) -> Tensor:
        """(B, K) cosines between the features and the class weights."""
        return self.classified_features(features) @ F.normalize(self.weight, dim=1).T

    def classified_features(self, features: Tensor) -> Tensor:
        return F.normalize(features, dim=1)

    def scores(self, features: Tensor) -> Tensor:
        return self.cosines(features)

    def centroids_for_geometry(self) -> Tensor:
        return F.normalize(self.weight, dim=1)


@register_loss(
    "cosface",
    description="CosFace / AM-Softmax: additive cosine margin on normalised features and weights",
    reference="Wang et al., 'CosFace: Large Margin Cosine Loss for Deep Face Recognition', "
    "CVPR 2018; Wang et al., 'Additive Margin Softmax', IEEE SPL 2018",
    search_space={
        "s": {"type": "float", "low": 8.0, "high": 64.0, "log": True},
        "m": {"type": "float", "low": 0.05, "high": 0.5},
    },
    variants={"s64": {"s": 64.0}, "m0.2": {"m": 0.2}, "no-margin": {"m": 0.0}},
    aliases=("am-softmax",),
)
class CosFaceLoss(NormalizedHead):
    """Args: num_classes K, feat_dim d, scale s (30), cosine margin m (0.35)."""

    def __init__(
        self, num_classes: int, feat_dim: int, *, s: float = 30.0, m: float = 0.35
    ) -> None:
        super().__init__(num_classes, feat_dim)
        self.s = check_number("cosface", "s", s, strict=True)
        self.m = check_number("cosface", "m", m)

    def compute_loss(self, features: Tensor, targets: Tensor) -> LossOutput:
        cos = self.cosines(features)
        # m at each target, 0 elsewhere; scatter, as one_hot reads the labels back on a CPU
        margin = torch.zeros_like(cos).scatter_(1, targets[:, None], self.m)
        ce = F.cross_entropy(self.s * (cos - margin), targets)
        return LossOutput(total=ce, parts={"ce": ce})
