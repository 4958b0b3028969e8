"""CIFAR-10-C-style corruptions generated on the device (Hendrycks & Dietterich, ICLR 2019).

Each corruption takes a batch of images in [0, 1], shape (B, C, H, W) with C = 1 or 3, a
severity 1..5 and a CPU :class:`torch.Generator`, and returns the corrupted batch in [0, 1],
quantised to 8 bits as the published CIFAR-10-C arrays are. The parameters are those of
Hendrycks's ``make_cifar_c.py`` (the small-image set).

As the original, the images are read as 8-bit levels (``np.array(img) / 255.``), every
corruption computes in float64 and the result is truncated to 8 bits (``np.uint8`` of
``clip(x, 0, 1) * 255``) without any guard; pixelate resizes with PIL's fixed-point box filter,
one axis at a time, rounding after each pass, as ``Image.resize(..., BOX)`` does. Random draws
come from the CPU generator (and are moved to the images' device), so a seed gives the same
corruption on a CPU and on a GPU; the arithmetic after the draws may still differ by a level
where the devices round differently.

The 15 corruptions of the benchmark (:data:`BENCHMARK`, CIFAR-10-C's order) less frost, which
needs photographs of frost the package does not ship: gaussian/shot/impulse noise,
defocus/glass/motion/zoom blur, snow, fog, brightness, contrast, elastic transform, pixelate
and JPEG. ImageMagick's motion blur (of motion blur and snow) is written out as ImageMagick
computes it: a one-sided Gaussian of ``2 * radius + 1`` taps along the angle, edge pixels
repeated. The elastic transform's affine warp (OpenCV's ``warpAffine``, reflected borders)
and displacement (scipy's ``map_coordinates``) are bilinear ``grid_sample`` passes; OpenCV
quantises the affine warp's sampling positions to 1/32 pixel, this code does not. The held-out
extras (not in the benchmark's mean): speckle noise, gaussian blur and saturate (RGB only);
spatter needs OpenCV's Canny edges, distance transform and histogram equalisation and is left
out.

Where the original works on RGB and a dataset is grayscale, the corruption is applied to the
one channel (brightness: V = the grey level; snow: the grey image is its own luma).
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
    "BENCHMARK",
    "CORRUPTIONS",
    "Corruption",
    "corrupt",
    "corruption_names",
    "elastic_draws",
    "hsv_to_rgb",
    "motion_blur_taps",
    "rgb_to_hsv",
]

SEVERITIES = (1, 2, 3, 4, 5)
# the 15 corruptions of CIFAR-10-C's benchmark, in its order; frost is not generated here
BENCHMARK = (
    "gaussian-noise",
    "shot-noise",
    "impulse-noise",
    "defocus-blur",
    "glass-blur",
    "motion-blur",
    "zoom-blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic-transform",
    "pixelate",
    "jpeg",
)
PIL_PRECISION_BITS = 22  # Pillow's Resample.c: 32 - 8 - 2 bits for 8-bit images


@dataclass(frozen=True)
class Corruption:
    """One corruption: its function, its parameter per severity, and whether it needs colour.

    ``levels``: the function returns 8-bit levels 0..255 itself (PIL, ImageMagick), not [0, 1].
    """

    name: str
    apply: Callable[[Tensor, Any, torch.Generator], Tensor]
    params: tuple[Any, ...]  # severity s uses params[s - 1]
    rgb_only: bool = False
    family: str = "noise"
    levels: bool = False

    @property
    def benchmark(self) -> bool:
        """One of the benchmark's 15 (else a held-out extra)."""
        return self.name in BENCHMARK


# -- random draws: on the CPU generator, moved to the images' device ------------------------


def _normal(shape: tuple[int, ...], gen: torch.Generator, like: Tensor) -> Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(like.device)


def _uniform(shape: tuple[int, ...], gen: torch.Generator, like: Tensor) -> Tensor:
    return torch.rand(shape, generator=gen, dtype=torch.float64).to(like.device)


# -- noise ------------------------------------------------------------------------------------


def _gaussian_noise(x: Tensor, scale: float, gen: torch.Generator) -> Tensor:
    return x + scale * _normal(x.shape, gen, x)


def _shot_noise(x: Tensor, photons: float, gen: torch.Generator) -> Tensor:
    return torch.poisson((x * photons).cpu(), generator=gen).to(x.device) / photons


def _impulse_noise(x: Tensor, amount: float, gen: torch.Generator) -> Tensor:
    # scikit-image's random_noise(mode="s&p"): each value flipped with p=amount, half to 1, half to 0
    flipped = _uniform(x.shape, gen, x) < amount
    salted = _uniform(x.shape, gen, x) < 0.5
    out = torch.where(flipped & salted, torch.ones_like(x), x)
    return torch.where(flipped & ~salted, torch.zeros_like(x), out)


def _speckle_noise(x: Tensor, scale: float, gen: torch.Generator) -> Tensor:
    return x + x * scale * _normal(x.shape, gen, x)


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
    # scikit-image's gaussian(): scipy.ndimage.gaussian_filter, mode "nearest", truncate 4,
    # one axis after the other as scipy filters
    k = gaussian_kernel_1d(sigma, int(4.0 * sigma + 0.5)).to(x)
    b, c, h, w = x.shape
    r = k.numel() // 2
    flat = x.reshape(b * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return flat.reshape(b, c, h, w)


def _symmetric_smooth(field: Tensor, sigma: float, truncate: float) -> Tensor:
    """scipy's gaussian_filter(mode="reflect") of (B, H, W) maps: axis by axis, edges mirrored
    with the edge pixel repeated (d c b a | a b c d), any radius."""
    if sigma == 0:
        return field
    k = gaussian_kernel_1d(sigma, int(truncate * sigma + 0.5)).to(field)
    r = k.numel() // 2
    for dim in (1, 2):
        n = field.shape[dim]
        index = torch.remainder(torch.arange(-r, n + r), 2 * n)
        index = torch.where(index >= n, 2 * n - 1 - index, index).to(field.device)
        padded = field.index_select(dim, index)
        total = k[0] * padded.narrow(dim, 0, n)
        for i in range(1, k.numel()):
            total = total + k[i] * padded.narrow(dim, i, n)
        field = total
    return field


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
    kernel = kernel[centre - r : centre + r + 1, centre - r : centre + r + 1]
    # OpenCV's filter2D: correlation, borders reflected without repeating the edge (101)
    return _filter(x, kernel, "reflect")


def glass_offsets(images: Tensor, delta: int, iterations: int, gen: torch.Generator) -> Tensor:
    """(iterations, positions, B, 2) offsets (dy, dx) in [-delta, delta) for :func:`_glass_blur`,
    positions in its order: rows from H - delta down to delta + 1, within them columns alike
    (NumPy's ``randint(-delta, delta)`` excludes +delta, so the draws lean up and left)."""
    h, w = images.shape[-2:]
    positions = (h - 2 * delta) * (w - 2 * delta)
    return torch.randint(
        -delta, delta, (iterations, max(positions, 0), images.shape[0], 2), generator=gen
    ).to(images.device)


def _glass_blur(x: Tensor, params: tuple[float, int, int], gen: torch.Generator) -> Tensor:
    sigma, delta, iterations = params
    h, w = x.shape[-2:]
    # blurred, then stored as 8-bit as the original (np.uint8 truncates)
    x = torch.floor(_gaussian_blur(x, sigma, gen) * 255.0) / 255.0
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


def motion_blur_taps(radius: float, sigma: float, angle: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """ImageMagick's MotionBlurImage kernel for each image's ``angle`` (degrees, (B,)):
    weights exp(-i^2 / (2 sigma^2)) of i = 0 .. 2 ceil(radius), normalised, and the integer
    offsets (dy, dx) = (ceil(i sin a - 1/2), ceil(i cos a - 1/2)) of tap i, each (B, taps)."""
    i = torch.arange(2 * math.ceil(radius) + 1, dtype=torch.float64)
    weights = torch.exp(-(i**2) / (2.0 * sigma**2))
    a = torch.deg2rad(angle.to(torch.float64).cpu())[:, None]
    dy = torch.ceil(i * torch.sin(a) - 0.5).long()
    dx = torch.ceil(i * torch.cos(a) - 0.5).long()
    return weights / weights.sum(), dy, dx


def _motion_blur_levels(levels: Tensor, radius: float, sigma: float, angle: Tensor) -> Tensor:
    """Motion blur of 8-bit levels (B, C, H, W), rounded back to 8 bits (ImageMagick's PNG)."""
    weights, dy, dx = motion_blur_taps(radius, sigma, angle)
    b, _, h, w = levels.shape
    dev = levels.device
    out = torch.zeros_like(levels)
    batch = torch.arange(b, device=dev)[:, None, None]
    for t in range(weights.numel()):
        # the image read at (y + dy, x + dx); beyond the border the edge pixel (virtual "edge")
        rows = (torch.arange(h)[None, :] + dy[:, t : t + 1]).clamp(0, h - 1).to(dev)
        cols = (torch.arange(w)[None, :] + dx[:, t : t + 1]).clamp(0, w - 1).to(dev)
        shifted = levels[batch, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
        out += float(weights[t]) * shifted.permute(0, 3, 1, 2)
    return torch.floor(out.clamp(0, 255) + 0.5)


def _motion_blur(x: Tensor, params: tuple[float, float], gen: torch.Generator) -> Tensor:
    angle = _uniform((x.shape[0],), gen, x).cpu() * 90.0 - 45.0  # uniform(-45, 45)
    return _motion_blur_levels(torch.round(x * 255.0), *params, angle)


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
    x = x[..., top : top + crop, top : top + crop]
    size = int(round(crop * factor))
    if size != crop:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)
    trim = (size - h) // 2
    return x[..., trim : trim + h, trim : trim + h]


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
    """(batch, mapsize, mapsize) diamond-square height maps in [0, 1] (``mapsize`` a power of 2),
    drawn on the CPU generator."""
    if mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of two, got {mapsize}")
    grid = torch.zeros(batch, mapsize, mapsize, dtype=torch.float64)
    step, wibble = mapsize, 100.0

    def wibbled_mean(total: Tensor) -> Tensor:
        noise = torch.rand(total.shape, generator=gen, dtype=torch.float64)
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
    return (grid / grid.flatten(1).max(dim=1).values[:, None, None]).to(device)


def _fog(x: Tensor, params: tuple[float, float], gen: torch.Generator) -> Tensor:
    strength, decay = params
    b, _, h, w = x.shape
    size = _next_pow2(max(h, w))  # 32 for CIFAR, as the original
    fractal = plasma_fractal(b, size, decay, gen, x.device)[:, None, :h, :w].to(x.dtype)
    peak = x.flatten(1).max(dim=1).values[:, None, None, None]
    return (x + strength * fractal) * peak / (peak + strength)


def _luma(x: Tensor) -> Tensor:
    """(B, 1, H, W) grey of RGB (OpenCV's RGB2GRAY, ITU-R 601-2), or the one channel itself."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
    return (x * weights.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


def _snow(x: Tensor, params: tuple[float, ...], gen: torch.Generator) -> Tensor:
    loc, scale, zoom, threshold, radius, sigma, keep = params
    b, _, h, w = x.shape
    layer = loc + scale * _normal((b, 1, h, w), gen, x)
    layer = clipped_zoom(layer, zoom)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer)
    layer = torch.floor(layer.clamp(0, 1) * 255.0)  # the 8-bit PIL image ImageMagick blurs
    angle = _uniform((b,), gen, x).cpu() * 90.0 - 135.0  # uniform(-135, -45): falling
    layer = _motion_blur_levels(layer, radius, sigma, angle) / 255.0
    x = keep * x + (1 - keep) * torch.maximum(x, _luma(x) * 1.5 + 0.5)
    return x + layer + torch.rot90(layer, 2, dims=(2, 3))


def _elastic_params(params: tuple[float, float, float], size: int) -> tuple[float, float, float]:
    return tuple(p * size for p in params)  # type: ignore[return-value]


def elastic_draws(
    images: Tensor, params: tuple[float, float, float], gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """The random parts of :func:`_elastic_transform`, on the CPU in float64: per image the
    inverse of the affine map (B, 2, 3) that moves the three points of Hendrycks's triangle by
    uniform(-shift, shift), and the displacement fields dy, dx (B, H, W): uniform(-1, 1)
    smoothed by a Gaussian of ``sigma`` (truncated at 3 sigma, mirrored edges), times ``alpha``
    (the parameters are fractions of the image size, as ``IMSIZE * c`` in the original)."""
    b, _, h, w = images.shape
    alpha, sigma, shift = _elastic_params(params, min(h, w))
    centre = torch.tensor([h // 2, w // 2], dtype=torch.float64)  # float32(shape) // 2
    side = min(h, w) // 3
    # OpenCV reads the points as (x, y); for square images centre[0] = centre[1]
    src = torch.stack(
        [centre + side, torch.stack([centre[0] + side, centre[1] - side]), centre - side]
    )
    moved = src + (torch.rand((b, 3, 2), generator=gen, dtype=torch.float64) * 2 - 1) * shift
    # the map M with M [x y 1]^T = moved (getAffineTransform); the warp samples M^-1 (x, y)
    ones = torch.ones(3, 1, dtype=torch.float64)
    forward = torch.linalg.solve(torch.cat([src, ones], 1)[None], moved).transpose(1, 2)
    linear_inv = torch.linalg.inv(forward[:, :, :2])
    inverse = torch.cat([linear_inv, -(linear_inv @ forward[:, :, 2:])], dim=2)
    fields = torch.rand((2, b, h, w), generator=gen, dtype=torch.float64) * 2 - 1
    dx, dy = (_symmetric_smooth(f, sigma, 3.0) * alpha for f in fields)
    return inverse, dy, dx


def _sample(x: Tensor, rows: Tensor, cols: Tensor, align_corners: bool) -> Tensor:
    """Bilinear samples of x (B, C, H, W) at pixel positions rows, cols (B, H, W), reflected."""
    h, w = x.shape[-2:]
    if align_corners:  # reflected about the edge pixels' centres: OpenCV's BORDER_REFLECT_101
        gx, gy = 2 * cols / (w - 1) - 1, 2 * rows / (h - 1) - 1
    else:  # about the edge pixels' outer sides: scipy's mode "reflect"
        gx, gy = (2 * cols + 1) / w - 1, (2 * rows + 1) / h - 1
    grid = torch.stack([gx, gy], dim=-1).to(x)
    return F.grid_sample(
        x, grid, mode="bilinear", padding_mode="reflection", align_corners=align_corners
    )


def _elastic_transform(
    x: Tensor, params: tuple[float, float, float], gen: torch.Generator
) -> Tensor:
    inverse, dy, dx = (t.to(x.device) for t in elastic_draws(x, params, gen))
    b, _, h, w = x.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=x.dtype, device=x.device),
        torch.arange(w, dtype=x.dtype, device=x.device),
        indexing="ij",
    )
    points = torch.stack([xs, ys, torch.ones_like(xs)]).reshape(3, -1)
    source = (inverse @ points).reshape(b, 2, h, w)  # (x, y) read for each output pixel
    x = _sample(x, source[:, 1], source[:, 0], align_corners=True)
    return _sample(x, ys + dy, xs + dx, align_corners=False)


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
    table = torch.stack(
        [
            torch.stack([v, t, p]),
            torch.stack([q, v, p]),
            torch.stack([p, v, t]),
            torch.stack([p, q, v]),
            torch.stack([t, p, v]),
            torch.stack([v, p, q]),
        ]
    )  # (6 sectors, 3 channels, B, H, W)
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
    """Encode and decode with PIL at ``quality``, as the original (on the CPU: PIL has no GPU);
    8-bit levels."""
    from PIL import Image

    out = []
    pixels = torch.round(x * 255.0).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    mode = "L" if x.shape[1] == 1 else "RGB"
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if mode == "L" else image, mode=mode).save(
            buffer, "JPEG", quality=int(quality)
        )
        buffer.seek(0)
        decoded = torch.from_numpy(np.array(Image.open(buffer).convert(mode)))
        out.append(decoded if mode == "RGB" else decoded[..., None])
    return torch.stack(out).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype)


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


def _pil_pass(levels: Tensor, weights: Tensor, dim: int) -> Tensor:
    """One of PIL's 8-bit resampling passes along ``dim`` (-1 or -2): weights in fixed point
    (round(w 2^22)), the sum plus half a unit shifted right by 22 bits, clipped to 0..255.
    Integer-valued float64 throughout (exact: every sum stays below 2^53)."""
    unit = float(1 << PIL_PRECISION_BITS)
    fixed = torch.floor(weights * unit + 0.5).to(levels)
    moved = levels.movedim(dim, -1) @ fixed.T
    return torch.floor((moved + unit / 2) / unit).clamp(0, 255).movedim(-1, dim)


def _pil_box_resize(levels: Tensor, height: int, width: int) -> Tensor:
    """PIL's ``resize((width, height), BOX)`` of 8-bit levels: the horizontal pass first, stored
    as 8 bits, then the vertical pass (Pillow's ImagingResample)."""
    if width != levels.shape[-1]:
        levels = _pil_pass(levels, box_resize_weights(levels.shape[-1], width), -1)
    if height != levels.shape[-2]:
        levels = _pil_pass(levels, box_resize_weights(levels.shape[-2], height), -2)
    return levels


def _pixelate(x: Tensor, factor: float, gen: torch.Generator) -> Tensor:
    h, w = x.shape[2], x.shape[3]
    small = _pil_box_resize(torch.round(x * 255.0), int(h * factor), int(w * factor))
    return _pil_box_resize(small, h, w)


CORRUPTIONS: dict[str, Corruption] = {
    c.name: c
    for c in (
        # the benchmark, in CIFAR-10-C's order (frost left out)
        Corruption("gaussian-noise", _gaussian_noise, (0.04, 0.06, 0.08, 0.09, 0.10)),
        Corruption("shot-noise", _shot_noise, (500, 250, 100, 75, 50)),
        Corruption("impulse-noise", _impulse_noise, (0.01, 0.02, 0.03, 0.05, 0.07)),
        Corruption(
            "defocus-blur",
            _defocus_blur,
            ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
            family="blur",
        ),
        Corruption(
            "glass-blur",
            _glass_blur,
            ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
            family="blur",
        ),
        Corruption(
            "motion-blur",
            _motion_blur,
            ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
            family="blur",
            levels=True,
        ),
        Corruption("zoom-blur", _zoom_blur, (1.06, 1.11, 1.16, 1.21, 1.26), family="blur"),
        Corruption(
            "snow",
            _snow,
            (
                (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
                (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
                (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
            ),
            family="weather",
        ),
        Corruption(
            "fog", _fog, ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)), family="weather"
        ),
        Corruption("brightness", _brightness, (0.05, 0.1, 0.15, 0.2, 0.3), family="weather"),
        Corruption("contrast", _contrast, (0.75, 0.5, 0.4, 0.3, 0.15), family="digital"),
        Corruption(
            "elastic-transform",
            _elastic_transform,
            (
                (0.0, 0.0, 0.08),
                (0.05, 0.2, 0.07),
                (0.08, 0.06, 0.06),
                (0.1, 0.04, 0.05),
                (0.1, 0.03, 0.03),
            ),
            family="digital",
        ),  # fractions of the image size
        Corruption(
            "pixelate", _pixelate, (0.95, 0.9, 0.85, 0.75, 0.65), family="digital", levels=True
        ),
        Corruption("jpeg", _jpeg, (80, 65, 58, 50, 40), family="digital", levels=True),
        # the held-out extras
        Corruption("speckle-noise", _speckle_noise, (0.06, 0.1, 0.12, 0.16, 0.2)),
        Corruption("gaussian-blur", _gaussian_blur, (0.4, 0.6, 0.7, 0.8, 1.0), family="blur"),
        Corruption(
            "saturate",
            _saturate,
            ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
            rgb_only=True,
            family="digital",
        ),
    )
}


def corruption_names(channels: int = 3, benchmark: bool | None = None) -> list[str]:
    """The corruptions that apply to images with ``channels`` channels, in CIFAR-10-C's order
    (the benchmark's, then the extras); ``benchmark`` True or False: only those or the extras."""
    return [
        n
        for n, c in CORRUPTIONS.items()
        if (channels == 3 or not c.rgb_only) and (benchmark is None or c.benchmark == benchmark)
    ]


def corrupt(images: Tensor, name: str, severity: int, generator: torch.Generator) -> Tensor:
    """Corrupt a batch of [0, 1] images; the result is quantised to 8 bits (truncated, as CIFAR-10-C).

    Args:
        images: (B, C, H, W) floats in [0, 1], C = 1 or 3, read as 8-bit levels (rounded).
        name: a key of :data:`CORRUPTIONS`.
        severity: 1..5.
        generator: a CPU generator (the draws of the random corruptions, made on the CPU and
            moved to the images' device).

    Returns:
        float32 images on the images' device, each value a level k / 255.
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; use one of {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be 1..5, got {severity}")
    if generator.device.type != "cpu":
        raise ValueError(
            "corrupt draws on a CPU generator (the same draws on every device); "
            f"got one on {generator.device}"
        )
    spec = CORRUPTIONS[name]
    if spec.rgb_only and images.shape[1] != 3:
        raise ValueError(f"corruption {name!r} needs RGB images, got {images.shape[1]} channel(s)")
    x = torch.round(images.to(torch.float64).clamp(0, 1) * 255.0) / 255.0  # np.array(img) / 255.
    out = spec.apply(x, spec.params[severity - 1], generator)
    if not spec.levels:  # np.uint8(np.clip(x, 0, 1) * 255): truncated
        out = torch.floor(out.clamp(0, 1) * 255.0)
    return (out / 255.0).to(torch.float32)


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()
