"""airbench94's schedule and lookahead, warm-up warnings, per-loss settings of a suite."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from podbench.cli import main
from podbench.errors import UserError
from podbench.recipe import Lookahead, triangular, warmup_warnings
from podbench.suite_spec import load_suite


def test_triangular_is_airbench_piecewise_linear_triangle() -> None:
    # airbench94 at 9.9 epochs: ceil(48 * 9.9) = 476 steps, int(476 * 0.23) = 109 rising
    total = 476
    knots = ([0, 109, 476], [0.2, 1.0, 0.07])
    for step in (0, 1, 54, 108, 109, 110, 300, 475):
        assert triangular(step, total, 0.23) == pytest.approx(np.interp(step, *knots), abs=1e-12)
    # no rising part when the run is too short for one: it starts at the peak
    assert triangular(0, 4, 0.23) == pytest.approx(1.0)


def test_lookahead_updates_every_fifth_step_and_ends_on_the_average() -> None:
    w = torch.zeros(())
    look = Lookahead([w])
    total = 10
    for step in range(1, total + 1):
        w.add_(1.0)  # an optimiser step
        look.after_step(step, total)
    # by hand: steps 1-5 move w from 0 to 5; the update at step 5 (d5 = 0.95^5 (5/10)^3) sets
    # avg = d5 * 0 + (1 - d5) * 5 and w = avg
    d5 = 0.95**5 * 0.5**3
    avg5 = (1 - d5) * 5.0
    # steps 6-10 move w to avg5 + 5; d10 = 0.95^5; the end (decay 1) keeps w = avg
    d10 = 0.95**5
    avg10 = d10 * avg5 + (1 - d10) * (avg5 + 5.0)
    assert float(w) == pytest.approx(avg10, rel=1e-6)
    assert float(look.average[0]) == pytest.approx(avg10, rel=1e-6)


def test_validate_warns_of_a_short_warmup(capsys: pytest.CaptureFixture[str]) -> None:
    short = load_suite("fast-cifar10", ["epochs=2"], build_losses=False).expand()
    # 2 epochs of 48 full batches: int(96 * 0.23) = 22 rising steps
    messages = warmup_warnings(short)
    assert len(messages) == 1
    assert (
        "rises over 22 steps only (triangular, warmup 0.23 of 96 steps), fewer than 50"
        in messages[0]
    )
    assert all(label in messages[0] for label in ("pod", "softmax", "label-smoothing"))
    assert warmup_warnings(load_suite("fast-cifar10", build_losses=False).expand()) == []
    assert main(["validate", "fast-cifar10", "--set", "epochs=2"]) == 0
    assert "warning: pod, softmax, label-smoothing on cifar10/fastnet" in capsys.readouterr().err


def test_a_suite_sets_run_settings_per_loss() -> None:
    runs = load_suite("fast-cifar10", ["seeds=[0]"], build_losses=False).expand()
    proj = {r.label: (r.proj, r.variant, r.loss_params) for r in runs}
    assert proj == {
        "pod": ("linear", None, {}),
        "softmax": ("none", None, {"bias": False}),
        "label-smoothing": ("none", "eps-0.2", {"bias": False}),
    }
    # the other settings stay the suite's
    assert {(r.lr, r.schedule, r.lookahead, r.tta) for r in runs} == {
        (1.5, "triangular", True, True)
    }


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ("{lrr: 0.1}", "['lrr'] are not run settings"),
        ("{gpus: 1}", "['gpus'] apply to the whole suite"),
    ],
)
def test_per_loss_settings_errors_name_the_field(settings: str, words: str) -> None:
    with pytest.raises(UserError, match=r"losses\.0\.settings") as err:
        load_suite(
            "fast-cifar10",
            [f"losses=[{{name: softmax, settings: {settings}}}]"],
            build_losses=False,
        )
    assert words in str(err.value)
