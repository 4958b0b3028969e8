"""Batched image operations on the training device: random crop with padding, flip, normalisation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from podbench.tasks.archs import SMALL_STEM_MAX

__all__ = [
    "EpochPlan",
    "Protocol",
    "centre_crop_resize",
    "epoch_generator",
    "epoch_plan",
    "image_protocol",
    "normalise",
    "random_crop_flip",
    "random_resized_crop",
    "resize_batch",
    "run_flips",
    "tta_views",
]


@dataclass(frozen=True)
class Protocol:
    """What a task does to the images: fixed by the dataset and the run's settings only.

    Never by the data path (held in memory or streamed, chosen by a memory threshold), so a
    suite gives the same protocol on machines with different memory.

    Attributes:
        size: height = width of the batches' images.
        train: ``"pad-crop"`` (random crop of the zero-padded image), ``"random-resized-crop"``
            (ImageNet style, drawn from the image as stored), or ``"none"``; then resized to
            ``size`` if needed.
        padding: zero padding of the pad-crop (0 otherwise).
        hflip: random horizontal flips in training.
        eval: ``"resize"`` (to ``size``) or ``"resize-centre-crop"`` (shorter side to
            ``size * 256 / 224``, then the central ``size`` x ``size``).
        pad_mode: how the pad-crop pads: ``"constant"`` (zeros) or ``"reflect"`` (airbench's
            translation).
        alternating_flip: each image's flip is drawn once per run and inverted every other
            epoch (airbench's alternating flip), instead of drawn afresh each epoch.
    """

    size: int
    train: Literal["none", "pad-crop", "random-resized-crop"]
    padding: int
    hflip: bool
    eval: Literal["resize", "resize-centre-crop"]
    pad_mode: Literal["constant", "reflect"] = "constant"
    alternating_flip: bool = False


AIRBENCH_TRANSLATE = 2  # airbench94's translation: up to 2 pixels, reflect padding


def image_protocol(
    stored_size: int,
    size: int,
    *,
    augment: bool,
    crop_padding: int,
    hflip: bool,
    policy: str = "dataset",
) -> Protocol:
    """The protocol of images stored at ``stored_size`` px and batched at ``size`` px.

    Images stored larger than ``SMALL_STEM_MAX`` px (64) get the ImageNet protocol (random
    resized crop, resize and centre crop to evaluate); smaller ones the CIFAR one (pad-crop).
    ``policy="airbench"``: airbench94's training augmentation instead of the dataset's, for any
    stored size: alternating flips and translations of up to 2 pixels with reflect padding.
    """
    if policy == "airbench":
        pad = AIRBENCH_TRANSLATE if augment else 0
        return Protocol(
            size,
            "pad-crop" if pad else "none",
            pad,
            augment,
            "resize",
            pad_mode="reflect",
            alternating_flip=augment,
        )
    if stored_size > SMALL_STEM_MAX:
        return Protocol(
            size,
            "random-resized-crop" if augment else "none",
            0,
            augment and hflip,
            "resize-centre-crop",
        )
    pad = crop_padding if augment else 0
    return Protocol(size, "pad-crop" if pad else "none", pad, augment and hflip, "resize")


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator that depends only on ``(seed, epoch)``, so runs replay on any device."""
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


@dataclass(frozen=True)
class EpochPlan:
    """Order and per-sample random choices of one training epoch.

    Attributes:
        order: (N,) permutation of the training samples.
        offsets: (N, 2) crop offsets in ``[0, 2 * padding]`` per position of ``order``, or None.
        flips: (N,) bool per position of ``order``, or None.
        seeds: (N,) int64 per-sample seeds for augmentations drawn in workers, or None.
    """

    order: torch.Tensor
    offsets: torch.Tensor | None
    flips: torch.Tensor | None
    seeds: torch.Tensor | None = None


def epoch_plan(
    n: int,
    seed: int,
    epoch: int,
    *,
    padding: int,
    hflip: bool,
    sample_seeds: bool = False,
    alternating_flip: bool = False,
) -> EpochPlan:
    """Draw one epoch's order and augmentation choices, on the CPU, from ``(seed, epoch)`` only.

    Drawn per sample (not per batch), so the epoch is the same for any batch size and device, and
    the in-memory and streaming paths see the same crops. ``alternating_flip``: image ``i``
    (by its index in the training split) is flipped when its once-per-run draw, inverted in odd
    epochs, says so: every image is seen both ways in any two consecutive epochs.
    """
    gen = epoch_generator(seed, epoch)
    order = torch.randperm(n, generator=gen)
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=gen) if padding > 0 else None
    flips = (torch.rand(n, generator=gen) < 0.5) if hflip else None
    seeds = torch.randint(0, 2**62, (n,), generator=gen) if sample_seeds else None
    if hflip and alternating_flip:
        flips = run_flips(n, seed)[order] ^ bool(epoch % 2)
    return EpochPlan(order, offsets, flips, seeds)


def run_flips(n: int, seed: int) -> torch.Tensor:
    """(n,) bool: each training image's flip in even epochs, drawn once per run from ``seed``."""
    state = np.random.SeedSequence([int(seed), 2**32 - 1]).generate_state(1, dtype=np.uint64)[0]
    gen = torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
    return torch.rand(n, generator=gen) < 0.5


def random_crop_flip(
    images: torch.Tensor,
    offsets: torch.Tensor | None,
    flips: torch.Tensor | None,
    padding: int,
    pad_mode: str = "constant",
) -> torch.Tensor:
    """Crop each image from its padded copy at ``offsets`` and mirror those with ``flips``.

    Equals torchvision's ``RandomCrop(size, padding, padding_mode=pad_mode)`` followed by
    ``RandomHorizontalFlip`` per image, done as two gathers over the whole batch.

    Args:
        images: (B, C, H, W) batch, any dtype (uint8 here).
        offsets: (B, 2) top/left offsets in ``[0, 2 * padding]``; None: no crop.
        flips: (B,) bool; None: no flip.
        padding: padding on every side.
        pad_mode: ``"constant"`` (zeros) or ``"reflect"`` (mirrored without the edge pixel).

    Returns:
        A (B, C, H, W) batch of the same dtype.
    """
    b, c, h, w = images.shape
    device = images.device
    if offsets is None or padding == 0:
        source = images
        top = torch.zeros(b, dtype=torch.long, device=device)
        left = top
    else:
        if pad_mode == "reflect":  # reflect padding is not implemented for integer tensors
            source = F.pad(images.float(), (padding,) * 4, mode="reflect").to(images.dtype)
        else:
            source = F.pad(images, (padding, padding, padding, padding))
        top, left = offsets[:, 0], offsets[:, 1]
    rows = top[:, None] + torch.arange(h, device=device)
    cols = left[:, None] + torch.arange(w, device=device)
    if flips is not None:
        # a mirrored crop reads the same columns right to left
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    wp = source.shape[3]
    out = torch.gather(source, 2, rows[:, None, :, None].expand(b, c, h, wp))
    return torch.gather(out, 3, cols[:, None, None, :].expand(b, c, h, w))


def _random_resized_crop_box(
    height: int,
    width: int,
    gen: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
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


def random_resized_crop(image: torch.Tensor, seed: int, size: int) -> torch.Tensor:
    """One (C, H, W) image's RandomResizedCrop at ``size``, its box drawn from ``seed`` alone."""
    from torchvision.transforms.v2 import functional as TF

    box = _random_resized_crop_box(
        image.shape[-2], image.shape[-1], torch.Generator().manual_seed(int(seed))
    )
    return TF.resized_crop(image, *box, [size, size], antialias=True)


def centre_crop_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """ImageNet-style evaluation: shorter side to ``size * 256 / 224``, then the centre square."""
    from torchvision.transforms.v2 import functional as TF

    resized = TF.resize(images, round(size * 256 / 224), antialias=True)
    return TF.center_crop(resized, [size, size])


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of a float batch to ``size`` x ``size``."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(
        images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )


def normalise(
    images: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """uint8 (or 0..255 float) batch -> float32 ``(x / 255 - mean) / std`` per channel.

    ``memory_format``: the layout of the result (``torch.channels_last`` for networks that run
    channels-last), made by the conversion to float32 itself: no further copy.
    """
    device = images.device
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    # one conversion and two in-place passes: x * 1/(255 std) - mean/std
    out = torch.empty_like(images, dtype=torch.float32, memory_format=memory_format)
    out.copy_(images)
    return out.mul_(1.0 / (255.0 * std_t)).sub_(mean_t / std_t)


def tta_views(x: torch.Tensor) -> list[tuple[float, torch.Tensor]]:
    """airbench94's test-time augmentation (its level 2): (weight, view) pairs of a batch.

    The image and its mirror (1/4 each), and both of those translated by one pixel up-left and
    by one down-right, from a reflect-padded copy (1/8 each): the weights sum to 1, and the
    weighted sum of a network's outputs over the views is airbench's averaged output.
    """
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = (padded[..., 0:h, 0:w], padded[..., 2 : h + 2, 2 : w + 2])
    views = [(0.25, x), (0.25, x.flip(-1))]
    for view in shifted:
        views += [(0.125, view), (0.125, view.flip(-1))]
    return views
