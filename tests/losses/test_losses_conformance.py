"""The conformance kit over every registered loss (built-ins and installed plugins)."""

from __future__ import annotations

import pytest
import torch
from podbench.losses import list_losses
from podbench.losses.testing import CHECKS


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CI machine has 2 cores shared by every test
    yield
    torch.set_num_threads(threads)


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
