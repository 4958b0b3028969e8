"""Batched image operations on the training device: random crop with padding, flip, normalisation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["EpochPlan", "epoch_generator", "epoch_plan", "normalise", "random_crop_flip",
           "resize_batch"]


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
    n: int, seed: int, epoch: int, *, padding: int, hflip: bool, sample_seeds: bool = False
) -> EpochPlan:
    """Draw one epoch's order and augmentation choices, on the CPU, from ``(seed, epoch)`` only.

    Drawn per sample (not per batch), so the epoch is the same for any batch size and device, and
    the in-memory and streaming paths see the same crops.
    """
    gen = epoch_generator(seed, epoch)
    order = torch.randperm(n, generator=gen)
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=gen) if padding > 0 else None
    flips = (torch.rand(n, generator=gen) < 0.5) if hflip else None
    seeds = torch.randint(0, 2**62, (n,), generator=gen) if sample_seeds else None
    return EpochPlan(order, offsets, flips, seeds)


def random_crop_flip(
    images: torch.Tensor,
    offsets: torch.Tensor | None,
    flips: torch.Tensor | None,
    padding: int,
) -> torch.Tensor:
    """Crop each image from its zero-padded copy at ``offsets`` and mirror those with ``flips``.

    Equals torchvision's ``RandomCrop(size, padding)`` followed by ``RandomHorizontalFlip`` per
    image, done as two gathers over the whole batch.

    Args:
        images: (B, C, H, W) batch, any dtype (uint8 here).
        offsets: (B, 2) top/left offsets in ``[0, 2 * padding]``; None: no crop.
        flips: (B,) bool; None: no flip.
        padding: zero padding on every side.

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


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of a float batch to ``size`` x ``size``."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)


def normalise(
    images: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """uint8 (or 0..255 float) batch -> float32 ``(x / 255 - mean) / std`` per channel."""
    device = images.device
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    # one conversion and two in-place passes: x * 1/(255 std) - mean/std
    out = images.to(torch.float32, copy=True)
    return out.mul_(1.0 / (255.0 * std_t)).sub_(mean_t / std_t)
