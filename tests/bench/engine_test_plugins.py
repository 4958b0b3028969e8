"""Loss plugins that misbehave on purpose, for the engine's tests only.

Suites name this module under ``imports:`` so that Ray workers register them too (the tests put
this folder on PYTHONPATH).
"""

from __future__ import annotations

import json
import os
import signal
import time
import warnings
import weakref
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from podbench.losses import LossOutput, register_loss
from podbench.losses.pedcc_loss import PEDCCLoss
from podbench.losses.softmax import SoftmaxLoss


@register_loss("test-raising", description="raises in its second training batch")
class RaisingLoss(SoftmaxLoss):
    def __init__(self, num_classes: int, feat_dim: int) -> None:
        super().__init__(num_classes, feat_dim)
        self.calls = 0

    def compute_loss(self, features: Tensor, targets: Tensor) -> LossOutput:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("test-raising: deliberate plugin failure")
        return super().compute_loss(features, targets)


@register_loss("test-nan", description="its loss turns NaN in epoch `at_epoch`")
class NanLoss(SoftmaxLoss):
    def __init__(self, num_classes: int, feat_dim: int, *, at_epoch: int = 0) -> None:
        super().__init__(num_classes, feat_dim)
        self.at_epoch = at_epoch
        self.epoch = 0

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def compute_loss(self, features: Tensor, targets: Tensor) -> LossOutput:
        out = super().compute_loss(features, targets)
        if self.epoch >= self.at_epoch:
            bad = out.total * torch.tensor(float("nan"))
            return LossOutput(total=bad, parts={"ce": bad})
        return out


@register_loss(
    "test-die-once",
    description="kills its own process the first time it trains (marker file absent)",
)
class DieOnceLoss(SoftmaxLoss):
    def __init__(self, num_classes: int, feat_dim: int, *, marker: str = "") -> None:
        super().__init__(num_classes, feat_dim)
        self.marker = marker

    def on_epoch_start(self, epoch: int) -> None:
        marker = Path(self.marker)
        if self.marker and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)  # a worker dying mid-run, as under the OOM killer


@register_loss("test-die-always", description="kills its own process whenever it trains")
class DieAlwaysLoss(SoftmaxLoss):
    def on_epoch_start(self, epoch: int) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


@register_loss(
    "test-pedcc-recording",
    description="PEDCC-Loss that keeps every training batch's features (BN statistics test)",
)
class RecordingPEDCCLoss(PEDCCLoss):
    #: the features of every training-mode loss call, in order (one list per process)
    recorded: ClassVar[list[Tensor]] = []

    def __init__(self, num_classes: int, feat_dim: int) -> None:
        super().__init__(num_classes, feat_dim, centroids="simplex")

    def compute_loss(self, features: Tensor, targets: Tensor) -> LossOutput:
        if self.training:
            self.recorded.append(features.detach().clone())
        return super().compute_loss(features, targets)


@register_loss(
    "test-tracked",
    description="softmax in a reference cycle (a hook on itself), its instances listed weakly",
)
class TrackedLoss(SoftmaxLoss):
    #: weak references to every instance made in this process
    instances: ClassVar[list[weakref.ref]] = []

    def __init__(self, num_classes: int, feat_dim: int) -> None:
        super().__init__(num_classes, feat_dim)
        self.calls = 0
        # a hook that closes over its own module, as plugins' hooks often do: a reference cycle
        self.register_forward_pre_hook(lambda module, args: setattr(self, "calls", self.calls + 1))
        self.instances.append(weakref.ref(self))


@register_loss("test-oom", description="runs out of GPU memory in its first batch")
class OutOfMemoryLoss(SoftmaxLoss):
    def compute_loss(self, features: Tensor, targets: Tensor) -> LossOutput:
        raise torch.cuda.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 20.00 GiB (raised by test-oom)"
        )


@register_loss(
    "test-flags",
    description="softmax that notes torch's determinism flags while it trains",
)
class FlagsLoss(SoftmaxLoss):
    #: (cudnn.benchmark, cudnn.deterministic, deterministic algorithms) seen in training calls
    seen: ClassVar[list[tuple[bool, bool, bool]]] = []

    def compute_loss(self, features: Tensor, targets: Tensor) -> LossOutput:
        if self.training:
            self.seen.append(
                (
                    torch.backends.cudnn.benchmark,
                    torch.backends.cudnn.deterministic,
                    torch.are_deterministic_algorithms_enabled(),
                )
            )
        return super().compute_loss(features, targets)


@register_loss(
    "test-nondeterministic",
    description="softmax plus an op torch has no deterministic kernel for, and a warning of its own",
)
class NondeterministicLoss(SoftmaxLoss):
    def compute_loss(self, features: Tensor, targets: Tensor) -> LossOutput:
        if self.training:
            # put_ without accumulate has no deterministic kernel, on the CPU too
            torch.zeros(4).put_(torch.tensor([1, 1]), torch.tensor([1.0, 2.0]))
            warnings.warn("a plugin's own warning", UserWarning, stacklevel=1)
        return super().compute_loss(features, targets)


def device_probe_trial(config: dict[str, Any]) -> None:
    """A Tune trial that writes the device it resolves to, once all ``together`` probes run.

    ``config``: ``run`` (a RunSpec as JSON; its label names the probe), ``folder``, ``together``.
    """
    from ray import tune

    from podbench.worker import trial_device

    torch.cuda.is_available = lambda: True  # this trial believes a GPU is there
    device, ids = trial_device()
    folder = Path(config["folder"])
    tag = config["run"]["label"]
    (folder / f"started-{tag}").write_text("")
    deadline = time.monotonic() + 240
    while len(list(folder.glob("started-*"))) < config["together"]:  # a barrier: all at once
        if time.monotonic() > deadline:
            raise TimeoutError("the probes did not all run at the same time")
        time.sleep(0.2)
    (folder / f"probe-{tag}.json").write_text(
        json.dumps(
            {
                "gpus": config["run"]["gpus"],
                "device": device,
                "ids": ids,
                "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
            }
        )
    )
    tune.report({"done": 1})


@register_loss(
    "test-slow",
    description="softmax that sleeps `seconds` per training batch and notes where it started",
)
class SlowLoss(SoftmaxLoss):
    def __init__(
        self, num_classes: int, feat_dim: int, *, folder: str = "", seconds: float = 1.0
    ) -> None:
        super().__init__(num_classes, feat_dim)
        self.folder, self.seconds = folder, seconds

    def on_epoch_start(self, epoch: int) -> None:
        import ray

        if self.folder and epoch == 0:  # one file per start: <seed-free token>.<node id>.<pid>
            node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "none"
            token = f"{torch.initial_seed()}.{node}.{os.getpid()}"
            (Path(self.folder) / token).write_text("")

    def compute_loss(self, features: Tensor, targets: Tensor) -> LossOutput:
        if self.training:
            time.sleep(self.seconds)
        return super().compute_loss(features, targets)


@register_loss(
    "test-gated",
    description="softmax that notes each training start and then waits for a gate file",
)
class GatedLoss(SoftmaxLoss):
    """Each start writes ``<folder>/<seed>.<pid>.<n>``; training goes on once ``gate`` exists."""

    def __init__(
        self, num_classes: int, feat_dim: int, *, folder: str = "", gate: str = ""
    ) -> None:
        super().__init__(num_classes, feat_dim)
        self.folder, self.gate = folder, gate

    def on_epoch_start(self, epoch: int) -> None:
        if epoch != 0:
            return
        starts = Path(self.folder)
        n = len(list(starts.glob(f"{torch.initial_seed()}.{os.getpid()}.*")))
        (starts / f"{torch.initial_seed()}.{os.getpid()}.{n}").write_text("")
        deadline = time.monotonic() + 300
        while self.gate and not Path(self.gate).exists():
            if time.monotonic() > deadline:
                raise TimeoutError("test-gated: the gate file never appeared")
            time.sleep(0.1)
