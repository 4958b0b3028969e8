"""The in-memory data path stays on the device: uint8 there, batches made there, no host copy."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from podbench.tasks import load_task
from podbench.tasks.task import TensorTask


class _DeviceLog(TorchDispatchMode):
    """Records every operator with the devices of its tensor arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, set[str]]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        devices: set[str] = set()
        for value in torch.utils._pytree.tree_leaves((args, kwargs or {})):
            if isinstance(value, torch.Tensor):
                devices.add(value.device.type)
        self.ops.append((str(func), devices))
        return func(*args, **(kwargs or {}))


def _meta_task() -> TensorTask:
    # "meta" stands in for a GPU: tensors there have no data, so any host copy or host read
    # (.item(), .tolist(), .cpu()) during a batch would show as a CPU tensor or fail outright
    cpu = load_task("synthetic")
    assert isinstance(cpu, TensorTask)
    splits = {name: cpu._data[name] for name in cpu.splits}  # uint8 images, int64 labels
    return TensorTask(cpu.info, cpu.classes, splits, device=torch.device("meta"), augment=True)


def test_data_is_uint8_on_the_device() -> None:
    task = _meta_task()
    for name in task.splits:
        images, labels = task._data[name]
        assert images.dtype == torch.uint8 and images.device.type == "meta", name
        assert labels.device.type == "meta", name


@pytest.mark.parametrize("channels_last", [False, True])
def test_training_batches_need_no_host_copy_per_step(channels_last: bool) -> None:
    task = _meta_task()
    task.channels_last = channels_last
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    batches = task.train_batches(64, seed=0, epoch=0)
    with _DeviceLog() as log:
        next(batches)  # the epoch's plan (order, crops, flips) goes to the device once, here
    assert any("cpu" in devices for _, devices in log.ops)  # the log does see host tensors
    with _DeviceLog() as log:
        for x, y in batches:  # every later batch: device operators only
            assert x.device.type == "meta" and x.dtype == torch.float32
            assert y.device.type == "meta"
            assert x.is_contiguous(memory_format=memory_format)
    assert log.ops, "no operator was recorded"
    host = [op for op, devices in log.ops if devices - {"meta"}]
    assert host == [], f"host tensors in per-step operators: {host}"
