"""The plugin's own tests: podbench's conformance kit, and the formula at a worked point."""

from __future__ import annotations

import math

import pytest
import torch

from podbench.losses import create_loss, list_losses
from podbench.losses.testing import CHECKS


def test_focal_is_registered_through_the_entry_point():
    assert "focal" in list_losses()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_focal_conforms(check):
    check("focal")


def test_focal_at_a_worked_point():
    loss = create_loss("focal", num_classes=2, feat_dim=1, gamma=2.0)
    with torch.no_grad():
        loss.head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        loss.head.bias.zero_()
    # logits (1, -1): p = 1 / (1 + e^-2); loss = -(1 - p)^2 log p
    p = 1.0 / (1.0 + math.exp(-2.0))
    out = loss(torch.tensor([[1.0]]), torch.tensor([0]))
    assert out.total.item() == pytest.approx(-((1 - p) ** 2) * math.log(p), rel=1e-5)
