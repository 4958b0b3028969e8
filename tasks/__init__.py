"""Datasets and architectures: real data read offline, a fast on-device data path, the networks.

Example:
    >>> from podbench.tasks import load_task, create_arch
    >>> task = load_task("digits", limit=200)
    >>> net = create_arch("small-cnn", in_channels=task.info.channels,
    ...                   image_size=task.image_size, feat_dim=16)
    >>> x, y = next(task.train_batches(64, seed=0, epoch=0))
    >>> net(x).shape
    torch.Size([64, 16])
"""

from __future__ import annotations

from podbench.tasks.archs import (
    ARCHS,
    ArchInfo,
    LatentNet,
    arch_info,
    count_parameters,
    create_arch,
    find_arch,
    list_archs,
    prepare_model,
    register_arch,
)
from podbench.tasks.datasets import (
    DATASETS,
    ArraySplit,
    DatasetInfo,
    DatasetSource,
    FileSplit,
    Located,
    RawData,
    dataset_info,
    list_datasets,
    load_task,
    locate_dataset,
    register_dataset,
)
from podbench.tasks.devices import resolve_device
from podbench.tasks.label_noise import LabelNoise
from podbench.tasks.splits import open_set_classes
from podbench.tasks.task import Task

# timm's networks as "timm:<model>", resolved when named (optional extra podbench[timm]); too
# many to list: `podbench tasks --timm PATTERN` shows them
from podbench.tasks import timm_archs  # noqa: E402  isort: skip

ARCHS.serve_prefix(timm_archs.PREFIX, timm_archs.resolve)

__all__ = [
    "ARCHS",
    "DATASETS",
    "ArchInfo",
    "ArraySplit",
    "DatasetInfo",
    "DatasetSource",
    "FileSplit",
    "LabelNoise",
    "LatentNet",
    "Located",
    "RawData",
    "Task",
    "arch_info",
    "count_parameters",
    "create_arch",
    "dataset_info",
    "find_arch",
    "list_archs",
    "list_datasets",
    "load_task",
    "locate_dataset",
    "open_set_classes",
    "prepare_model",
    "register_arch",
    "register_dataset",
    "resolve_device",
]
