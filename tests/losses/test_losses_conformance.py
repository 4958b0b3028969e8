"""The conformance kit over every registered loss (built-ins and installed plugins)."""

from __future__ import annotations

from functools import partial

import pytest

from podbench.losses import LossPlugin, create_loss, list_losses, loss_info
from podbench.losses.testing import CHECKS, check_no_host_sync, check_predict_agrees


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", list_losses())
def test_losses_conformance(name, check):
    if check is check_no_host_sync and name.startswith("pml:"):
        # pytorch-metric-learning's own code reads the device (nonzero, boolean masks, .item()):
        # test_losses_pml.py runs this check and shows that every read is the library's
        return
    check(name)


def test_losses_builtins_are_all_registered():
    expected = {
        "pod", "pedcc", "softmax", "label-smoothing", "l-softmax", "sphereface",
        "cosface", "arcface", "center", "cot",
    }  # fmt: skip
    assert expected <= set(list_losses())


# Ablations that are not meant to classify on their own: every other check still applies.
NOT_A_CLASSIFIER_ALONE = {
    ("pod", "no-nac"): "SC alone decorrelates residuals but does not pull features to centroids",
    ("l-softmax", "no-anneal"): "m = 4 without annealing trains poorly: why the authors anneal",
}
VARIANTS = [(name, v) for name in list_losses() for v in loss_info(name).variants]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(("name", "variant"), VARIANTS, ids=[f"{n}[{v}]" for n, v in VARIANTS])
def test_losses_conformance_of_variants(name, variant, check):
    if check is check_predict_agrees and (name, variant) in NOT_A_CLASSIFIER_ALONE:
        with pytest.raises(AssertionError, match="predict is right on"):
            check_predict_agrees(partial(_variant, name, variant))
        return
    check(partial(_variant, name, variant))


def _variant(name: str, variant: str, num_classes: int, feat_dim: int) -> LossPlugin:
    return create_loss(name, num_classes=num_classes, feat_dim=feat_dim, variant=variant)
