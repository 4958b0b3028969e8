"""The CPU fast path in the engine: amp: bf16 under CPU autocast with the latent features and
the loss in float32, channels_last: auto decided by the probe and recorded outside the run id."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import podbench.engine as engine
from podbench.runs import RunSettings, RunSpec, resolve_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(arch: str = "small-cnn", **settings: Any) -> RunSpec:
    base = dict(epochs=1, lr=0.05, batch_size=16, schedule="constant", device="cpu",
                limit_train=64, limit_eval=32, max_steps=2)
    base.update(settings)
    return resolve_run(RunSettings(**base), suite="t", loss="pod", dataset="synthetic", arch=arch,
                       seed=0, feat_dim=8)


def test_bf16_runs_the_network_under_cpu_autocast_and_the_loss_in_float32() -> None:
    trainer = engine._Trainer(_run(amp="bf16"), None)
    seen: list[tuple[Any, ...]] = []
    convs: list[torch.dtype] = []
    update_loss = trainer.plugin.update_loss

    def recorded(features: torch.Tensor, y: torch.Tensor, step: int) -> Any:
        out = update_loss(features, y, step)
        seen.append((features.dtype, torch.is_autocast_enabled("cpu"), out.total.dtype,
                     {v.dtype for v in out.parts.values()}))
        return out

    trainer.plugin.update_loss = recorded  # type: ignore[method-assign]
    first_conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda m, args, out: convs.append(out.dtype))
    trainer.train_epoch(0)
    assert len(seen) == 2 and convs == [torch.bfloat16] * 2  # the network ran in bf16
    for features, autocast_on, total, parts in seen:
        assert (features, autocast_on, total) == (torch.float32, False, torch.float32)
        assert parts == {torch.float32}
