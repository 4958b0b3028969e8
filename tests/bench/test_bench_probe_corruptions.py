"""Corruptions on constructed images, against scipy, matplotlib, PIL and torchvision.

References are compared in integer mode: both sides as 8-bit levels, the reference truncated as
``np.uint8`` truncates (no guard), and the test states how many levels may differ and by how
much (a one-level tolerance would hide a one-level bias)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cases import channel_cases
from matplotlib.colors import hsv_to_rgb as mpl_hsv_to_rgb
from matplotlib.colors import rgb_to_hsv as mpl_rgb_to_hsv
from PIL import Image
from scipy import ndimage

from podbench.probes.corruptions import (
    BENCHMARK,
    CORRUPTIONS,
    box_resize_weights,
    corrupt,
    corruption_names,
    defocus_kernel,
    elastic_draws,
    glass_offsets,
    hsv_to_rgb,
    motion_blur_taps,
    plasma_fractal,
    rgb_to_hsv,
)

LEVEL = 1.0 / 255.0


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_images(b: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    levels = torch.randint(0, 256, (b, c, size, size), generator=_gen(seed))
    return levels.float() / 255.0


def _quantise(x: np.ndarray) -> np.ndarray:
    """np.uint8(np.clip(x, 0, 1) * 255) / 255: truncated, no guard."""
    return np.floor(np.clip(x, 0, 1) * 255.0) / 255.0


def _levels(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return np.round(np.asarray(x, dtype=np.float64) * 255.0).astype(np.int64)


def _exact(x: torch.Tensor) -> np.ndarray:
    """The image as the original reads it: np.array(uint8 image) / 255. in float64."""
    return _levels(x) / 255.0


def _agreement(got: np.ndarray | torch.Tensor, ref: np.ndarray) -> tuple[float, float, int]:
    """(mean signed level difference, share of values that differ, largest difference)."""
    diff = _levels(got) - _levels(ref)
    return float(diff.mean()), float((diff != 0).mean()), int(np.abs(diff).max())


def test_every_corruption_keeps_shape_range_and_levels() -> None:
    for channels in (1, 3):
        x = _random_images(2, channels, 32)
        for name in corruption_names(channels):
            for severity in (1, 5):
                out = corrupt(x, name, severity, _gen())
                assert out.shape == x.shape and out.dtype == torch.float32, name
                assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0, name
                levels = out * 255.0
                assert torch.allclose(levels, levels.round(), atol=1e-3), name
    assert "saturate" not in corruption_names(1) and "saturate" in corruption_names(3)


def test_corrupt_is_reproducible_and_checks_its_arguments() -> None:
    x = _random_images(3, 3, 16)
    a = corrupt(x, "gaussian-noise", 3, _gen(7))
    assert torch.equal(a, corrupt(x, "gaussian-noise", 3, _gen(7)))
    assert not torch.equal(a, corrupt(x, "gaussian-noise", 3, _gen(8)))
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(x, "frost", 1, _gen())
    with pytest.raises(ValueError, match="severity"):
        corrupt(x, "fog", 6, _gen())
    with pytest.raises(ValueError, match="needs RGB"):
        corrupt(x[:, :1], "saturate", 1, _gen())


def test_gaussian_and_speckle_noise_statistics() -> None:
    x = torch.full((4, 3, 64, 64), 128 / 255)  # a level, as the images are read
    for severity, scale in enumerate(CORRUPTIONS["gaussian-noise"].params, start=1):
        residual = (corrupt(x, "gaussian-noise", severity, _gen(severity)) - x).double()
        # truncation to 8 bits lowers the mean by half a level and adds its uniform variance
        assert float(residual.mean()) == pytest.approx(-0.5 * LEVEL, abs=0.002)
        assert float(residual.std()) == pytest.approx((scale**2 + LEVEL**2 / 12) ** 0.5, rel=0.02)
    residual = (corrupt(x, "speckle-noise", 5, _gen()) - x).double()
    assert float(residual.std()) == pytest.approx(0.5 * 0.2, rel=0.02)  # x * N(0, c)


def test_shot_noise_is_poisson() -> None:
    x = torch.full((4, 1, 64, 64), 0.4)
    out = corrupt(x, "shot-noise", 5, _gen()).double()  # Poisson(0.4 * 50) / 50
    assert float(out.mean()) == pytest.approx(0.4 - 0.5 * LEVEL, abs=0.003)
    assert float(out.var()) == pytest.approx(20 / 50**2, rel=0.05)
    counts = torch.round(out * 50).flatten()  # levels of k / 50, up to the 8-bit truncation
    assert float((counts - out.flatten() * 50).abs().max()) < 0.2


def test_impulse_noise_salt_and_pepper_share() -> None:
    x = torch.full((8, 3, 64, 64), 0.5)  # read as level 128 (rounded)
    out = corrupt(x, "impulse-noise", 5, _gen())  # amount 0.07
    assert float((out == 1.0).float().mean()) == pytest.approx(0.035, abs=0.003)
    assert float((out == 0.0).float().mean()) == pytest.approx(0.035, abs=0.003)
    assert float(((out != 1.0) & (out != 0.0) & (out != 128 / 255)).float().sum()) == 0


def test_gaussian_blur_matches_scipy() -> None:
    x = _random_images(2, 3, 32, seed=1)
    for severity, sigma in enumerate(CORRUPTIONS["gaussian-blur"].params, start=1):
        ref = ndimage.gaussian_filter(
            _exact(x), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0
        )
        got = corrupt(x, "gaussian-blur", severity, _gen()).numpy()
        bias, share, worst = _agreement(got, _quantise(ref))
        assert worst <= 1 and share < 1e-3 and abs(bias) < 1e-3, (severity, bias, share)


def test_defocus_kernel_hand_worked() -> None:
    # radius 0.3: the disk is the centre pixel only, so the kernel is the 3x3 Gaussian itself
    g = np.exp(-0.5 * (np.array([-1.0, 0.0, 1.0]) / 0.4) ** 2)
    g /= g.sum()
    kernel = defocus_kernel(0.3, 0.4).numpy()
    assert kernel.shape == (17, 17)
    assert kernel[7:10, 7:10] == pytest.approx(np.outer(g, g))
    assert kernel.sum() == pytest.approx(1.0) and np.count_nonzero(kernel) == 9
    # radius 1: the centre and its 4 neighbours, 1/5 each, before the 3x3 blur
    disk = np.zeros((17, 17))
    disk[8, 7:10] = disk[7:10, 8] = 0.2
    g = np.exp(-0.5 * (np.array([-1.0, 0.0, 1.0]) / 0.2) ** 2)
    g /= g.sum()
    ref = ndimage.correlate(disk, np.outer(g, g), mode="mirror")
    assert defocus_kernel(1, 0.2).numpy() == pytest.approx(ref)


def test_defocus_blur_matches_scipy_mirror() -> None:
    x = _random_images(2, 3, 32, seed=2)
    for severity in (1, 5):
        kernel = defocus_kernel(*CORRUPTIONS["defocus-blur"].params[severity - 1]).numpy()
        ref = np.stack(
            [[ndimage.correlate(ch, kernel, mode="mirror") for ch in img] for img in _exact(x)]
        )
        got = corrupt(x, "defocus-blur", severity, _gen()).numpy()
        bias, share, worst = _agreement(got, _quantise(ref))
        assert worst <= 1 and share < 1e-3 and abs(bias) < 1e-3, (severity, bias, share)


def test_hsv_round_trip_matches_matplotlib() -> None:
    x = _random_images(2, 3, 16, seed=3).double()
    x[0, :, 0, 0] = 0.5  # a grey pixel: hue and saturation 0
    x[0, :, 0, 1] = 0.0  # black
    x[0, :, 0, 2] = torch.tensor([0.8, 0.8, 0.2])  # two channels share the maximum
    ours = rgb_to_hsv(x)
    ref = mpl_rgb_to_hsv(x.permute(0, 2, 3, 1).numpy())
    assert ours.permute(0, 2, 3, 1).numpy() == pytest.approx(ref, abs=1e-12)
    hsv = torch.rand(2, 3, 8, 8, generator=_gen(4), dtype=torch.float64)
    back = mpl_hsv_to_rgb(hsv.permute(0, 2, 3, 1).numpy())
    assert hsv_to_rgb(hsv).permute(0, 2, 3, 1).numpy() == pytest.approx(back, abs=1e-12)
    assert hsv_to_rgb(rgb_to_hsv(x)).numpy() == pytest.approx(x.numpy(), abs=1e-12)


@pytest.mark.parametrize("name", ["brightness", "saturate"])
def test_hsv_corruptions_match_a_matplotlib_reference(name: str) -> None:
    x = _random_images(2, 3, 16, seed=5)
    for severity in (1, 3, 5):
        param = CORRUPTIONS[name].params[severity - 1]
        hsv = mpl_rgb_to_hsv(_exact(x.permute(0, 2, 3, 1)))
        if name == "brightness":
            hsv[..., 2] = np.clip(hsv[..., 2] + param, 0, 1)
        else:
            hsv[..., 1] = np.clip(hsv[..., 1] * param[0] + param[1], 0, 1)
        ref = _quantise(mpl_hsv_to_rgb(hsv)).transpose(0, 3, 1, 2)
        got = corrupt(x, name, severity, _gen()).numpy()
        bias, share, worst = _agreement(got, ref)
        # the float32 guard of old put +1 level on up to 8% of the values
        assert worst <= 1 and share < 2e-3 and abs(bias) < 2e-3, (severity, bias, share)


def test_brightness_of_grey_images_adds_to_the_level() -> None:
    x = torch.tensor([[[[0, 128], [230, 255]]]]) / 255.0
    got = corrupt(x, "brightness", 5, _gen())  # + 0.3 = 76.5 levels, truncated, clipped
    assert _levels(got).flatten().tolist() == [76, 204, 255, 255]
    # + 0.2 = 51 levels exactly: float64 keeps k + 51 (a guard would not change it either)
    assert _levels(corrupt(x, "brightness", 4, _gen())).flatten().tolist() == [51, 179, 255, 255]


def test_contrast_hand_worked() -> None:
    # levels 20, 60, 140, 180 (mean 100); severity 2 halves the distance to the mean:
    # 60, 80, 120, 140
    x = torch.tensor([[[[20, 60], [140, 180]]]]) / 255.0
    assert _levels(corrupt(x, "contrast", 2, _gen())).flatten().tolist() == [60, 80, 120, 140]


def test_contrast_takes_each_channels_own_mean() -> None:
    # channel 0 has mean 100, channel 1 mean 200 (the image's mean over channels is 150):
    # each channel contracts towards its own mean
    x = torch.tensor([[[[20, 60], [140, 180]], [[160, 180], [220, 240]]]]) / 255.0
    got = _levels(corrupt(x, "contrast", 2, _gen()))
    assert got[0, 0].flatten().tolist() == [60, 80, 120, 140]
    assert got[0, 1].flatten().tolist() == [180, 190, 210, 220]


def test_box_resize_matches_pil() -> None:
    rng = np.random.default_rng(0)
    for size_in, size_out in [(32, 30), (32, 20), (28, 18), (20, 32), (18, 28), (28, 26)]:
        image = rng.random((size_in, size_in)).astype(np.float32)
        ref = np.asarray(Image.fromarray(image, mode="F").resize((size_out, size_out), Image.BOX))
        w = box_resize_weights(size_in, size_out).numpy()
        assert w @ image.astype(np.float64) @ w.T == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 32])
def test_pixelate_equals_pil_in_integer_mode(channels: int, size: int) -> None:
    x = _random_images(3, channels, size, seed=6)
    mode = "L" if channels == 1 else "RGB"
    for severity, factor in enumerate(CORRUPTIONS["pixelate"].params, start=1):
        ref = []
        for img in _levels(x.permute(0, 2, 3, 1)).astype(np.uint8):
            pil = Image.fromarray(img[..., 0] if channels == 1 else img, mode=mode)
            small = pil.resize((int(size * factor),) * 2, Image.BOX)
            ref.append(np.asarray(small.resize((size, size), Image.BOX)).reshape(size, size, -1))
        ref = np.stack(ref).transpose(0, 3, 1, 2)
        got = _levels(corrupt(x, "pixelate", severity, _gen()))
        # PIL rounds after each axis' pass, in fixed point: every level equal
        assert np.array_equal(got, ref), (severity, np.mean(got != ref))


def test_jpeg_matches_torchvision_and_worsens_with_severity() -> None:
    from torchvision.io import decode_jpeg, encode_jpeg

    # a smooth image with edges, so compression has something to lose
    t = torch.linspace(0, 1, 32)
    x = torch.stack(
        [
            t[None, :].expand(32, 32),
            t[:, None].expand(32, 32),
            (t[None, :] * t[:, None] > 0.25).float(),
        ]
    )[None]
    errors = []
    for severity, quality in enumerate(CORRUPTIONS["jpeg"].params, start=1):
        got = corrupt(x, "jpeg", severity, _gen())
        pixels = (x[0] * 255).round().to(torch.uint8)
        ref = decode_jpeg(encode_jpeg(pixels, quality=quality)).float() / 255.0
        assert float((got[0] - ref).abs().mean()) < 1.5 * LEVEL  # another libjpeg build
        errors.append(float((got - x).abs().mean()))
    assert errors[-1] > errors[0] > 2 * LEVEL  # not monotone per image, but q=40 loses more than 80
    grey = corrupt(x[:, :1], "jpeg", 5, _gen())
    assert grey.shape == (1, 1, 32, 32)


def test_fog_and_plasma_fractal() -> None:
    maps = plasma_fractal(3, 32, 2.0, _gen(), torch.device("cpu"))
    assert maps.shape == (3, 32, 32)
    flat = maps.flatten(1).float()
    assert torch.allclose(flat.min(1).values, torch.zeros(3))
    assert torch.allclose(flat.max(1).values, torch.ones(3))
    assert not torch.equal(maps[0], maps[1])  # one fractal per image
    with pytest.raises(ValueError, match="power of two"):
        plasma_fractal(1, 28, 2.0, _gen(), torch.device("cpu"))
    black = torch.zeros(2, 1, 28, 28)
    assert torch.equal(corrupt(black, "fog", 5, _gen()), black)  # scaled by the image's maximum 0
    a, strength = 0.6, 1.5
    grey = torch.full((2, 3, 28, 28), a)
    out = corrupt(grey, "fog", 5, _gen())
    # (a + s f) a / (a + s) for f in [0, 1]
    assert float(out.min()) >= np.floor(a * a / (a + strength) * 255) / 255 - 1e-6
    assert float(out.max()) <= a + 1e-6
    assert float(out.std()) > 0.02


def _hendrycks_zoom_blur(img: np.ndarray, upper: float) -> np.ndarray:
    """make_cifar_c.py's zoom_blur on one HWC float image, written out with scipy."""

    def clipped_zoom(a: np.ndarray, zoom_factor: float) -> np.ndarray:
        h = a.shape[0]
        ch = int(np.ceil(h / zoom_factor))
        top = (h - ch) // 2
        a = ndimage.zoom(a[top : top + ch, top : top + ch], (zoom_factor, zoom_factor, 1), order=1)
        trim_top = (a.shape[0] - h) // 2
        return a[trim_top : trim_top + h, trim_top : trim_top + h]

    factors = np.arange(1, upper, 0.01)
    out = np.zeros_like(img)
    for z in factors:
        out += clipped_zoom(img, z)
    return np.clip((img + out) / (len(factors) + 1), 0, 1)


def test_zoom_blur_matches_scipy_zoom() -> None:
    x = _random_images(2, 3, 32, seed=4)
    for severity, upper in enumerate(CORRUPTIONS["zoom-blur"].params, start=1):
        got = corrupt(x, "zoom-blur", severity, _gen()).numpy()
        for b in range(2):
            ref = _hendrycks_zoom_blur(x[b].permute(1, 2, 0).numpy().astype(np.float32), upper)
            diff = np.abs(got[b] - _quantise(ref.transpose(2, 0, 1)))
            assert diff.max() <= LEVEL + 1e-6 and np.mean(diff > 1e-6) < 0.01, severity
    # severity 1 averages the image and 7 zooms: float rounding lets arange reach 1.06 itself
    assert len(np.arange(1, 1.06, 0.01)) == 7


def test_glass_blur_matches_the_released_loop() -> None:
    x = _random_images(3, 3, 12, seed=5)
    for severity, (sigma, delta, iterations) in enumerate(CORRUPTIONS["glass-blur"].params, 1):
        got = corrupt(x, "glass-blur", severity, _gen(9)).numpy()
        offsets = glass_offsets(x, delta, iterations, _gen(9)).numpy()  # the same draws
        for b in range(3):
            img = _exact(x[b].permute(1, 2, 0))
            blur = ndimage.gaussian_filter(
                img, sigma=(sigma, sigma, 0), mode="nearest", truncate=4.0
            )
            u8 = np.floor(blur * 255)  # np.uint8 of the blurred image
            for it in range(iterations):
                k = 0
                for h in range(12 - delta, delta, -1):
                    for w in range(12 - delta, delta, -1):
                        dy, dx = offsets[it, k, b]
                        k += 1
                        # the released "swap" on an RGB array: views, so a copy
                        u8[h, w], u8[h + dy, w + dx] = u8[h + dy, w + dx], u8[h, w]
            ref = ndimage.gaussian_filter(
                u8 / 255.0, sigma=(sigma, sigma, 0), mode="nearest", truncate=4.0
            )
            bias, share, worst = _agreement(got[b], _quantise(ref).transpose(2, 0, 1))
            assert worst <= 1 and share < 2e-3 and abs(bias) < 2e-3, (severity, bias, share)
    # the draws: dy, dx in [-1, 0] for delta 1 (NumPy's randint excludes the upper bound)
    assert set(np.unique(offsets)) == {-1, 0}


# -- the benchmark's corruptions added: motion blur, snow, elastic transform -----------------


def test_benchmark_and_extras_are_apart() -> None:
    assert corruption_names(3, benchmark=True) == [n for n in BENCHMARK if n != "frost"]
    assert len(BENCHMARK) == 15 and "frost" not in CORRUPTIONS
    assert corruption_names(3, benchmark=False) == ["speckle-noise", "gaussian-blur", "saturate"]
    assert corruption_names(1, benchmark=False) == ["speckle-noise", "gaussian-blur"]
    assert corruption_names(1) == corruption_names(1, True) + corruption_names(1, False)


def _imagemagick_motion_blur(
    levels: np.ndarray, radius: float, sigma: float, angle: float
) -> np.ndarray:
    """MotionBlurImage written out per pixel: taps i = 0..2r at (x + ceil(i cos a - 1/2),
    y + ceil(i sin a - 1/2)), weights exp(-i^2 / 2 sigma^2) normalised, edge pixels beyond the
    border, rounded to 8 bits (H, W levels)."""
    width = 2 * math.ceil(radius) + 1
    weights = np.array([math.exp(-(i * i) / (2 * sigma * sigma)) for i in range(width)])
    weights /= weights.sum()
    a = math.radians(angle)
    h, w = levels.shape
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            for i in range(width):
                yy = min(max(y + math.ceil(i * math.sin(a) - 0.5), 0), h - 1)
                xx = min(max(x + math.ceil(i * math.cos(a) - 0.5), 0), w - 1)
                out[y, x] += weights[i] * levels[yy, xx]
    return np.floor(np.clip(out, 0, 255) + 0.5)


def test_motion_blur_taps_hand_worked() -> None:
    weights, dy, dx = motion_blur_taps(2, 1.0, torch.tensor([0.0, 90.0, 45.0]))
    g = np.exp(-(np.arange(5) ** 2) / 2.0)
    assert weights.numpy() == pytest.approx(g / g.sum())
    assert dx[0].tolist() == [0, 1, 2, 3, 4] and dy[0].tolist() == [0, 0, 0, 0, 0]
    assert dy[1].tolist() == [0, 1, 2, 3, 4] and dx[1].tolist() == [0, 0, 0, 0, 0]
    # 45 degrees: i / sqrt(2) = 0, .71, 1.41, 2.12, 2.83 -> ceil(v - 1/2) = 0, 1, 1, 2, 3
    assert dy[2].tolist() == dx[2].tolist() == [0, 1, 1, 2, 3]


def test_motion_blur_matches_a_per_pixel_reference() -> None:
    x = _random_images(3, 1, 20, seed=11)
    for severity in (1, 5):
        radius, sigma = CORRUPTIONS["motion-blur"].params[severity - 1]
        got = _levels(corrupt(x, "motion-blur", severity, _gen(3)))
        angles = torch.rand(3, generator=_gen(3), dtype=torch.float64) * 90 - 45  # the draws
        for b in range(3):
            ref = _imagemagick_motion_blur(_levels(x[b, 0]), radius, sigma, float(angles[b]))
            assert np.array_equal(got[b, 0], ref), severity
    # a flat image stays flat; a vertical edge blurs along x only at angle 0
    flat = torch.full((1, 3, 16, 16), 100 / 255)
    assert np.all(_levels(corrupt(flat, "motion-blur", 5, _gen())) == 100)


def test_snow_matches_the_released_recipe_written_with_scipy() -> None:
    x = _random_images(2, 3, 32, seed=12)
    for severity in (1, 4):
        loc, scale, zoom, threshold, radius, sigma, keep = CORRUPTIONS["snow"].params[severity - 1]
        got = _levels(corrupt(x, "snow", severity, _gen(5)))
        gen = _gen(5)  # the same draws, in their order: the layer, then the angles
        layer = (
            loc + scale * torch.randn((2, 1, 32, 32), generator=gen, dtype=torch.float64)
        ).numpy()
        angles = torch.rand(2, generator=gen, dtype=torch.float64).numpy() * 90 - 135
        for b in range(2):
            flake = layer[b, 0]
            if zoom != 1:  # Hendrycks's clipped_zoom with scipy.ndimage.zoom(order=1)
                ch = int(np.ceil(32 / zoom))
                top = (32 - ch) // 2
                flake = ndimage.zoom(flake[top : top + ch, top : top + ch], zoom, order=1)
                trim = (flake.shape[0] - 32) // 2
                flake = flake[trim : trim + 32, trim : trim + 32]
            flake = np.where(flake < threshold, 0, flake)
            flake = np.floor(np.clip(flake, 0, 1) * 255)
            flake = _imagemagick_motion_blur(flake, radius, sigma, float(angles[b])) / 255
            img = _exact(x[b]).transpose(1, 2, 0)
            grey = img @ np.array([0.299, 0.587, 0.114])
            img = keep * img + (1 - keep) * np.maximum(img, grey[..., None] * 1.5 + 0.5)
            ref = _quantise(img + flake[..., None] + np.rot90(flake, 2)[..., None])
            bias, share, worst = _agreement(got[b].transpose(1, 2, 0) / 255, ref)
            assert worst <= 1 and share < 2e-3, (severity, bias, share)
    assert float(corrupt(x, "snow", 5, _gen()).mean()) > float(x.mean())  # whiter


def test_elastic_transform_matches_scipy_affine_and_map_coordinates() -> None:
    x = _random_images(2, 3, 28, seed=13)
    for severity in (2, 5):
        params = CORRUPTIONS["elastic-transform"].params[severity - 1]
        got = _levels(corrupt(x, "elastic-transform", severity, _gen(8)))
        inverse, dy, dx = (t.numpy() for t in elastic_draws(x, params, _gen(8)))
        rows, cols = np.meshgrid(np.arange(28), np.arange(28), indexing="ij")
        for b in range(2):
            inv = inverse[b]  # (x, y) -> (x_src, y_src); scipy wants (row, col)
            matrix = np.array([[inv[1, 1], inv[1, 0]], [inv[0, 1], inv[0, 0]]])
            offset = np.array([inv[1, 2], inv[0, 2]])
            ref = []
            for ch in _exact(x[b]):
                # OpenCV's warpAffine, BORDER_REFLECT_101 = scipy's "mirror"
                warped = ndimage.affine_transform(ch, matrix, offset, order=1, mode="mirror")
                ref.append(
                    ndimage.map_coordinates(
                        warped, [rows + dy[b], cols + dx[b]], order=1, mode="reflect"
                    )
                )
            bias, share, worst = _agreement(got[b] / 255, _quantise(np.stack(ref)))
            assert worst <= 1 and share < 2e-3, (severity, bias, share)
        # the displacement: smoothed uniform(-1, 1) times alpha = c * size
        alpha = params[0] * 28
        assert 0 < np.abs(dx).max() <= alpha and 0 < np.abs(dy).max() <= alpha


def test_elastic_displacement_smoothing_is_scipy_reflect() -> None:
    from podbench.probes.corruptions import _symmetric_smooth

    field = torch.rand(2, 12, 12, generator=_gen(4), dtype=torch.float64) * 2 - 1
    for sigma in (0.84, 5.6):  # radius 3 and 17: beyond the 12 pixels, mirrored again
        ref = np.stack(
            [ndimage.gaussian_filter(f, sigma, mode="reflect", truncate=3.0) for f in field.numpy()]
        )
        assert _symmetric_smooth(field, sigma, 3.0).numpy() == pytest.approx(ref, abs=1e-12)


def test_draws_come_from_the_cpu_generator() -> None:
    x = _random_images(2, 3, 16, seed=14)
    cuda_like = SimpleNamespace(device=torch.device("cuda", 0))  # no GPU needed to refuse one
    with pytest.raises(ValueError, match="CPU generator"):
        corrupt(x, "gaussian-noise", 1, cuda_like)  # type: ignore[arg-type]
    # the draws are the CPU generator's own: gaussian noise is x + c * randn(float64)
    noise = torch.randn(x.shape, generator=_gen(21), dtype=torch.float64)
    ref = _quantise(_exact(x) + 0.04 * noise.numpy())
    assert np.array_equal(_levels(corrupt(x, "gaussian-noise", 1, _gen(21))), _levels(ref))


@pytest.mark.parametrize("case", list(channel_cases()), ids=lambda c: c[0])
def test_contrast_on_the_shared_channel_cases(case: tuple[str, torch.Tensor]) -> None:
    _, levels = case
    x = levels.double().numpy() / 255.0
    for severity, factor in enumerate(CORRUPTIONS["contrast"].params, start=1):
        # make_cifar_c.py: np.mean(x, axis=(0, 1), keepdims=True) of an HWC image
        ref = np.stack(
            [
                (img - img.mean(axis=(1, 2), keepdims=True)) * factor
                + img.mean(axis=(1, 2), keepdims=True)
                for img in x
            ]
        )
        got = corrupt(levels.float() / 255.0, "contrast", severity, _gen())
        assert np.array_equal(_levels(got), _levels(_quantise(ref))), severity
