"""Batched image operations on the training device: random crop with padding, flip, normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["epoch_generator", "normalise", "random_crop_flip", "resize_batch"]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator that depends only on ``(seed, epoch)``, so runs replay on any device."""
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


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
    return (images.float() / 255.0 - mean_t) / std_t
