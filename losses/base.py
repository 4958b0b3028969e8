"""The loss plugin contract: :class:`LossPlugin` and :class:`LossOutput`.

A plugin implements two methods, :meth:`LossPlugin.compute_loss` and :meth:`LossPlugin.scores`;
the base class checks the inputs, turns off autocast (losses are computed in float32) and offers
the hooks the engine calls around each epoch.

Example:
    >>> import torch
    >>> from podbench.losses import create_loss
    >>> loss = create_loss("softmax", num_classes=3, feat_dim=4)
    >>> out = loss(torch.randn(8, 4), torch.randint(0, 3, (8,)))
    >>> sorted(out.parts)
    ['ce']
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from podbench.errors import UserError

__all__ = ["LossOutput", "LossPlugin", "NonFiniteFeaturesError", "check_number"]


class NonFiniteFeaturesError(FloatingPointError):
    """Features given to a loss contain NaN or Inf: the network has diverged.

    Not a :class:`~podbench.errors.UserError`: the engine records such a run as ``diverged``.
    """


@dataclass(frozen=True)
class LossOutput:
    """What a loss returns: the scalar to backpropagate and its named terms."""

    total: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)


class LossPlugin(nn.Module, ABC):
    """Base class of every loss: a classifier head plus the objective that trains it.

    Subclasses implement :meth:`compute_loss` (features, targets -> :class:`LossOutput`) and
    :meth:`scores` (features -> (B, K) class scores). Head parameters are ordinary module
    parameters (trained with the network); fixed centroids are buffers.

    Args:
        num_classes: K, the number of classes (at least 2).
        feat_dim: d, the latent dimension of the features the network outputs.
    """

    #: The registered name (set by :func:`~podbench.losses.register_loss`).
    loss_name: ClassVar[str] = ""
    #: Optimiser updates per batch; the engine calls :meth:`update_loss` with step 0..n-1.
    updates_per_batch: ClassVar[int] = 1
    #: Check shapes, label range and finiteness on every call (one device sync per batch).
    validate_inputs: ClassVar[bool] = True
    #: Whether those checks include the values (finite features, labels in range), which read
    #: the device: one host sync per call. The engine turns them off after the run's first
    #: batch and watches the loss on the device instead; shapes and dtypes are always checked.
    check_values: bool = True
    #: Learning-rate multiplier of the plugin's own parameters (proxy losses train their proxies
    #: faster than the network: ProxyAnchor's authors use 100); see :meth:`param_groups`.
    head_lr_scale: float = 1.0

    def __init__(self, num_classes: int, feat_dim: int, **hparams: Any) -> None:
        super().__init__()
        if hparams:
            names = ", ".join(sorted(hparams))
            raise UserError(
                f"{type(self).__name__} got unknown hyperparameters {names}; "
                "remove them or declare them in the plugin's __init__."
            )
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise UserError(f"num_classes={num_classes!r} is invalid; give an integer >= 2.")
        if isinstance(feat_dim, bool) or not isinstance(feat_dim, int) or feat_dim < 1:
            raise UserError(f"feat_dim={feat_dim!r} is invalid; give an integer >= 1.")
        self.num_classes = num_classes
        self.feat_dim = feat_dim

    # -- what a plugin implements -------------------------------------------------------------

    @abstractmethod
    def compute_loss(self, features: Tensor, targets: Tensor) -> LossOutput:
        """The training objective on checked float32 features (B, d) and int64 targets (B,)."""

    @abstractmethod
    def scores(self, features: Tensor) -> Tensor:
        """(B, K) class scores on checked float32 features; argmax is the predicted class.

        Changes no buffer and no parameter, in training or eval mode: the engine calls it on
        every training batch for the training accuracy.
        """

    # -- what the engine calls ----------------------------------------------------------------

    def forward(self, features: Tensor, targets: Tensor) -> LossOutput:  # type: ignore[override]
        """Check the inputs and compute the loss in float32, outside autocast."""
        if self.validate_inputs:
            self.check_inputs(features, targets)
        # Losses (norms, margins, exp) need float32 even when the network runs in bf16/fp16.
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self.compute_loss(features.float(), targets.long())

    def predict(self, features: Tensor) -> Tensor:
        """(B, K) class scores whose argmax is the predicted class."""
        if self.validate_inputs:
            self.check_features(features)
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self.scores(features.float())

    def update_loss(self, features: Tensor, targets: Tensor, step: int) -> LossOutput:
        """The loss of update ``step`` (0..updates_per_batch-1) of a batch; default: forward."""
        return self(features, targets)

    def on_epoch_start(self, epoch: int) -> None:
        """Called by the engine before training epoch ``epoch`` (counted from 0)."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called by the engine after training epoch ``epoch`` (counted from 0)."""

    def classified_features(self, features: Tensor) -> Tensor:
        """The (B, d) features that :meth:`scores` classifies; default: the features themselves.

        A cosine classifier returns x / ||x||, PEDCC-Loss BN(x) / ||BN(x)||. The latent-geometry
        statistics are measured on these. Like ``scores``, it changes no state.
        """
        return features

    def centroids_for_geometry(self) -> Tensor | None:
        """(K, d) class centres: fixed centroids, learned class weights or centres, else None."""
        return None

    def epoch_state(self) -> dict[str, float]:
        """Scalars of the loss's own state worth plotting per epoch (POD: delta); default none."""
        return {}

    def param_groups(self, network: list[nn.Parameter], lr: float) -> list[dict[str, Any]]:
        """The optimiser's parameter groups: the network's and the plugin's trainable parameters.

        One group at ``lr`` unless :attr:`head_lr_scale` differs from 1: then the plugin's own
        parameters form a second group at ``lr * head_lr_scale``.
        """
        own = [p for p in self.parameters() if p.requires_grad]
        network = [p for p in network if p.requires_grad]
        if self.head_lr_scale == 1.0 or not own:
            return [{"params": network + own, "lr": lr}]
        return [{"params": network, "lr": lr}, {"params": own, "lr": lr * self.head_lr_scale}]

    # -- input checks -------------------------------------------------------------------------

    def check_features(self, features: Tensor) -> None:
        """Raise a one-sentence error when features are not a finite (B, d) float tensor."""
        self._check_feature_shape(features)
        if (
            self.check_values
            and not math.isfinite(float(features.detach().sum()))
            and not bool(torch.isfinite(features).all())
        ):
            self._raise_non_finite(features)

    def check_inputs(self, features: Tensor, targets: Tensor) -> None:
        """Raise a one-sentence error for a wrong shape, dtype, label range or non-finite input."""
        name = type(self).__name__
        self._check_feature_shape(features)
        if not isinstance(targets, Tensor) or targets.dim() != 1:
            shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
            raise UserError(
                f"{name}: targets have shape {shape} but must be a 1-D tensor of class "
                "indices; pass labels of shape (B,), not one-hot vectors."
            )
        if targets.shape[0] != features.shape[0]:
            raise UserError(
                f"{name}: {features.shape[0]} feature rows but {targets.shape[0]} targets; "
                "pass one label per sample."
            )
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise UserError(
                f"{name}: targets have dtype {targets.dtype}; pass integer class indices "
                "(torch.long)."
            )
        if not self.check_values:
            return
        # One device sync for the three value checks; a NaN or Inf anywhere makes the sum
        # non-finite (one fast pass, unlike isfinite), and overflow is told apart below.
        total, lo, hi = torch.stack(
            [features.detach().sum().double(), targets.min().double(), targets.max().double()]
        ).tolist()
        lo, hi = int(lo), int(hi)
        if not math.isfinite(total) and not bool(torch.isfinite(features).all()):
            self._raise_non_finite(features)
        if lo < 0 or hi >= self.num_classes:
            raise UserError(
                f"{name}: targets range over [{lo}, {hi}] but num_classes={self.num_classes}; "
                f"labels must lie in [0, {self.num_classes - 1}]: set num_classes to the "
                "dataset's class count."
            )

    def _check_feature_shape(self, features: Tensor) -> None:
        name = type(self).__name__
        if not isinstance(features, Tensor):
            raise UserError(
                f"{name}: features must be a torch.Tensor of shape (B, {self.feat_dim}), "
                f"got {type(features).__name__}; pass the network's output."
            )
        if features.dim() != 2 or features.shape[1] != self.feat_dim or features.shape[0] < 1:
            raise UserError(
                f"{name}: features have shape {tuple(features.shape)} but must be "
                f"(B, {self.feat_dim}) with B >= 1; make the network's projection output "
                f"feat_dim={self.feat_dim} and flatten it."
            )
        if not features.is_floating_point():
            raise UserError(
                f"{name}: features have dtype {features.dtype}; pass floating-point features."
            )

    def _raise_non_finite(self, features: Tensor) -> None:
        bad = int((~torch.isfinite(features)).any(dim=1).sum())
        raise NonFiniteFeaturesError(
            f"{type(self).__name__}: {bad} of {features.shape[0]} feature rows contain NaN or "
            "Inf; the network diverged: lower the learning rate or set grad_clip."
        )

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, feat_dim={self.feat_dim}"


def check_number(
    owner: str, name: str, value: Any, *, low: float = 0.0, strict: bool = False
) -> float:
    """``value`` as a float, or a UserError naming ``owner``'s hyperparameter ``name``."""
    # numbers.Real: numpy scalars from Optuna or YAML count too; bool does not
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise UserError(f"{owner}: {name}={value!r} is invalid; give a finite number {bound}.")
    return float(value)
