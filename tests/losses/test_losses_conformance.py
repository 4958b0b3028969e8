"""The conformance kit over every registered loss (built-ins and installed plugins)."""

from __future__ import annotations

import pytest

from podbench.losses import list_losses
from podbench.losses.testing import CHECKS


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", list_losses())
def test_losses_conformance(name, check):
    check(name)


def test_losses_builtins_are_all_registered():
    expected = {
        "pod", "pedcc", "softmax", "label-smoothing", "l-softmax", "sphereface",
        "cosface", "arcface", "center", "cot",
    }  # fmt: skip
    assert expected <= set(list_losses())
