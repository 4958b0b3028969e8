"""Complement Objective Training (Chen et al. 2019): two updates per batch.

Update 0 minimises cross-entropy; update 1 maximises the complement entropy H_i, the entropy of
the predicted distribution over sample i's non-target classes (renormalised). How that entropy
is scaled is the hyperparameter ``complement_norm``:

- ``released`` (default): the authors' released code (henry8527/COT, ``ComplementEntropy``)
  sums the complement entropies of the batch and divides by B * K, i.e. mean_i H_i / K;
- ``log``: mean_i H_i / log(K - 1), which lies in [0, 1] (the normalisation of an earlier
  podbench and of the shared LOSSES.md wording); K / ln(K - 1) times stronger than ``released``
  (4.6 times at K = 10, 21.8 at K = 100). The variant ``log-norm`` selects it.

The released code guards against log 0 and 0/0 with 1e-10 and 1e-7; here the entropy is
computed in log space, which needs no guard and gives the exact value those guards approximate.
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

__all__ = ["COMPLEMENT_NORMS", "COTLoss", "complement_entropy"]

COMPLEMENT_NORMS = ("released", "log")


def complement_entropy(logits: Tensor, targets: Tensor, norm: str = "released") -> Tensor:
    """The complement entropy update 1 maximises: mean_i H_i / K (released) or / log(K - 1)."""
    b, k = logits.shape
    # Drop the target column by gather (no -inf: 0 * log 0 would make the gradient NaN; no
    # boolean indexing: it would sync the device).
    cols = torch.arange(k - 1, device=logits.device).expand(b, k - 1)
    others = logits.gather(1, cols + (cols >= targets[:, None]).long())
    log_q = torch.log_softmax(others, dim=1)
    entropy = -(log_q.exp() * log_q).sum(dim=1).mean()
    if norm == "released":
        return entropy / k
    return entropy / math.log(k - 1) if k > 2 else entropy  # K = 2: H = 0 for every sample


@register_loss(
    "cot",
    description="Complement Objective Training: a CE update, then a complement-entropy update",
    reference="Chen et al., 'Complement Objective Training', ICLR 2019; code henry8527/COT",
    search_space={"complement_norm": {"type": "categorical", "choices": list(COMPLEMENT_NORMS)}},
    variants={"log-norm": {"complement_norm": "log"}},
)
class COTLoss(SoftmaxLoss):
    """Linear head; ``forward`` reports CE (total) and the scaled complement entropy (a part).

    Args:
        num_classes: K.
        feat_dim: d.
        complement_norm: ``released`` (sum over the batch / (B K), the authors' code) or
            ``log`` (batch mean / log(K - 1)).
    """

    updates_per_batch: ClassVar[int] = 2

    def __init__(
        self, num_classes: int, feat_dim: int, *, complement_norm: str = "released"
    ) -> None:
        super().__init__(num_classes, feat_dim)
        if complement_norm not in COMPLEMENT_NORMS:
            raise UserError(
                f"cot: complement_norm={complement_norm!r} is invalid; use one of "
                f"{', '.join(COMPLEMENT_NORMS)}."
            )
        self.complement_norm = complement_norm

    def compute_loss(self, features: Tensor, targets: Tensor) -> LossOutput:
        logits = self.head(features)
        ce = F.cross_entropy(logits, targets)
        comp = complement_entropy(logits, targets, self.complement_norm)
        return LossOutput(total=ce, parts={"ce": ce, "complement_entropy": comp})

    def update_loss(self, features: Tensor, targets: Tensor, step: int) -> LossOutput:
        if step == 0:
            return self(features, targets)
        if step != 1:
            raise UserError(f"cot: update step {step} does not exist; cot has steps 0 and 1.")
        if self.validate_inputs:
            self.check_inputs(features, targets)
        with torch.autocast(device_type=features.device.type, enabled=False):
            logits = self.head(features.float())
            comp = complement_entropy(logits, targets.long(), self.complement_norm)
        return LossOutput(total=-comp, parts={"complement_entropy": comp})
