"""CIFAR-10-C-style corruptions generated on the device (Hendrycks & Dietterich, ICLR 2019).

Each corruption takes a batch of images in [0, 1], shape (B, C, H, W) with C = 1 or 3, a
severity 1..5 and a :class:`torch.Generator` on the images' device, and returns the corrupted
batch in [0, 1], quantised to 8 bits as the published CIFAR-10-C arrays are (``np.uint8``
truncates). The parameters are those of Hendrycks's ``make_cifar_c.py`` (the small-image set).

Included: the corruptions that need no extra assets and no ImageMagick:
gaussian/shot/impulse/speckle noise, gaussian/defocus/glass/zoom blur, fog (plasma fractal),
brightness, contrast, saturate (RGB only), JPEG and pixelate. Left out: frost (photographs),
motion blur and snow (ImageMagick's motion blur), elastic transform (OpenCV's affine warp) and
spatter (OpenCV's morphology).

Where the original works on RGB and a dataset is grayscale, the corruption is applied to the
one channel (brightness: V = the grey level).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CORRUPTIONS",
    "Corruption",
    "corrupt",
    "corruption_names",
    "hsv_to_rgb",
    "rgb_to_hsv",
]

SEVERITIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Corruption:
    """One corruption: its function, its parameter per severity, and whether it needs colour."""

    name: str
    apply: Callable[[Tensor, Any, torch.Generator], Tensor]
    params: tuple[Any, ...]  # severity s uses params[s - 1]
    rgb_only: bool = False
    family: str = "noise"


# -- noise ------------------------------------------------------------------------------------

def _gaussian_noise(x: Tensor, scale: float, gen: torch.Generator) -> Tensor:
    return x + scale * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)


def _shot_noise(x: Tensor, photons: float, gen: torch.Generator) -> Tensor:
    return torch.poisson(x * photons, generator=gen) / photons


def _impulse_noise(x: Tensor, amount: float, gen: torch.Generator) -> Tensor:
    # scikit-image's random_noise(mode="s&p"): each value flipped with p=amount, half to 1, half to 0
    flipped = torch.rand(x.shape, generator=gen, device=x.device) < amount
    salted = torch.rand(x.shape, generator=gen, device=x.device) < 0.5
    out = torch.where(flipped & salted, torch.ones_like(x), x)
    return torch.where(flipped & ~salted, torch.zeros_like(x), out)


def _speckle_noise(x: Tensor, scale: float, gen: torch.Generator) -> Tensor:
    return x + x * scale * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)


# -- blur -------------------------------------------------------------------------------------

def _filter(x: Tensor, kernel: Tensor, mode: str) -> Tensor:
    """Correlate every channel with a square odd kernel, padding by ``mode`` (F.pad's names)."""
    b, c, h, w = x.shape
    r = kernel.shape[-1] // 2
    padded = F.pad(x.reshape(b * c, 1, h, w), (r, r, r, r), mode=mode)
    return F.conv2d(padded, kernel.to(x)[None, None]).reshape(b, c, h, w)


def gaussian_kernel_1d(sigma: float, radius: int) -> Tensor:
    """Normalised exp(-t^2 / (2 sigma^2)) at t = -radius..radius (float64)."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _gaussian_blur(x: Tensor, sigma: float, gen: torch.Generator) -> Tensor:
    # scikit-image's gaussian(): scipy.ndimage.gaussian_filter, mode "nearest", truncate 4
    k = gaussian_kernel_1d(sigma, int(4.0 * sigma + 0.5))
    return _filter(x, torch.outer(k, k), "replicate")


def defocus_kernel(radius: float, alias_blur: float) -> Tensor:
    """Hendrycks's ``disk``: a normalised 17x17 disk of ``radius``, blurred by a 3x3 Gaussian."""
    span = torch.arange(-8, 9, dtype=torch.float64)
    disk = ((span[:, None] ** 2 + span[None, :] ** 2) <= radius**2).to(torch.float64)
    disk /= disk.sum()
    # OpenCV's GaussianBlur(ksize=(3, 3), sigmaX): separable, borders reflected (101)
    g = gaussian_kernel_1d(alias_blur, 1)
    return _filter(disk[None, None], torch.outer(g, g), "reflect")[0, 0]


def _defocus_blur(x: Tensor, params: tuple[float, float], gen: torch.Generator) -> Tensor:
    kernel = defocus_kernel(*params)
    # its zero rim changes nothing but would need more padding than small images have
    nonzero = torch.nonzero(kernel)
    r = int((nonzero - kernel.shape[-1] // 2).abs().max())
    centre = kernel.shape[-1] // 2
    kernel = kernel[centre - r:centre + r + 1, centre - r:centre + r + 1]
    # OpenCV's filter2D: correlation, borders reflected without repeating the edge (101)
    return _filter(x, kernel, "reflect")


def glass_offsets(images: Tensor, delta: int, iterations: int, gen: torch.Generator) -> Tensor:
    """(iterations, positions, B, 2) offsets (dy, dx) in [-delta, delta) for :func:`_glass_blur`,
    positions in its order: rows from H - delta down to delta + 1, within them columns alike
    (NumPy's ``randint(-delta, delta)`` excludes +delta, so the draws lean up and left)."""
    h, w = images.shape[-2:]
    positions = (h - 2 * delta) * (w - 2 * delta)
    return torch.randint(-delta, delta, (iterations, max(positions, 0), images.shape[0], 2),
                         generator=gen, device=images.device)


def _glass_blur(x: Tensor, params: tuple[float, int, int], gen: torch.Generator) -> Tensor:
    sigma, delta, iterations = params
    h, w = x.shape[-2:]
    # blurred, then stored as 8-bit as the original (np.uint8 truncates)
    x = torch.floor(_gaussian_blur(x, sigma, gen).clamp(0, 1) * 255.0 + 1e-4) / 255.0
    offsets = glass_offsets(x, delta, iterations, gen)
    rows = range(h - delta, delta, -1)
    cols = range(w - delta, delta, -1)
    batch = torch.arange(x.shape[0], device=x.device)
    for it in range(iterations):
        for k, (r, c) in enumerate((r, c) for r in rows for c in cols):
            dy, dx = offsets[it, k, :, 0], offsets[it, k, :, 1]
            # the released code's "swap" x[h, w], x[h', w'] = x[h', w'], x[h, w] reads two views
            # of an RGB array, so it copies the pixel at (h', w') to (h, w) and leaves (h', w')
            x[batch, :, r, c] = x[batch, :, r + dy, c + dx]
    return _gaussian_blur(x, sigma, gen)


def zoom_factors(upper: float) -> np.ndarray:
    """The zoom factors of one severity, as the original draws them: ``np.arange(1, upper, .01)``."""
    return np.arange(1, upper, 0.01)


def clipped_zoom(x: Tensor, factor: float) -> Tensor:
    """Hendrycks's ``clipped_zoom``: the centre ceil(H / factor) square, zoomed by ``factor`` as
    scipy.ndimage.zoom(order=1) does (bilinear, corners aligned; output round(size * factor)),
    then the centre H x H (square images)."""
    h = x.shape[-1]
    crop = math.ceil(h / factor)
    top = (h - crop) // 2
    x = x[..., top:top + crop, top:top + crop]
    size = int(round(crop * factor))
    if size != crop:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)
    trim = (size - h) // 2
    return x[..., trim:trim + h, trim:trim + h]


def _zoom_blur(x: Tensor, upper: float, gen: torch.Generator) -> Tensor:
    factors = zoom_factors(upper)
    out = torch.zeros_like(x)
    for factor in factors:
        out += clipped_zoom(x, float(factor))
    return (x + out) / (len(factors) + 1)


# -- weather ----------------------------------------------------------------------------------

def plasma_fractal(
    batch: int, mapsize: int, wibbledecay: float, gen: torch.Generator, device: torch.device
) -> Tensor:
    """(batch, mapsize, mapsize) diamond-square height maps in [0, 1] (``mapsize`` a power of 2)."""
    if mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of two, got {mapsize}")
    grid = torch.zeros(batch, mapsize, mapsize, dtype=torch.float64, device=device)
    step, wibble = mapsize, 100.0

    def wibbled_mean(total: Tensor) -> Tensor:
        noise = torch.rand(total.shape, generator=gen, device=device, dtype=torch.float64)
        return total / 4 + wibble * (noise * 2 * wibble - wibble)

    while step >= 2:
        half = step // 2
        corners = grid[:, ::step, ::step]
        squares = corners + torch.roll(corners, -1, dims=1)
        squares = squares + torch.roll(squares, -1, dims=2)
        grid[:, half::step, half::step] = wibbled_mean(squares)
        centres = grid[:, half::step, half::step]
        corners = grid[:, ::step, ::step]
        left = centres + torch.roll(centres, 1, dims=1) + corners + torch.roll(corners, -1, dims=2)
        grid[:, ::step, half::step] = wibbled_mean(left)
        top = centres + torch.roll(centres, 1, dims=2) + corners + torch.roll(corners, -1, dims=1)
        grid[:, half::step, ::step] = wibbled_mean(top)
        step //= 2
        wibble /= wibbledecay
    flat = grid.flatten(1)
    grid = grid - flat.min(dim=1).values[:, None, None]
    return grid / grid.flatten(1).max(dim=1).values[:, None, None]


def _fog(x: Tensor, params: tuple[float, float], gen: torch.Generator) -> Tensor:
    strength, decay = params
    b, _, h, w = x.shape
    size = _next_pow2(max(h, w))  # 32 for CIFAR, as the original
    fractal = plasma_fractal(b, size, decay, gen, x.device)[:, None, :h, :w].to(x.dtype)
    peak = x.flatten(1).max(dim=1).values[:, None, None, None]
    return (x + strength * fractal) * peak / (peak + strength)


# -- photometric ------------------------------------------------------------------------------

def rgb_to_hsv(rgb: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> HSV in [0, 1] as scikit-image's ``rgb2hsv``."""
    r, g, b = rgb.unbind(1)
    v = rgb.max(dim=1).values
    delta = v - rgb.min(dim=1).values
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    s = torch.where(v > 0, delta / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    s = torch.where(delta > 0, s, torch.zeros_like(s))
    # where several channels hold the maximum, blue wins over green over red (scikit-image)
    h = torch.where(r == v, (g - b) / safe, torch.zeros_like(v))
    h = torch.where(g == v, 2.0 + (b - r) / safe, h)
    h = torch.where(b == v, 4.0 + (r - g) / safe, h)
    h = torch.where(delta > 0, torch.remainder(h / 6.0, 1.0), torch.zeros_like(h))
    return torch.stack([h, s, v], dim=1)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """(B, 3, H, W) HSV in [0, 1] -> RGB, as scikit-image's ``hsv2rgb``."""
    h, s, v = hsv.unbind(1)
    sector = torch.floor(h * 6.0)
    f = h * 6.0 - sector
    sector = torch.remainder(sector, 6).long()
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = torch.stack([
        torch.stack([v, t, p]), torch.stack([q, v, p]), torch.stack([p, v, t]),
        torch.stack([p, q, v]), torch.stack([t, p, v]), torch.stack([v, p, q]),
    ])  # (6 sectors, 3 channels, B, H, W)
    index = sector[None, None].expand(1, 3, *sector.shape)
    return torch.gather(table, 0, index)[0].movedim(0, 1)


def _brightness(x: Tensor, shift: float, gen: torch.Generator) -> Tensor:
    if x.shape[1] == 1:  # a grey pixel's V is its level; H and S are 0
        return (x + shift).clamp(0, 1)
    hsv = rgb_to_hsv(x)
    hsv[:, 2] = (hsv[:, 2] + shift).clamp(0, 1)
    return hsv_to_rgb(hsv)


def _saturate(x: Tensor, params: tuple[float, float], gen: torch.Generator) -> Tensor:
    hsv = rgb_to_hsv(x)
    hsv[:, 1] = (hsv[:, 1] * params[0] + params[1]).clamp(0, 1)
    return hsv_to_rgb(hsv)


def _contrast(x: Tensor, factor: float, gen: torch.Generator) -> Tensor:
    means = x.mean(dim=(2, 3), keepdim=True)  # per image and channel, as the original
    return (x - means) * factor + means


# -- digital ----------------------------------------------------------------------------------

def _jpeg(x: Tensor, quality: int, gen: torch.Generator) -> Tensor:
    """Encode and decode with PIL at ``quality``, as the original (on the CPU: PIL has no GPU)."""
    from PIL import Image

    out = []
    pixels = (x * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    mode = "L" if x.shape[1] == 1 else "RGB"
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if mode == "L" else image, mode=mode).save(
            buffer, "JPEG", quality=int(quality))
        buffer.seek(0)
        decoded = torch.from_numpy(np.array(Image.open(buffer).convert(mode)))
        out.append(decoded if mode == "RGB" else decoded[..., None])
    return torch.stack(out).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype) / 255.0


def box_resize_weights(size_in: int, size_out: int) -> Tensor:
    """(size_out, size_in) weights of PIL's BOX resampling along one axis."""
    scale = size_in / size_out
    support = 0.5 * max(scale, 1.0)
    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    for i in range(size_out):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), size_in)
        for j in range(lo, hi):
            # PIL's box filter: 1 on [-0.5, 0.5) of the input pixel's offset, in output units
            if -0.5 <= (j - centre + 0.5) / max(scale, 1.0) < 0.5:
                weights[i, j] = 1.0
        weights[i] /= weights[i].sum()
    return weights


def _box_resize(x: Tensor, height: int, width: int) -> Tensor:
    rows = box_resize_weights(x.shape[2], height).to(x)
    cols = box_resize_weights(x.shape[3], width).to(x)
    return rows @ x @ cols.T


def _pixelate(x: Tensor, factor: float, gen: torch.Generator) -> Tensor:
    h, w = x.shape[2], x.shape[3]
    small = _box_resize(x, int(h * factor), int(w * factor))
    return _box_resize(small, h, w)


CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption("gaussian-noise", _gaussian_noise, (0.04, 0.06, 0.08, 0.09, 0.10)),
    Corruption("shot-noise", _shot_noise, (500, 250, 100, 75, 50)),
    Corruption("impulse-noise", _impulse_noise, (0.01, 0.02, 0.03, 0.05, 0.07)),
    Corruption("speckle-noise", _speckle_noise, (0.06, 0.1, 0.12, 0.16, 0.2)),
    Corruption("gaussian-blur", _gaussian_blur, (0.4, 0.6, 0.7, 0.8, 1.0), family="blur"),
    Corruption("defocus-blur", _defocus_blur,
               ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)), family="blur"),
    Corruption("glass-blur", _glass_blur,
               ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)), family="blur"),
    Corruption("zoom-blur", _zoom_blur, (1.06, 1.11, 1.16, 1.21, 1.26), family="blur"),
    Corruption("fog", _fog, ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
               family="weather"),
    Corruption("brightness", _brightness, (0.05, 0.1, 0.15, 0.2, 0.3), family="weather"),
    Corruption("contrast", _contrast, (0.75, 0.5, 0.4, 0.3, 0.15), family="digital"),
    Corruption("saturate", _saturate, ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
               rgb_only=True, family="digital"),
    Corruption("jpeg", _jpeg, (80, 65, 58, 50, 40), family="digital"),
    Corruption("pixelate", _pixelate, (0.95, 0.9, 0.85, 0.75, 0.65), family="digital"),
)}


def corruption_names(channels: int = 3) -> list[str]:
    """The corruptions that apply to images with ``channels`` channels, in CIFAR-10-C's order."""
    return [n for n, c in CORRUPTIONS.items() if channels == 3 or not c.rgb_only]


def corrupt(images: Tensor, name: str, severity: int, generator: torch.Generator) -> Tensor:
    """Corrupt a batch of [0, 1] images; the result is quantised to 8 bits (truncated, as CIFAR-10-C).

    Args:
        images: (B, C, H, W) floats in [0, 1], C = 1 or 3.
        name: a key of :data:`CORRUPTIONS`.
        severity: 1..5.
        generator: a generator on the images' device (the draws of the random corruptions).
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; use one of {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be 1..5, got {severity}")
    spec = CORRUPTIONS[name]
    if spec.rgb_only and images.shape[1] != 3:
        raise ValueError(f"corruption {name!r} needs RGB images, got {images.shape[1]} channel(s)")
    out = spec.apply(images.to(torch.float32), spec.params[severity - 1], generator)
    # 1e-4 guards exact levels (k / 255 * 255 may land just below k) against truncation
    return torch.floor(out.clamp(0, 1) * 255.0 + 1e-4) / 255.0


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()
