"""Complement Objective Training (Chen et al. 2019): two updates per batch.

Update 0 minimises cross-entropy; update 1 maximises the complement entropy, the entropy of the
predicted distribution over the non-target classes (renormalised), averaged over the batch and
divided by log(K - 1) so that it lies in [0, 1].
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from podbench.errors import UserError
from podbench.losses.base import LossOutput
from podbench.losses.registry import register_loss
from podbench.losses.softmax import SoftmaxLoss

__all__ = ["COTLoss", "complement_entropy"]


def complement_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean normalised entropy of softmax over the non-target classes (computed in log space)."""
    b, k = logits.shape
    # Drop the target column by gather (no -inf: 0 * log 0 would make the gradient NaN; no
    # boolean indexing: it would sync the device).
    cols = torch.arange(k - 1, device=logits.device).expand(b, k - 1)
    others = logits.gather(1, cols + (cols >= targets[:, None]).long())
    log_q = torch.log_softmax(others, dim=1)
    entropy = -(log_q.exp() * log_q).sum(dim=1).mean()
    return entropy / math.log(k - 1) if k > 2 else entropy


@register_loss(
    "cot",
    description="Complement Objective Training: a CE update, then a complement-entropy update",
    reference="Chen et al., 'Complement Objective Training', ICLR 2019",
    defaults={},
)
class COTLoss(SoftmaxLoss):
    """Linear head; ``forward`` reports CE (total) and the complement entropy (a part)."""

    updates_per_batch: ClassVar[int] = 2

    def compute_loss(self, features: Tensor, targets: Tensor) -> LossOutput:
        logits = self.head(features)
        ce = F.cross_entropy(logits, targets)
        return LossOutput(
            total=ce, parts={"ce": ce, "complement_entropy": complement_entropy(logits, targets)}
        )

    def update_loss(self, features: Tensor, targets: Tensor, step: int) -> LossOutput:
        if step == 0:
            return self(features, targets)
        if step != 1:
            raise UserError(f"cot: update step {step} does not exist; cot has steps 0 and 1.")
        if self.validate_inputs:
            self.check_inputs(features, targets)
        with torch.autocast(device_type=features.device.type, enabled=False):
            comp = complement_entropy(self.head(features.float()), targets.long())
        return LossOutput(total=-comp, parts={"complement_entropy": comp})
