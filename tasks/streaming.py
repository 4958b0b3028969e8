"""Large image folders: files decoded every epoch by DataLoader workers, pinned, sent to the device.

Workers return uint8 images (4x less to pin and copy than float); normalisation happens on the
device as on the in-memory path. The order and every random choice of an epoch come from the
same :func:`~podbench.tasks.augment.epoch_plan` as the in-memory path, carried by the sampler, so
a run replays exactly whatever the number of workers, and a small folder streamed gives the same
batches as held in memory.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from podbench.tasks.archs import SMALL_STEM_MAX
from podbench.tasks.augment import epoch_plan, normalise, random_crop_flip
from podbench.tasks.datasets import DatasetInfo, FileSplit
from podbench.tasks.task import Batch, Task

__all__ = ["StreamingTask"]

# (index, top, left, flip, seed): everything a worker needs to augment one sample reproducibly
_Item = tuple[int, int, int, bool, int]


def _random_resized_crop_box(
    height: int, width: int, gen: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (top, left, h, w), drawn from ``gen``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(3, generator=gen).tolist()
        target = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        aspect = math.exp(log_ratio[0] + u[1] * (log_ratio[1] - log_ratio[0]))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return top, left, h, w
    # fallback: the central crop with the ratio clamped into range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class _ImageFiles(Dataset):
    """Decodes one file per item and applies the augmentation the sampler chose for it."""

    def __init__(self, split: FileSplit, size: int, *, train: bool, padding: int) -> None:
        self.paths = split.paths
        self.labels = split.labels
        self.size = size
        self.train = train
        self.padding = padding
        self.large = size > SMALL_STEM_MAX

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: _Item) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision.transforms.v2 import functional as TF

        from podbench.tasks.formats import _decode_one, _fit, read_bytes

        index, top, left, flip, seed = item
        path = self.paths[index]
        img = _decode_one(path, read_bytes(path))
        if self.large and self.train:  # ImageNet-style: random resized crop, then flip
            box = _random_resized_crop_box(img.shape[-2], img.shape[-1],
                                           torch.Generator().manual_seed(seed))
            img = TF.resized_crop(img, *box, [self.size, self.size], antialias=True)
            img = TF.horizontal_flip(img) if flip else img
        elif self.large:  # ImageNet-style evaluation: resize to 256/224 of the size, centre crop
            img = TF.center_crop(TF.resize(img, round(self.size * 256 / 224), antialias=True),
                                 [self.size, self.size])
        else:
            img = _fit(img, self.size)
            if self.train and (self.padding or flip):
                offsets = torch.tensor([[top, left]]) if self.padding else None
                img = random_crop_flip(img[None], offsets, torch.tensor([flip]),
                                       self.padding)[0]
        return img, self.labels[index]


class _PlanSampler(Sampler[_Item]):
    """Yields (index, top, left, flip, seed) per sample; ``set_epoch`` picks the epoch's plan.

    It runs in the main process, so a persistent worker pool sees each new epoch's choices.
    """

    def __init__(self, n: int, padding: int, hflip: bool, train: bool) -> None:
        self.n, self.padding, self.hflip, self.train = n, padding, hflip, train
        self.seed = 0
        self.epoch = 0

    def set_epoch(self, seed: int, epoch: int) -> None:
        self.seed, self.epoch = seed, epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[_Item]:
        if not self.train:
            for i in range(self.n):
                yield i, 0, 0, False, 0
            return
        plan = epoch_plan(self.n, self.seed, self.epoch, padding=self.padding, hflip=self.hflip,
                          sample_seeds=True)
        order = plan.order.tolist()
        offsets = plan.offsets.tolist() if plan.offsets is not None else [[0, 0]] * self.n
        flips = plan.flips.tolist() if plan.flips is not None else [False] * self.n
        seeds = plan.seeds.tolist() if plan.seeds is not None else [0] * self.n
        for pos, index in enumerate(order):
            yield index, offsets[pos][0], offsets[pos][1], flips[pos], seeds[pos]


class StreamingTask(Task):
    """A dataset too large to hold: DataLoader workers with pinned memory and persistent workers.

    Training uses crop-with-padding + flip for images up to 64 px (as the in-memory path) and
    RandomResizedCrop + flip above; evaluation resizes and centre-crops.
    """

    def __init__(
        self,
        info: DatasetInfo,
        classes: tuple[str, ...],
        splits: dict[str, FileSplit],
        *,
        device: torch.device,
        augment: bool,
        image_size: int,
        workers: int | None = None,
    ) -> None:
        self.info = info
        self.classes = classes
        self.device = device
        self.augment = augment
        self.image_size = int(image_size)
        self._splits = splits
        self.num_train = len(splits["train"].labels)
        self.workers = min(8, os.cpu_count() or 1) if workers is None else int(workers)
        self._loaders: dict[tuple, tuple[DataLoader, _PlanSampler]] = {}
        self._mean = torch.tensor(info.mean, dtype=torch.float32, device=device)
        self._std = torch.tensor(info.std, dtype=torch.float32, device=device)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self._splits)

    def num_samples(self, split: str) -> int:
        self._check_split(split)
        return len(self._splits[split].labels)

    def _loader(self, split: str, batch_size: int, train: bool, drop_last: bool
                ) -> tuple[DataLoader, _PlanSampler]:
        key = (split, batch_size, train, drop_last)
        if key not in self._loaders:  # one pool per shape of use: persistent across epochs
            pad = self.info.crop_padding if train and self.augment else 0
            data = _ImageFiles(self._splits[split], self.image_size, train=train, padding=pad)
            sampler = _PlanSampler(len(data), pad, train and self.augment and self.info.hflip,
                                   train)
            loader = DataLoader(
                data, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                num_workers=self.workers, pin_memory=self.device.type == "cuda",
                persistent_workers=self.workers > 0,
                prefetch_factor=4 if self.workers > 0 else None,
            )
            self._loaders[key] = (loader, sampler)
        return self._loaders[key]

    def _finish(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        return normalise(images, self._mean, self._std)

    def train_batches(
        self, batch_size: int, *, seed: int, epoch: int, drop_last: bool = False
    ) -> Iterator[Batch]:
        self._check_batch_size(batch_size)
        loader, sampler = self._loader("train", batch_size, True, drop_last)
        sampler.set_epoch(seed, epoch)
        for x, y in loader:
            yield self._finish(x), y.to(self.device, non_blocking=True)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        self._check_split(split)
        self._check_batch_size(batch_size)
        loader, _ = self._loader(split, batch_size, False, False)
        for x, y in loader:
            yield self._finish(x), y.to(self.device, non_blocking=True)

    def pixel_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        self._check_split(split)
        self._check_batch_size(batch_size)
        loader, _ = self._loader(split, batch_size, False, False)
        for x, y in loader:
            yield (x.to(self.device, non_blocking=True).to(torch.float32) / 255.0,
                   y.to(self.device, non_blocking=True))

    def close(self) -> None:
        """Stop the worker pools (they also stop when the task is garbage-collected)."""
        for loader, _ in self._loaders.values():
            it = getattr(loader, "_iterator", None)
            if it is not None and hasattr(it, "_shutdown_workers"):
                it._shutdown_workers()
        self._loaders.clear()
