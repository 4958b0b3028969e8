"""The CPU fast path in the engine: amp: bf16 under CPU autocast with the latent features and
the loss in float32, channels_last: auto decided by the probe and recorded outside the run id."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from podbench import layout
from podbench.loop import Trainer
from podbench.runs import RunSettings, RunSpec, resolve_run
from podbench.runtime import RunPolicy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(arch: str = "small-cnn", **settings: Any) -> RunSpec:
    base = dict(
        epochs=1,
        lr=0.05,
        batch_size=16,
        schedule="constant",
        device="cpu",
        limit_train=64,
        limit_eval=32,
        max_steps=2,
    )
    base.update(settings)
    return resolve_run(
        RunSettings(**base),
        suite="t",
        loss="pod",
        dataset="synthetic",
        arch=arch,
        seed=0,
        feat_dim=8,
    )


def test_bf16_runs_the_network_under_cpu_autocast_and_the_loss_in_float32() -> None:
    trainer = Trainer.of_run(_run(amp="bf16"))
    plugin = trainer.parts.plugin
    seen: list[tuple[Any, ...]] = []
    convs: list[torch.dtype] = []
    update_loss = plugin.update_loss

    def recorded(features: torch.Tensor, y: torch.Tensor, step: int) -> Any:
        out = update_loss(features, y, step)
        seen.append(
            (
                features.dtype,
                torch.is_autocast_enabled("cpu"),
                out.total.dtype,
                {v.dtype for v in out.parts.values()},
            )
        )
        return out

    plugin.update_loss = recorded  # type: ignore[method-assign]
    first_conv = next(m for m in trainer.parts.model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda m, args, out: convs.append(out.dtype))
    trainer.train_epoch(0)
    assert len(seen) == 2 and convs == [torch.bfloat16] * 2  # the network ran in bf16
    for features, autocast_on, total, parts in seen:
        assert (features, autocast_on, total) == (torch.float32, False, torch.float32)
        assert parts == {torch.float32}


@pytest.fixture
def fresh_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout, "_PROBED", {})


def _faster(monkeypatch: pytest.MonkeyPatch, channels_last: bool) -> list[tuple[int, ...]]:
    """Make the probe's timed step say ``channels_last`` is faster; the shapes it timed."""
    shapes: list[tuple[int, ...]] = []

    def step(model: torch.nn.Module, x: torch.Tensor, amp_dtype: torch.dtype | None) -> float:
        shapes.append(tuple(x.shape))
        last = not x.is_contiguous()
        return 1.0 if last == channels_last else 2.0

    monkeypatch.setattr(layout, "_step", step)
    return shapes


@pytest.mark.usefixtures("fresh_probes")
@pytest.mark.parametrize("channels_last", [True, False])
def test_auto_on_the_cpu_lays_out_network_and_batches_as_the_probe_decided(
    monkeypatch: pytest.MonkeyPatch, channels_last: bool
) -> None:
    shapes = _faster(monkeypatch, channels_last)
    trainer = Trainer.of_run(_run(amp="bf16"))
    assert trainer.policy.channels_last is channels_last
    assert trainer.policy.layout_probe == {
        "contiguous_s": 2.0 if channels_last else 1.0,
        "channels_last_s": 1.0 if channels_last else 2.0,
        "batch": 16,
    }  # the run's batch
    assert set(shapes) == {(16, 3, 16, 16)}  # synthetic data: 3 x 16 x 16, the run's batch
    conv = next(m for m in trainer.parts.model.modules() if isinstance(m, torch.nn.Conv2d))
    layouts: list[bool] = []
    conv.register_forward_pre_hook(lambda m, args: layouts.append(not args[0].is_contiguous()))
    trainer.train_epoch(0)
    assert layouts == [channels_last] * 2
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) is channels_last


@pytest.mark.usefixtures("fresh_probes")
def test_the_probe_sees_the_runs_input_once_per_process_and_draws_no_random_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shapes = _faster(monkeypatch, True)
    run = resolve_run(
        RunSettings(batch_size=128, device="cpu", limit_train=100),
        suite="t",
        loss="pod",
        dataset="fashion-mnist",
        arch="small-cnn",
        seed=0,
        feat_dim=8,
    )
    state = torch.get_rng_state()
    first = RunPolicy.of(run)
    assert torch.equal(torch.get_rng_state(), state)
    # Fashion-MNIST's 1 x 28 x 28 images, at most limit_train of them (100 < 128)
    assert layout.PROBE_BATCH < 100
    assert set(shapes) == {(layout.PROBE_BATCH, 1, 28, 28)}  # the probe's batch is capped
    assert first.layout_probe is not None and first.layout_probe["batch"] == layout.PROBE_BATCH
    # another seed: the same decision, not probed again
    assert RunPolicy.of(run.model_copy(update={"seed": 1})) == dataclasses.replace(first, seed=1)
    assert len(shapes) == 2 * (layout.PROBE_ROUNDS + 1)
    RunPolicy.of(run.model_copy(update={"image_size": 16}))
    assert shapes[-1] == (layout.PROBE_BATCH, 1, 16, 16)
    mlp = RunPolicy.of(run.model_copy(update={"arch": "mlp"}))
    assert (mlp.channels_last, mlp.layout_probe) == (False, None)  # no convolution to probe
