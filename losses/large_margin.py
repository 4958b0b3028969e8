"""L-Softmax (Liu et al. 2016) and SphereFace / A-Softmax (Liu et al. 2017).

The target logit ||W_y|| ||x|| cos(theta_y) becomes ||W_y|| ||x|| psi(theta_y) with
psi(theta) = (-1)^k cos(m theta) - 2k for theta in [k pi/m, (k+1) pi/m], annealed as
(lambda * plain + margin) / (1 + lambda) with lambda = max(lambda_min, base (1 + gamma t)^-power),
t the training iteration counted from 1 (both authors' Caffe layers add 1 to the iteration before
computing lambda). Each loss keeps its own authors' constants:

- L-Softmax (LargeMargin_Softmax_Loss, the CIFAR prototxts): base 1000, gamma 2.5e-5, power 35,
  lambda_min 0; lambda falls below 1e-7 of the plain logit within 40,000 iterations;
- SphereFace (sphereface, the face prototxt): base 1000, gamma 0.12, power 1, lambda_min 5.

SphereFace normalises W and has no bias.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from podbench.errors import UserError
from podbench.losses.base import LossOutput, LossPlugin, check_number
from podbench.losses.registry import register_loss

__all__ = ["LSoftmaxLoss", "SphereFaceLoss", "chebyshev_cos", "psi"]


def chebyshev_cos(cos: Tensor, m: int) -> Tensor:
    """cos(m theta) as a polynomial of cos(theta) (no arccos in the gradient path)."""
    prev, cur = torch.ones_like(cos), cos
    if m == 0:
        return prev
    for _ in range(m - 1):
        prev, cur = cur, 2.0 * cos * cur - prev
    return cur


def psi(cos: Tensor, m: int) -> Tensor:
    """The large-margin angle function psi(theta) of cos(theta), monotone on [0, pi]."""
    with torch.no_grad():
        k = torch.floor(m * torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi).clamp(0, m - 1)
    sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
    return sign * chebyshev_cos(cos, m) - 2.0 * k


def _check_margin(owner: str, margin: object) -> int:
    if isinstance(margin, float) and margin.is_integer():  # 4.0 from a YAML file or a sampler
        margin = int(margin)
    if isinstance(margin, bool) or not isinstance(margin, numbers.Integral) or margin < 1:
        raise UserError(
            f"{owner}: margin={margin!r} is invalid; give an integer >= 1 (1 = no margin)."
        )
    return int(margin)


_LAMBDA_BASE = {"lambda_base": {"type": "float", "low": 10.0, "high": 10000.0, "log": True}}


@register_loss(
    "l-softmax",
    description="Large-margin softmax: multiplicative angular margin on a linear head, annealed",
    reference="Liu, Wen, Yu, Yang, 'Large-Margin Softmax Loss for Convolutional Neural "
    "Networks', ICML 2016",
    search_space={
        "margin": {"type": "int", "low": 1, "high": 4},
        **_LAMBDA_BASE,
        "lambda_gamma": {"type": "float", "low": 1e-6, "high": 1e-3, "log": True},
    },
    variants={"m2": {"margin": 2}, "m3": {"margin": 3}, "no-anneal": {"lambda_base": 0.0}},
)
class LSoftmaxLoss(LossPlugin):
    """L-Softmax on a bias-free linear head; predicts argmax of W x.

    Args:
        num_classes: K.
        feat_dim: d.
        margin: integer angular margin m (the paper compares 2, 3 and 4).
        lambda_base, lambda_gamma, lambda_power, lambda_min: annealing
            lambda = max(lambda_min, lambda_base (1 + lambda_gamma t)^-lambda_power) at training
            iteration t = 1, 2, ... (the authors': 1000, 2.5e-5, 35, 0).
    """

    normalize_weight = False
    iteration: Tensor

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        *,
        margin: int = 4,
        lambda_base: float = 1000.0,
        lambda_gamma: float = 2.5e-5,
        lambda_power: float = 35.0,
        lambda_min: float = 0.0,
    ) -> None:
        super().__init__(num_classes, feat_dim)
        owner = self.loss_name
        self.margin = _check_margin(owner, margin)
        self.lambda_base = check_number(owner, "lambda_base", lambda_base)
        self.lambda_gamma = check_number(owner, "lambda_gamma", lambda_gamma)
        self.lambda_power = check_number(owner, "lambda_power", lambda_power)
        self.lambda_min = check_number(owner, "lambda_min", lambda_min)
        self.weight = nn.Parameter(torch.empty(num_classes, feat_dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's initialisation
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def _lambda(self) -> Tensor:
        # a tensor on the device: reading the iteration count would sync every batch
        t = self.iteration.to(torch.float64)
        decayed = self.lambda_base * (1.0 + self.lambda_gamma * t) ** (-self.lambda_power)
        return decayed.clamp_min(self.lambda_min).float()

    @property
    def current_lambda(self) -> float:
        """The weight of the plain logit in the latest training iteration (base before any)."""
        return float(self._lambda())

    def _weight(self) -> Tensor:
        return F.normalize(self.weight, dim=1) if self.normalize_weight else self.weight

    def compute_loss(self, features: Tensor, targets: Tensor) -> LossOutput:
        weight = self._weight()
        logits = features @ weight.T
        plain = logits.gather(1, targets[:, None]).squeeze(1)
        norms = weight.norm(dim=1)[targets] * features.norm(dim=1)
        cos = (plain / norms.clamp_min(1e-12)).clamp(-1.0, 1.0)
        if self.training:  # as the Caffe layers: count this iteration, then compute lambda
            self.iteration += 1
        lam = self._lambda()
        target = (lam * plain + norms * psi(cos, self.margin)) / (1.0 + lam)
        logits = logits.scatter(1, targets[:, None], target[:, None])
        ce = F.cross_entropy(logits, targets)
        return LossOutput(total=ce, parts={"ce": ce})

    def scores(self, features: Tensor) -> Tensor:
        return features @ self._weight().T

    def centroids_for_geometry(self) -> Tensor:
        return self.weight


@register_loss(
    "sphereface",
    description="A-Softmax: angular margin with unit-norm class weights, no bias, annealed",
    reference="Liu, Wen, Yu, Li, Raj, Song, 'SphereFace: Deep Hypersphere Embedding for Face "
    "Recognition', CVPR 2017",
    search_space={
        "margin": {"type": "int", "low": 1, "high": 4},
        **_LAMBDA_BASE,
        "lambda_gamma": {"type": "float", "low": 0.001, "high": 1.0, "log": True},
    },
    variants={"m2": {"margin": 2}, "m3": {"margin": 3}, "lambda-min-0": {"lambda_min": 0.0}},
    aliases=("a-softmax",),
)
class SphereFaceLoss(LSoftmaxLoss):
    """A-Softmax: L-Softmax with ||W_j|| = 1; predicts the class of largest cosine.

    Args:
        num_classes: K.
        feat_dim: d.
        margin: integer angular margin m (authors: 4).
        lambda_base, lambda_gamma, lambda_power, lambda_min: annealing as L-Softmax's, with the
            SphereFace authors' constants 1000, 0.12, 1, 5.
    """

    normalize_weight = True

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        *,
        margin: int = 4,
        lambda_base: float = 1000.0,
        lambda_gamma: float = 0.12,
        lambda_power: float = 1.0,
        lambda_min: float = 5.0,
    ) -> None:
        super().__init__(
            num_classes, feat_dim, margin=margin, lambda_base=lambda_base,
            lambda_gamma=lambda_gamma, lambda_power=lambda_power, lambda_min=lambda_min,
        )  # fmt: skip

    def scores(self, features: Tensor) -> Tensor:
        return self.classified_features(features) @ self._weight().T

    def classified_features(self, features: Tensor) -> Tensor:
        return F.normalize(features, dim=1)
