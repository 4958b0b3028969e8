"""``podbench.losses``: the loss plugin registry and the built-in losses.

Example:
    >>> import torch
    >>> from podbench.losses import create_loss, list_losses
    >>> loss = create_loss("pod", num_classes=10, feat_dim=16, centroid_seed=0)
    >>> out = loss(torch.randn(32, 16), torch.randint(0, 10, (32,)))
    >>> sorted(out.parts)
    ['nac', 'sc']
"""

from __future__ import annotations

from podbench.losses.base import LossOutput, LossPlugin, NonFiniteFeaturesError, check_number
from podbench.losses.registry import (
    ENTRY_POINT_GROUP,
    LOSSES,
    LossInfo,
    create_loss,
    list_losses,
    load_entry_points,
    loss_info,
    register_loss,
)

# Importing the built-in modules registers their losses.
from podbench.losses import (  # noqa: E402,F401  isort: skip
    arcface,
    center,
    cosface,
    cot,
    large_margin,
    pedcc_loss,
    pml,
    pod,
    softmax,
)

# pytorch-metric-learning's losses as "pml:<Name>", found in the installed library (extra [pml])
LOSSES.serve_prefix(pml.PREFIX, pml.resolve, pml.names)

__all__ = [
    "ENTRY_POINT_GROUP",
    "LOSSES",
    "LossInfo",
    "LossOutput",
    "LossPlugin",
    "NonFiniteFeaturesError",
    "check_number",
    "create_loss",
    "list_losses",
    "load_entry_points",
    "loss_info",
    "register_loss",
]
