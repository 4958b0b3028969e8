"""channels_last: auto on the CPU: the one-time probe picks the layout its timings say is faster,
once per network and input, without touching the run's network or random state."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from podbench import layout
from podbench.tasks import create_arch


@pytest.fixture(autouse=True)
def _fresh_probes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(layout, "_PROBED", {})
    yield


def _timed(monkeypatch: pytest.MonkeyPatch, seconds: dict[bool, list[float]]) -> list[bool]:
    """Replace the timed step: each layout's calls return the next of its ``seconds``."""
    calls: list[bool] = []

    def step(model: nn.Module, x: torch.Tensor, amp_dtype: torch.dtype | None) -> float:
        last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        calls.append(last)
        return seconds[last][sum(c == last for c in calls) - 1]

    monkeypatch.setattr(layout, "_step", step)
    return calls


def _cnn() -> nn.Module:
    return create_arch("small-cnn", in_channels=3, image_size=8, feat_dim=8)


@pytest.mark.parametrize(
    ("contiguous", "last", "chosen"),
    [
        # the first call of each layout is a warm-up and does not count, then the fastest one
        ([9.0, 2.0, 3.0, 2.5], [1.0, 2.1, 1.9, 2.2], True),
        ([1.0, 2.0, 1.8, 2.5], [9.0, 2.1, 1.9, 2.2], False),
        # 2 % faster is within the margin of 3 %: a near tie stays contiguous
        ([1.0, 2.0, 2.1, 2.2], [1.0, 1.96, 2.0, 2.3], False),
    ],
)
def test_the_probe_takes_the_layout_with_the_fastest_timed_step(
    monkeypatch: pytest.MonkeyPatch, contiguous: list[float], last: list[float], chosen: bool
) -> None:
    calls = _timed(monkeypatch, {False: contiguous, True: last})
    choice = layout.choose_layout("auto", torch.device("cpu"), _cnn(), (128, 3, 8, 8), None, ("k",))
    assert choice.channels_last is chosen and choice.how == "probe"
    assert choice.probe_record() == {
        "contiguous_s": min(contiguous[1:]),
        "channels_last_s": min(last[1:]),
        "batch": layout.PROBE_BATCH,
    }  # 128, capped
    assert calls.count(True) == calls.count(False) == layout.PROBE_ROUNDS + 1


def test_the_probe_runs_once_per_key(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _timed(monkeypatch, {False: [1.0] * 8, True: [2.0] * 8})
    cpu = torch.device("cpu")
    first = layout.choose_layout("auto", cpu, _cnn(), (4, 3, 8, 8), None, ("a",))
    again = layout.choose_layout("auto", cpu, _cnn(), (4, 3, 8, 8), None, ("a",))
    assert again == first and first.channels_last is False
    assert len(calls) == 2 * (layout.PROBE_ROUNDS + 1)
    layout.choose_layout("auto", cpu, _cnn(), (4, 3, 8, 8), torch.bfloat16, ("b",))
    assert len(calls) == 4 * (layout.PROBE_ROUNDS + 1)  # another key: probed again


def test_no_probe_when_set_on_cuda_or_without_convolutions(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _timed(monkeypatch, {False: [], True: []})
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    mlp = create_arch("mlp", in_channels=3, image_size=8, feat_dim=8)
    assert layout.choose_layout(True, cpu, _cnn(), (4, 3, 8, 8), None, ()).channels_last is True
    assert layout.choose_layout(False, cuda, _cnn(), (4, 3, 8, 8), None, ()).channels_last is False
    assert layout.choose_layout("auto", cuda, _cnn(), (4, 3, 8, 8), None, ()).how == "cuda"
    choice = layout.choose_layout("auto", cpu, mlp, (4, 3, 8, 8), None, ())
    assert (choice.channels_last, choice.how, choice.probe_record()) == (
        False,
        "no convolution",
        None,
    )
    assert calls == []


def test_the_probe_leaves_the_network_and_the_random_state_alone() -> None:
    torch.manual_seed(3)
    model = _cnn()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    choice = layout.probe_layout(model, (4, 3, 8, 8), torch.bfloat16)
    assert choice.contiguous_s is not None and choice.channels_last_s is not None
    assert choice.contiguous_s > 0
    assert choice.channels_last is (choice.channels_last_s < 0.97 * choice.contiguous_s)
    assert torch.equal(torch.get_rng_state(), rng)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())  # incl. BN running stats
    assert all(p.grad is None for p in model.parameters())
    assert next(model.parameters()).is_contiguous()  # the run's network keeps its layout
