"""Large image folders: files decoded every epoch by DataLoader workers, pinned, sent to the device.

Workers return uint8 images (4x less to pin and copy than float); normalisation happens on the
device as on the in-memory path. The order and every random choice of an epoch come from the
same :func:`~podbench.tasks.augment.epoch_plan` as the in-memory path, carried by the sampler, so
a run replays exactly whatever the number of workers, and a small folder streamed gives the same
batches as held in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from podbench.tasks.augment import (
    Protocol,
    centre_crop_resize,
    epoch_plan,
    image_protocol,
    normalise,
    random_crop_flip,
    random_resized_crop,
)
from podbench.tasks.datasets import DatasetInfo, FileSplit
from podbench.tasks.task import Batch, Task

__all__ = ["StreamingTask"]

# (index, top, left, flip, seed): everything a worker needs to augment one sample reproducibly
_Item = tuple[int, int, int, bool, int]


class _ImageFiles(Dataset):
    """Decodes one file per item and applies the task's protocol with the sampler's choices."""

    def __init__(self, split: FileSplit, protocol: Protocol, *, train: bool) -> None:
        self.paths = split.paths
        self.labels = split.labels
        self.protocol = protocol
        self.train = train

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: _Item) -> tuple[torch.Tensor, torch.Tensor]:
        from podbench.tasks.formats import _decode_one, _fit, read_bytes

        index, top, left, flip, seed = item
        path = self.paths[index]
        img = _decode_one(path, read_bytes(path))
        p, size = self.protocol, self.protocol.size
        if self.train and p.train == "random-resized-crop":
            img = random_resized_crop(img, seed, size)
            img = img.flip(-1) if flip else img
        elif not self.train and p.eval == "resize-centre-crop":
            img = centre_crop_resize(img, size)
        else:
            img = _fit(img, size)
            if self.train and (p.padding or flip):
                offsets = torch.tensor([[top, left]]) if p.padding else None
                img = random_crop_flip(
                    img[None], offsets, torch.tensor([flip]), p.padding, p.pad_mode
                )[0]
        return img, self.labels[index]


class _PlanSampler(Sampler[_Item]):
    """Yields (index, top, left, flip, seed) per sample; ``set_epoch`` picks the epoch's plan.

    It runs in the main process, so a persistent worker pool sees each new epoch's choices.
    """

    def __init__(self, n: int, protocol: Protocol, train: bool) -> None:
        self.n, self.train = n, train
        self.padding, self.hflip = protocol.padding, protocol.hflip
        self.alternating_flip = protocol.alternating_flip
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
        plan = epoch_plan(
            self.n,
            self.seed,
            self.epoch,
            padding=self.padding,
            hflip=self.hflip,
            sample_seeds=True,
            alternating_flip=self.alternating_flip,
        )
        order = plan.order.tolist()
        offsets = plan.offsets.tolist() if plan.offsets is not None else [[0, 0]] * self.n
        flips = plan.flips.tolist() if plan.flips is not None else [False] * self.n
        seeds = plan.seeds.tolist() if plan.seeds is not None else [0] * self.n
        for pos, index in enumerate(order):
            yield index, offsets[pos][0], offsets[pos][1], flips[pos], seeds[pos]


class StreamingTask(Task):
    """A dataset too large to hold: DataLoader workers with pinned memory and persistent workers.

    The images get the same :class:`~podbench.tasks.augment.Protocol` as held in memory
    (pad-crop up to 64 px, random resized crop and a centre-crop evaluation above).
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
        channels_last: bool = False,
        policy: str = "dataset",
    ) -> None:
        self.info = info
        self.classes = classes
        self.device = device
        self.augment = augment
        self.image_size = int(image_size)
        self.channels_last = channels_last
        # the size the files are decoded at, as held in memory: the protocol's
        self.protocol = image_protocol(
            int(info.image_size or image_size),
            self.image_size,
            augment=augment,
            crop_padding=info.crop_padding,
            hflip=info.hflip,
            policy=policy,
        )
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

    @property
    def data_bytes(self) -> int:
        return sum(s.labels.nbytes for s in self._splits.values())  # images stay in their files

    def _loader(
        self, split: str, batch_size: int, train: bool, drop_last: bool
    ) -> tuple[DataLoader, _PlanSampler]:
        key = (split, batch_size, train, drop_last)
        if key not in self._loaders:  # one pool per shape of use: persistent across epochs
            data = _ImageFiles(self._splits[split], self.protocol, train=train)
            sampler = _PlanSampler(len(data), self.protocol, train)
            loader = DataLoader(
                data,
                batch_size=batch_size,
                sampler=sampler,
                drop_last=drop_last,
                num_workers=self.workers,
                pin_memory=self.device.type == "cuda",
                persistent_workers=self.workers > 0,
                prefetch_factor=4 if self.workers > 0 else None,
            )
            self._loaders[key] = (loader, sampler)
        return self._loaders[key]

    def _finish(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        return normalise(images, self._mean, self._std, self.memory_format)

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
            yield (
                x.to(self.device, non_blocking=True).to(torch.float32) / 255.0,
                y.to(self.device, non_blocking=True),
            )

    def close(self) -> None:
        """Stop the worker pools (they also stop when the task is garbage-collected)."""
        for loader, _ in self._loaders.values():
            it = getattr(loader, "_iterator", None)
            if it is not None and hasattr(it, "_shutdown_workers"):
                it._shutdown_workers()
        self._loaders.clear()
