"""POD Loss (Zhu & Zu, IEEE TCSVT 2022): norm-adaptive cosine + sample-correlation terms.

Definitions as read off the authors' code (``../shared/docs/LOSSES.md``), in our notation:

- NaC: mean_i (1 - <x_i, c_{y_i}> / sqrt(||x_i||^2 + delta^2))^2 on the raw feature x.
- SC: z_i = x_i/||x_i|| - c_{y_i}; S = Z^T Z / (B - 1); sum of the squared off-diagonal
  entries of S over d - 1. Computed through the B x B Gram matrix when B < d, since
  ||Z^T Z||_F = ||Z Z^T||_F, so the d x d matrix is never formed.
- delta schedule ``official``: 0.05 in the first epoch, then alpha (e + 1) m_e after epoch e, with
  m_e the mean over the epoch's training samples of ||x C^T||; ``mean-norm``: m_e; ``constant``:
  ``delta_init`` throughout; ``none``: delta = 0, the normalised first published version.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from podbench.errors import UserError
from podbench.losses.base import LossOutput, LossPlugin, check_number
from podbench.losses.pedcc import CENTROID_CHOICES, make_centroids
from podbench.losses.registry import register_loss

__all__ = ["DELTA_SCHEDULES", "PODLoss", "gram_blocks", "pod_terms", "seed_from_torch"]

DELTA_SCHEDULES = ("official", "mean-norm", "constant", "none")


def seed_from_torch() -> int:
    """A seed drawn from torch's global generator, so the run's seed fixes the centroids."""
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def gram_blocks(n: int, device_type: str) -> int:
    """Row blocks of the Gram matrix of an (n, .) matrix: up to 4 on the CPU, 1 elsewhere.

    Blocks save multiply-adds on a CPU, which is bound by them; on a GPU the small matmuls
    would cost more in launches and occupancy than the third they save.
    """
    return min(4, n // 64) if device_type == "cpu" else 1


def _symmetric_gram(m: Tensor, blocks: int | None = None) -> tuple[Tensor, Tensor]:
    """(M M^T, ||M M^T||_F^2) computing only the upper row blocks of the symmetric Gram matrix.

    With M cut into q row blocks, q (q + 1) / 2 of the q^2 block products are needed: for
    q = 4, 10 of 16 (a third fewer multiply-adds than ``M @ M.T``). ``blocks``: q (default
    :func:`gram_blocks`); below 2, one matmul.
    """
    q = gram_blocks(m.shape[0], m.device.type) if blocks is None else blocks
    if q < 2:
        gram = m @ m.T
        return gram, gram.square().sum()
    pieces = m.tensor_split(q)
    rows: list[list[Tensor]] = [[m.new_empty(0)] * q for _ in range(q)]
    for i in range(q):
        for j in range(i, q):
            rows[i][j] = pieces[i] @ pieces[j].T
            rows[j][i] = rows[i][j].T
    gram = torch.cat([torch.cat(r, dim=1) for r in rows], dim=0)
    return gram, gram.square().sum()


class _PODTerms(torch.autograd.Function):
    """POD's NaC and SC terms in one pass, with a hand-written backward.

    Autograd of the plain formulas spends about twenty passes over the (B, d) features and two
    matmuls on the backward of the Gram matrix; the gradients written out need eight passes and
    one matmul (d SC / d Z = 4 (Z Z^T Z - Z diag(S_pp)) / ((B-1)^2 (d-1))). A test checks them
    against autograd of the plain formulas.
    """

    # written in the setup_context style, with a generated vmap rule, so that stacked seeds
    # (torch.func.vmap, podbench.stacked) can train POD: the saved intermediates are outputs
    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, own: Tensor, delta_sq: Tensor, dot: Tensor | None) -> tuple[Tensor, ...]:
        b, d = x.shape
        norm = torch.linalg.vector_norm(x, dim=1)
        inv_norm = 1.0 / norm.clamp_min(1e-12)  # as F.normalize
        # a given dot is saved as an output: a view, as setup_context requires
        dot = torch.linalg.vecdot(x, own) if dot is None else dot.view_as(dot)
        # sqrt(||x||^2 + delta^2): the norm of [x, delta]; clamped for delta = 0 and x = 0
        r = (norm.square() + delta_sq).sqrt().clamp_min(1e-12)
        err = 1.0 - dot / r
        nac = err.square().mean()
        xh = x * inv_norm[:, None]
        z = xh - own
        scale = 1.0 / (max(b - 1, 1) ** 2 * max(d - 1, 1))
        wide = b < d  # the smaller Gram matrix: ||Z Z^T||_F = ||Z^T Z||_F
        gram, frob_sq = _symmetric_gram(z if wide else z.T)
        col_sq = (z * z).sum(dim=0)  # (B - 1) S_pp; 10x faster than vector_norm over dim 0
        sc = (frob_sq - col_sq.square().sum()) * scale if d > 1 else x.new_zeros(())
        return nac, sc, xh, z, inv_norm, r, dot, err, gram, col_sq

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        x, own = inputs[0], inputs[1]
        saved = output[2:]
        ctx.mark_non_differentiable(*saved)
        ctx.save_for_backward(x, own, *saved)
        b, d = x.shape
        ctx.wide, ctx.scale = b < d, 1.0 / (max(b - 1, 1) ** 2 * max(d - 1, 1))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: Any, g_nac: Tensor, g_sc: Tensor, *_: Tensor
    ) -> tuple[Tensor, None, None, None]:
        x, own, xh, z, inv_norm, r, dot, err, gram, col_sq = ctx.saved_tensors
        b, d = x.shape
        # NaC: d/dx_i (1 - <x_i, c_i> / r_i)^2 / B = -(2 e_i / B) (c_i / r_i - <x_i, c_i> x_i / r_i^3)
        coef = (-2.0 / b) * g_nac * err / r
        grad = own * coef[:, None]
        grad.addcmul_(x, (-coef * dot / r.square())[:, None])
        if d > 1:
            gz = gram @ z if ctx.wide else z @ gram
            gz.addcmul_(z, col_sq[None, :], value=-1.0)  # 4 scale (Z Z^T Z - Z diag(S_pp)) below
            # through z = x / ||x|| - c: (g - x_hat <x_hat, g>) / ||x||
            gz.addcmul_(xh, torch.linalg.vecdot(xh, gz)[:, None], value=-1.0)
            grad.addcmul_(gz, ((4.0 * ctx.scale) * g_sc * inv_norm)[:, None])
        return grad, None, None, None


def pod_terms(
    features: Tensor, own: Tensor, delta: Tensor | float, dot: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """POD's (NaC, SC) of features (B, d) given each sample's own centroid (B, d) and delta.

    ``dot``: the precomputed <x_i, c_{y_i}> (B,), when the caller has the scores x C^T anyway.
    """
    delta_sq = torch.as_tensor(delta, dtype=features.dtype, device=features.device).square()
    dot = None if dot is None else dot.detach()
    nac, sc, *_ = _PODTerms.apply(features, own.detach(), delta_sq, dot)
    return nac, sc


@register_loss(
    "pod",
    description="POD Loss: norm-adaptive cosine to fixed PEDCC centroids + sample decorrelation",
    reference="Zhu & Zu, POD Loss, IEEE Transactions on Circuits and Systems for Video "
    "Technology (TCSVT) 2022; code TianYuZu/POD-Loss",
    search_space={
        "nac_weight": {"type": "float", "low": 0.1, "high": 10.0, "log": True},
        "sc_weight": {"type": "float", "low": 0.01, "high": 10.0, "log": True},
        "alpha": {"type": "float", "low": 0.001, "high": 0.1, "log": True},
        "delta_schedule": {"type": "categorical", "choices": list(DELTA_SCHEDULES)},
        "centroids": {"type": "categorical", "choices": list(CENTROID_CHOICES)},
    },
    variants={
        "no-nac": {"nac_weight": 0.0},
        "no-sc": {"sc_weight": 0.0},
        "sc-0.5": {"sc_weight": 0.5},
        "sc-2": {"sc_weight": 2.0},
        "delta-mean-norm": {"delta_schedule": "mean-norm"},
        "delta-constant": {"delta_schedule": "constant"},
        "delta-none": {"delta_schedule": "none"},
        "charge-centroids": {"centroids": "charge"},
        "random-centroids": {"centroids": "random"},
    },
    fixed_centroids=True,
    learnable_head=False,
)
class PODLoss(LossPlugin):
    """POD Loss on fixed unit-norm centroids; predicts the class of largest cosine.

    Args:
        num_classes: K.
        feat_dim: d.
        nac_weight: weight of the NaC term (authors: 1).
        sc_weight: weight of the SC term (authors: 1).
        delta_schedule: ``official``, ``mean-norm``, ``constant`` or ``none``.
        alpha: the official schedule's factor (authors: 0.01).
        delta_init: delta in the first epoch, and throughout for ``constant`` (authors: 0.05).
        centroids: ``simplex``, ``charge``, ``random`` or the path of a centroid file.
        centroid_seed: seed of the generated centroids; None draws it from torch's generator.
    """

    centroids: Tensor
    delta_t: Tensor
    score_norm_sum: Tensor
    score_norm_count: Tensor

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        *,
        nac_weight: float = 1.0,
        sc_weight: float = 1.0,
        delta_schedule: str = "official",
        alpha: float = 0.01,
        delta_init: float = 0.05,
        centroids: str = "simplex",
        centroid_seed: int | None = None,
    ) -> None:
        super().__init__(num_classes, feat_dim)
        self.nac_weight = check_number("pod", "nac_weight", nac_weight)
        self.sc_weight = check_number("pod", "sc_weight", sc_weight)
        self.alpha = check_number("pod", "alpha", alpha, strict=True)
        delta_init = check_number("pod", "delta_init", delta_init)
        if delta_schedule not in DELTA_SCHEDULES:
            raise UserError(
                f"pod: delta_schedule={delta_schedule!r} is invalid; use one of "
                f"{', '.join(DELTA_SCHEDULES)}."
            )
        self.delta_schedule = delta_schedule
        seed = seed_from_torch() if centroid_seed is None else int(centroid_seed)
        cents = make_centroids(centroids, num_classes, feat_dim, seed)
        self.register_buffer("centroids", cents.to(torch.float32))
        start = 0.0 if delta_schedule == "none" else delta_init
        self.register_buffer("delta_t", torch.tensor(start, dtype=torch.float64))
        # Running sum and count of ||x C^T|| over the epoch's training samples (delta schedule).
        self.register_buffer("score_norm_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("score_norm_count", torch.zeros((), dtype=torch.float64))

    @property
    def delta(self) -> float:
        """The current delta of the NaC term."""
        return float(self.delta_t)

    def compute_loss(self, features: Tensor, targets: Tensor) -> LossOutput:
        cents = self.centroids
        own = cents.index_select(0, targets)  # (B, d) own centroids; 4x faster than cents[targets]
        dot = None
        if self.training and self.delta_schedule in ("official", "mean-norm"):
            with torch.no_grad():
                scores = features @ cents.T  # the delta statistic needs all of x C^T
                self.score_norm_sum += torch.linalg.vector_norm(scores, dim=1).sum().double()
                self.score_norm_count += features.shape[0]
                dot = scores.gather(1, targets[:, None]).squeeze(1)
        nac, sc = pod_terms(features, own, self.delta_t, dot)
        total = self.nac_weight * nac + self.sc_weight * sc
        return LossOutput(total=total, parts={"nac": nac, "sc": sc})

    def scores(self, features: Tensor) -> Tensor:
        return self.classified_features(features) @ self.centroids.T

    def classified_features(self, features: Tensor) -> Tensor:
        return F.normalize(features, dim=1)

    def on_epoch_start(self, epoch: int) -> None:
        self.score_norm_sum.zero_()
        self.score_norm_count.zero_()

    def on_epoch_end(self, epoch: int) -> None:
        count = float(self.score_norm_count)
        if count > 0 and self.delta_schedule in ("official", "mean-norm"):
            mean_norm = float(self.score_norm_sum) / count
            factor = self.alpha * (epoch + 1) if self.delta_schedule == "official" else 1.0
            self.delta_t.fill_(factor * mean_norm)
        self.score_norm_sum.zero_()
        self.score_norm_count.zero_()

    def epoch_state(self) -> dict[str, float]:
        return {"delta": self.delta}

    def centroids_for_geometry(self) -> Tensor:
        return self.centroids

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, nac_weight={self.nac_weight}, sc_weight={self.sc_weight}, "
            f"delta_schedule={self.delta_schedule!r}"
        )
