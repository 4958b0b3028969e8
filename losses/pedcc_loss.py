"""PEDCC-Loss (Zhu et al.): AM-Softmax on fixed PEDCC centroids plus a centroid MSE term.

Network side, as the authors built it: the features pass a parameter-free BatchNorm1d and an L2
normalisation (both owned here), then cos_ij = <x_hat_i, c_j>. The loss is
CE(s (cos - m [j = y])) + lam * L_MSE^n, L_MSE = sum_i ||x_hat_i - c_{y_i}||^2 (``sum``, the
authors' latest code) or its mean over B * d (``mean``, an older version). The BatchNorm's
running statistics move once per training batch, in the loss; ``predict`` in training mode uses
the batch's statistics without recording them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from podbench.errors import UserError
from podbench.losses.base import LossOutput, LossPlugin, check_number
from podbench.losses.pedcc import make_centroids
from podbench.losses.pod import seed_from_torch
from podbench.losses.registry import register_loss

__all__ = ["PEDCCLoss"]


@register_loss(
    "pedcc",
    description="PEDCC-Loss: AM-Softmax on fixed PEDCC centroids + MSE to the own centroid",
    reference="Zhu et al., 'A New Loss Function for CNN Classifier Based on Predefined "
    "Evenly-Distributed Class Centroids', IEEE Access 2019; code ZLeopard/PEDCC-Loss",
    search_space={
        "s": {"type": "float", "low": 5.0, "high": 30.0},
        "m": {"type": "float", "low": 0.1, "high": 0.6},
        "lam": {"type": "float", "low": 0.01, "high": 10.0, "log": True},
    },
    variants={
        "cifar100": {"s": 7.5, "m": 0.35},
        "no-mse": {"lam": 0.0},
        "mse-mean": {"mse_reduction": "mean"},
        "simplex-centroids": {"centroids": "simplex"},
    },
    fixed_centroids=True,
    learnable_head=False,
)
class PEDCCLoss(LossPlugin):
    """PEDCC-Loss; predicts the class of largest cosine to the fixed centroids.

    Args:
        num_classes: K.
        feat_dim: d.
        s: scale of the AM-Softmax logits (authors: 15; 7.5 for CIFAR-100).
        m: additive cosine margin (authors: 0.5; 0.35 for CIFAR-100).
        lam: weight of the MSE term (authors: 1).
        n: power of the MSE term (authors: 1).
        mse_reduction: ``sum`` over the batch (latest code) or ``mean`` over B * d.
        centroids: ``charge`` (authors), ``simplex``, ``random`` or a centroid file.
        centroid_seed: seed of generated centroids; None draws it from torch's generator.
    """

    centroids: Tensor

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        *,
        s: float = 15.0,
        m: float = 0.5,
        lam: float = 1.0,
        n: float = 1.0,
        mse_reduction: str = "sum",
        centroids: str = "charge",
        centroid_seed: int | None = None,
    ) -> None:
        super().__init__(num_classes, feat_dim)
        self.s = check_number("pedcc", "s", s, strict=True)
        self.m = check_number("pedcc", "m", m)
        self.lam = check_number("pedcc", "lam", lam)
        self.n = check_number("pedcc", "n", n, strict=True)
        if mse_reduction not in ("sum", "mean"):
            raise UserError(f"pedcc: mse_reduction={mse_reduction!r} is invalid; use sum or mean.")
        self.mse_reduction = mse_reduction
        seed = seed_from_torch() if centroid_seed is None else int(centroid_seed)
        cents = make_centroids(centroids, num_classes, feat_dim, seed)
        self.register_buffer("centroids", cents.float())
        self.bn = nn.BatchNorm1d(feat_dim, affine=False)

    def _normalised(self, features: Tensor, *, update_stats: bool) -> Tensor:
        """BN(x) / ||BN(x)||; running statistics move only when ``update_stats`` (the loss)."""
        if self.training and features.shape[0] > 1:
            if update_stats:
                out = self.bn(features)
            else:  # batch statistics as in training, running ones untouched (predict is pure)
                out = F.batch_norm(features, None, None, training=True, eps=self.bn.eps)
        else:  # one sample has no batch statistics: use the running ones
            out = F.batch_norm(features, self.bn.running_mean, self.bn.running_var, eps=self.bn.eps)
        return F.normalize(out, dim=1)

    def compute_loss(self, features: Tensor, targets: Tensor) -> LossOutput:
        xh = self._normalised(features, update_stats=True)
        cos = (xh @ self.centroids.T).clamp(-1.0, 1.0)
        # m at each target, 0 elsewhere; scatter, as one_hot reads the labels back on a CPU
        margin = torch.zeros_like(cos).scatter_(1, targets[:, None], self.m)
        am = F.cross_entropy(self.s * (cos - margin), targets)
        sq = (xh - self.centroids[targets]).square()
        mse = sq.sum() if self.mse_reduction == "sum" else sq.mean()
        total = am + self.lam * mse.pow(self.n) if self.lam else am
        return LossOutput(total=total, parts={"am": am, "mse": mse})

    def scores(self, features: Tensor) -> Tensor:
        return self.classified_features(features) @ self.centroids.T

    def classified_features(self, features: Tensor) -> Tensor:
        return self._normalised(features, update_stats=False)

    def centroids_for_geometry(self) -> Tensor:
        return self.centroids
