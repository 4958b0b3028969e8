"""A loaded dataset ready for training: batches of normalised images on the training device."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from podbench.errors import UserError
from podbench.tasks.augment import epoch_plan, normalise, random_crop_flip, resize_batch

if TYPE_CHECKING:
    from podbench.tasks.datasets import DatasetInfo

__all__ = ["TensorTask", "Task"]

Batch = tuple[torch.Tensor, torch.Tensor]


class Task(ABC):
    """Training and evaluation batches of one dataset.

    Attributes:
        info: facts of the dataset as found (classes, channels, native image size, ...).
        classes: class names, index = label.
        device: where batches are produced.
        image_size: height = width of the batches' images.
        augment: whether training batches are augmented (random crop with padding, flip).
        num_train: number of training samples (the training set minus validation when use_val).
        label_noise_rate: the share of training labels that label noise changed (None: no noise).
    """

    info: DatasetInfo
    classes: tuple[str, ...]
    device: torch.device
    image_size: int
    augment: bool
    num_train: int
    label_noise_rate: float | None = None
    _mean: torch.Tensor
    _std: torch.Tensor

    @property
    @abstractmethod
    def splits(self) -> tuple[str, ...]:
        """Names accepted by :meth:`eval_batches` ("train", "test", and "val" with use_val)."""

    @abstractmethod
    def num_samples(self, split: str) -> int:
        """Number of samples of ``split``."""

    @abstractmethod
    def train_batches(
        self, batch_size: int, *, seed: int, epoch: int, drop_last: bool = False
    ) -> Iterator[Batch]:
        """Shuffled, augmented, normalised training batches; the same (seed, epoch) replays."""

    @abstractmethod
    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """Batches of ``split`` in a fixed order, normalised, never augmented."""

    @abstractmethod
    def pixel_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """Batches of ``split`` in :meth:`eval_batches`' order as [0, 1] floats of the batches'
        size, before normalisation (for probes that corrupt or convert images)."""

    def from_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (as :meth:`pixel_batches` gives) -> the network's normalised input."""
        return normalise(images * 255.0, self._mean, self._std)

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            hint = " (set eval_split: val / use_val=True to carve one)" if split == "val" else ""
            raise UserError(
                f"split '{split}' does not exist for dataset '{self.info.name}'{hint}; "
                f"choose one of {', '.join(self.splits)}."
            )

    @staticmethod
    def _check_batch_size(batch_size: int) -> None:
        if int(batch_size) < 1:
            raise UserError(f"batch_size must be a positive integer, got {batch_size}.")

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={self.num_samples(s)}" for s in self.splits)
        return (f"{type(self).__name__}({self.info.name!r}, {sizes}, image_size={self.image_size}, "
                f"device={self.device})")


class TensorTask(Task):
    """Every split held on the device as uint8; augmentation and normalisation per batch there."""

    def __init__(
        self,
        info: DatasetInfo,
        classes: tuple[str, ...],
        splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
        *,
        device: torch.device,
        augment: bool,
        image_size: int | None = None,
    ) -> None:
        self.info = info
        self.classes = classes
        self.device = device
        self.augment = augment
        # uint8 on the device: 4x less memory and transfer than float
        self._data = {
            name: (x.to(device).contiguous(), y.to(device=device, dtype=torch.long))
            for name, (x, y) in splits.items()
        }
        self._stored_size = int(splits["train"][0].shape[-1])
        self.image_size = int(image_size or self._stored_size)
        self.num_train = int(self._data["train"][1].shape[0])
        self._mean = torch.tensor(info.mean, dtype=torch.float32, device=device)
        self._std = torch.tensor(info.std, dtype=torch.float32, device=device)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self._data)

    def num_samples(self, split: str) -> int:
        self._check_split(split)
        return int(self._data[split][1].shape[0])

    def _finish(self, images: torch.Tensor) -> torch.Tensor:
        x = normalise(images, self._mean, self._std)
        return resize_batch(x, self.image_size)

    def train_batches(
        self, batch_size: int, *, seed: int, epoch: int, drop_last: bool = False
    ) -> Iterator[Batch]:
        self._check_batch_size(batch_size)
        x_all, y_all = self._data["train"]
        n = self.num_train
        pad = self.info.crop_padding if self.augment else 0
        plan = epoch_plan(n, seed, epoch, padding=pad, hflip=self.augment and self.info.hflip)
        order = plan.order.to(self.device)
        offsets = plan.offsets.to(self.device) if plan.offsets is not None else None
        flips = plan.flips.to(self.device) if plan.flips is not None else None
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            if drop_last and stop - start < batch_size:
                break
            idx = order[start:stop]
            x = x_all.index_select(0, idx)
            if offsets is not None or flips is not None:
                x = random_crop_flip(
                    x,
                    offsets[start:stop] if offsets is not None else None,
                    flips[start:stop] if flips is not None else None,
                    pad,
                )
            yield self._finish(x), y_all.index_select(0, idx)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        self._check_split(split)
        self._check_batch_size(batch_size)
        x_all, y_all = self._data[split]
        for start in range(0, int(y_all.shape[0]), batch_size):
            yield self._finish(x_all[start:start + batch_size]), y_all[start:start + batch_size]

    def pixel_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        self._check_split(split)
        self._check_batch_size(batch_size)
        x_all, y_all = self._data[split]
        for start in range(0, int(y_all.shape[0]), batch_size):
            x = x_all[start:start + batch_size].to(torch.float32) / 255.0
            yield resize_batch(x, self.image_size).clamp_(0.0, 1.0), y_all[start:start + batch_size]
