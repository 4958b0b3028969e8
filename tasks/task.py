"""A loaded dataset ready for training: batches of normalised images on the training device."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from podbench.errors import UserError
from podbench.tasks.augment import (
    Protocol,
    centre_crop_resize,
    epoch_plan,
    image_protocol,
    normalise,
    random_crop_flip,
    random_resized_crop,
    resize_batch,
)

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
        protocol: what is done to the images in training and evaluation; the same whether the
            data is held in memory or streamed.
        channels_last: batches come in the channels-last layout (made by the conversion to
            float, so a channels-last network gets them without another copy).
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
    protocol: Protocol
    channels_last: bool = False

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    @abstractmethod
    def data_bytes(self) -> int:
        """Bytes of sample data (images and labels) the task holds in memory."""

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
        return normalise(images * 255.0, self._mean, self._std, self.memory_format)

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
        return (
            f"{type(self).__name__}({self.info.name!r}, {sizes}, image_size={self.image_size}, "
            f"device={self.device})"
        )


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
        channels_last: bool = False,
        policy: str = "dataset",
    ) -> None:
        self.info = info
        self.classes = classes
        self.device = device
        self.augment = augment
        self.channels_last = channels_last
        # uint8 on the device: 4x less memory and transfer than float
        self._data = {
            name: (x.to(device).contiguous(), y.to(device=device, dtype=torch.long))
            for name, (x, y) in splits.items()
        }
        self._stored_size = int(splits["train"][0].shape[-1])
        self.image_size = int(image_size or self._stored_size)
        self.protocol = image_protocol(
            self._stored_size,
            self.image_size,
            augment=augment,
            crop_padding=info.crop_padding,
            hflip=info.hflip,
            policy=policy,
        )
        self.num_train = int(self._data["train"][1].shape[0])
        self._mean = torch.tensor(info.mean, dtype=torch.float32, device=device)
        self._std = torch.tensor(info.std, dtype=torch.float32, device=device)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self._data)

    def num_samples(self, split: str) -> int:
        self._check_split(split)
        return int(self._data[split][1].shape[0])

    @property
    def data_bytes(self) -> int:
        return sum(x.nbytes + y.nbytes for x, y in self._data.values())

    def _finish(self, images: torch.Tensor) -> torch.Tensor:
        x = normalise(images, self._mean, self._std, self.memory_format)
        return resize_batch(x, self.image_size)

    def train_batches(
        self, batch_size: int, *, seed: int, epoch: int, drop_last: bool = False
    ) -> Iterator[Batch]:
        self._check_batch_size(batch_size)
        x_all, y_all = self._data["train"]
        n = self.num_train
        p = self.protocol
        resized_crop = p.train == "random-resized-crop"
        plan = epoch_plan(
            n,
            seed,
            epoch,
            padding=p.padding,
            hflip=p.hflip,
            sample_seeds=resized_crop,
            alternating_flip=p.alternating_flip,
        )
        # non_blocking: the host goes on queueing work while the plan travels
        order = plan.order.to(self.device, non_blocking=True)
        offsets = (
            plan.offsets.to(self.device, non_blocking=True) if plan.offsets is not None else None
        )
        flips = plan.flips.to(self.device, non_blocking=True) if plan.flips is not None else None
        seeds = (
            plan.seeds.tolist() if plan.seeds is not None else []
        )  # host-side: boxes are drawn there
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            if drop_last and stop - start < batch_size:
                break
            idx = order[start:stop]
            x = x_all.index_select(0, idx)
            if resized_crop:  # one box per image, as streamed (the same draws, the same pixels)
                x = torch.stack(
                    [
                        random_resized_crop(img, s, p.size)
                        for img, s in zip(x, seeds[start:stop], strict=True)
                    ]
                )
                if flips is not None:
                    x = torch.where(flips[start:stop, None, None, None], x.flip(-1), x)
            elif offsets is not None or flips is not None:
                x = random_crop_flip(
                    x,
                    offsets[start:stop] if offsets is not None else None,
                    flips[start:stop] if flips is not None else None,
                    p.padding,
                    p.pad_mode,
                )
            yield self._finish(x), y_all.index_select(0, idx)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        self._check_split(split)
        self._check_batch_size(batch_size)
        x_all, y_all = self._data[split]
        for start in range(0, int(y_all.shape[0]), batch_size):
            yield (
                self._finish(self._eval_images(x_all[start : start + batch_size])),
                y_all[start : start + batch_size],
            )

    def pixel_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        self._check_split(split)
        self._check_batch_size(batch_size)
        x_all, y_all = self._data[split]
        for start in range(0, int(y_all.shape[0]), batch_size):
            x = self._eval_images(x_all[start : start + batch_size]).to(torch.float32) / 255.0
            yield (
                resize_batch(x, self.image_size).clamp_(0.0, 1.0),
                y_all[start : start + batch_size],
            )

    def _eval_images(self, images: torch.Tensor) -> torch.Tensor:
        """The protocol's evaluation transform of stored uint8 images (before the resize)."""
        if self.protocol.eval == "resize-centre-crop":
            return centre_crop_resize(images, self.protocol.size)
        return images
