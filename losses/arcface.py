"""ArcFace (Deng et al. 2019): CE with s cos(theta_y + m) for the target class.

When theta_y + m > pi the target logit is no longer monotone in theta; as in the authors'
implementation it falls back to cos(theta_y) - m sin(m) there (``easy_margin`` False).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from podbench.errors import UserError
from podbench.losses.base import LossOutput, check_number
from podbench.losses.cosface import NormalizedHead
from podbench.losses.registry import register_loss

__all__ = ["ArcFaceLoss", "arc_margin"]


def arc_margin(cos: Tensor, m: float) -> Tensor:
    """cos(theta + m) where theta + m <= pi, else the authors' linear fallback."""
    cos = cos.clamp(-1.0 + 1e-7, 1.0 - 1e-7)  # keeps sqrt's gradient finite at |cos| = 1
    sin = (1.0 - cos.square()).sqrt()
    shifted = cos * math.cos(m) - sin * math.sin(m)
    return torch.where(cos > math.cos(math.pi - m), shifted, cos - math.sin(math.pi - m) * m)


@register_loss(
    "arcface",
    description="ArcFace: additive angular margin on normalised features and weights",
    reference="Deng, Guo, Xue, Zafeiriou, 'ArcFace: Additive Angular Margin Loss for Deep Face "
    "Recognition', CVPR 2019",
    search_space={
        "s": {"type": "float", "low": 8.0, "high": 64.0, "log": True},
        "m": {"type": "float", "low": 0.1, "high": 0.7},
    },
    variants={"small-data": {"s": 30.0}, "m0.3": {"m": 0.3}},
)
class ArcFaceLoss(NormalizedHead):
    """Args: num_classes K, feat_dim d, scale s (64; 30 on small data), angular margin m (0.5)."""

    def __init__(self, num_classes: int, feat_dim: int, *, s: float = 64.0, m: float = 0.5) -> None:
        super().__init__(num_classes, feat_dim)
        self.s = check_number("arcface", "s", s, strict=True)
        self.m = check_number("arcface", "m", m)
        if self.m >= math.pi / 2:
            raise UserError(f"arcface: m={m!r} is invalid; give an angle in radians below pi/2.")

    def compute_loss(self, features: Tensor, targets: Tensor) -> LossOutput:
        cos = self.cosines(features)
        target = arc_margin(cos.gather(1, targets[:, None]), self.m)
        logits = cos.scatter(1, targets[:, None], target)
        ce = F.cross_entropy(self.s * logits, targets)
        return LossOutput(total=ce, parts={"ce": ce})
