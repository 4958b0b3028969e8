"""``channels_last``: the memory layout a run's network and batches use, and the one-time probe
that decides ``auto`` on the CPU.

On CUDA ``auto`` is channels-last (tensor-core convolutions want it). On the CPU the gain
depends on the network and the CPU (oneDNN's kernels): measured here, ``small-cnn`` trains 1.5x
faster channels-last and an MLP not at all, so ``auto`` times one training step of the run's
network in both layouts, on a copy, and takes channels-last when it is more than 3 % faster.
The probe runs once per process and (architecture, input, precision, threads); its timings go
into the record's ``env.channels_last_probe``. The layout is not in the run id (a layout, not
a protocol: it changes at most the rounding order of the convolutions' sums).
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from podbench.runs import RunSpec

__all__ = ["LayoutChoice", "choose_layout", "layout_of_run", "probe_layout"]

PROBE_BATCH = 32  # images per probed step: the run's batch size, at most this
PROBE_ROUNDS = 3  # timed steps per layout (after one warm-up step each); the fastest counts
# channels-last must be this much faster: a near tie (a tiny network's step, timing noise) stays
# contiguous, so that the choice does not flip from one process to the next
PROBE_MARGIN = 0.03
_PROBED: dict[tuple[Any, ...], LayoutChoice] = {}


@dataclass(frozen=True)
class LayoutChoice:
    """The layout a run uses and why: ``how`` is "set" (the suite said true/false), "cuda",
    "no convolution" (nothing a layout changes) or "probe" (with its CPU seconds per step)."""

    channels_last: bool
    how: str
    contiguous_s: float | None = None
    channels_last_s: float | None = None
    batch: int | None = None

    def probe_record(self) -> dict[str, Any] | None:
        """The record's ``env.channels_last_probe``: the probe's timings, or None (no probe)."""
        if self.how != "probe":
            return None
        return {
            "contiguous_s": self.contiguous_s,
            "channels_last_s": self.channels_last_s,
            "batch": self.batch,
        }


def choose_layout(
    setting: bool | str,
    device: torch.device,
    model: nn.Module,
    shape: tuple[int, ...],
    amp_dtype: torch.dtype | None,
    key: tuple[Any, ...],
) -> LayoutChoice:
    """The layout for ``setting`` (true, false or "auto"): auto is channels-last on CUDA and,
    on the CPU, the faster layout of one training step of ``model`` on a ``shape`` batch
    (probed once per ``key``: the same network, input, precision and threads)."""
    if setting != "auto":
        return LayoutChoice(bool(setting), "set")
    if device.type == "cuda":
        return LayoutChoice(True, "cuda")
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return LayoutChoice(False, "no convolution")
    if key not in _PROBED:
        _PROBED[key] = probe_layout(model, shape, amp_dtype)
    return _PROBED[key]


def _step(model: nn.Module, x: torch.Tensor, amp_dtype: torch.dtype | None) -> float:
    """CPU seconds of one forward and backward pass of ``model`` on ``x``."""
    autocast = (
        torch.autocast(x.device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    start = time.process_time()
    with autocast:
        out = model(x)
    out.float().square().mean().backward()
    seconds = time.process_time() - start
    model.zero_grad(set_to_none=True)
    return seconds


def probe_layout(
    model: nn.Module, shape: tuple[int, ...], amp_dtype: torch.dtype | None
) -> LayoutChoice:
    """Time a training step of copies of ``model`` in both layouts (``shape``: one batch,
    N x C x H x W, N capped at :data:`PROBE_BATCH`); channels-last when it is faster by more
    than :data:`PROBE_MARGIN`.

    ``model`` (weights, batch-norm statistics) and torch's random state are left as they were.
    """
    batch = min(shape[0], PROBE_BATCH)
    with torch.random.fork_rng(devices=[]):
        x = torch.randn((batch, *shape[1:]), generator=torch.Generator().manual_seed(0))
        device = next(model.parameters()).device
        runs = {}
        for last in (False, True):
            layout = torch.channels_last if last else torch.contiguous_format
            runs[last] = (
                copy.deepcopy(model).train().to(memory_format=layout),
                x.to(device).contiguous(memory_format=layout),
            )
        seconds: dict[bool, list[float]] = {False: [], True: []}
        for round_ in range(PROBE_ROUNDS + 1):
            order = (False, True) if round_ % 2 else (True, False)
            for last in order:
                seconds[last].append(_step(runs[last][0], runs[last][1], amp_dtype))
    contiguous_s, channels_last_s = min(seconds[False][1:]), min(seconds[True][1:])
    faster = channels_last_s < (1 - PROBE_MARGIN) * contiguous_s
    return LayoutChoice(faster, "probe", contiguous_s, channels_last_s, batch)


def layout_of_run(
    run: RunSpec, device: torch.device, amp_dtype: torch.dtype | None
) -> LayoutChoice:
    """The layout of ``run`` from its spec alone: for ``auto`` on the CPU, the probe runs on a
    network of the run's architecture built for the purpose (the dataset's channels, the run's
    image size, its batch size), under the run's autocast. Draws no number from torch's random
    state. A dataset whose image size is known only once read (an image folder without
    ``image_size``) is not probed: contiguous."""
    from podbench.tasks import create_arch, dataset_info

    if run.channels_last != "auto" or device.type == "cuda":
        return choose_layout(run.channels_last, device, nn.Identity(), (), amp_dtype, ())
    info = dataset_info(run.dataset)
    size = run.image_size or info.image_size
    if size is None:
        return LayoutChoice(False, "image size unknown")
    batch = min(run.batch_size, run.limit_train or run.batch_size)
    shape = (batch, int(info.channels or 3), int(size), int(size))
    key = (run.arch, run.feat_dim, shape, run.amp, torch.get_num_threads())
    if key in _PROBED:
        return _PROBED[key]
    with torch.random.fork_rng(devices=[]):
        model = create_arch(
            run.arch, in_channels=shape[1], image_size=shape[2], feat_dim=run.feat_dim
        )
    return choose_layout("auto", device, model, shape, amp_dtype, key)
