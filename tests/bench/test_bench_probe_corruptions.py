"""Corruptions on constructed images, against scipy, matplotlib, PIL and torchvision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.colors import hsv_to_rgb as mpl_hsv_to_rgb
from matplotlib.colors import rgb_to_hsv as mpl_rgb_to_hsv
from PIL import Image
from scipy import ndimage

from podbench.probes.corruptions import (
    CORRUPTIONS,
    box_resize_weights,
    corrupt,
    corruption_names,
    defocus_kernel,
    glass_offsets,
    hsv_to_rgb,
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
    return np.floor(np.clip(x, 0, 1) * 255.0 + 1e-4) / 255.0


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
    x = torch.full((4, 3, 64, 64), 0.5)
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
    x = torch.full((8, 3, 64, 64), 0.5)
    out = corrupt(x, "impulse-noise", 5, _gen())  # amount 0.07
    assert float((out == 1.0).float().mean()) == pytest.approx(0.035, abs=0.003)
    assert float((out == 0.0).float().mean()) == pytest.approx(0.035, abs=0.003)
    assert float(((out != 1.0) & (out != 0.0) & (out != 127 / 255)).float().sum()) == 0


def test_gaussian_blur_matches_scipy() -> None:
    x = _random_images(2, 3, 32, seed=1)
    for severity, sigma in enumerate(CORRUPTIONS["gaussian-blur"].params, start=1):
        ref = ndimage.gaussian_filter(x.double().numpy(), sigma=(0, 0, sigma, sigma),
                                      mode="nearest", truncate=4.0)
        got = corrupt(x, "gaussian-blur", severity, _gen()).numpy()
        assert np.abs(got - _quantise(ref)).max() <= LEVEL + 1e-6
        assert np.mean(np.abs(got - _quantise(ref)) > 1e-6) < 0.01


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
        ref = np.stack([[ndimage.correlate(ch, kernel, mode="mirror") for ch in img]
                        for img in x.double().numpy()])
        got = corrupt(x, "defocus-blur", severity, _gen()).numpy()
        assert np.abs(got - _quantise(ref)).max() <= LEVEL + 1e-6


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
        hsv = mpl_rgb_to_hsv(x.double().permute(0, 2, 3, 1).numpy())
        if name == "brightness":
            hsv[..., 2] = np.clip(hsv[..., 2] + param, 0, 1)
        else:
            hsv[..., 1] = np.clip(hsv[..., 1] * param[0] + param[1], 0, 1)
        ref = _quantise(mpl_hsv_to_rgb(hsv)).transpose(0, 3, 1, 2)
        got = corrupt(x, name, severity, _gen()).numpy()
        assert np.abs(got - ref).max() <= LEVEL + 1e-6
        assert np.mean(np.abs(got - ref) > 1e-6) < 0.01


def test_brightness_of_grey_images_adds_to_the_level() -> None:
    x = torch.tensor([[[[0.0, 0.5], [0.9, 1.0]]]])
    got = corrupt(x, "brightness", 5, _gen())  # + 0.3, clipped
    assert got.flatten().tolist() == pytest.approx(
        [np.floor(v * 255 + 1e-4) / 255 for v in (0.3, 0.8, 1.0, 1.0)])


def test_contrast_hand_worked() -> None:
    # one channel of 4 pixels with mean 0.5; severity 2 scales the distance to the mean by 0.5
    x = torch.tensor([[[[0.1, 0.3], [0.7, 0.9]]]])
    got = corrupt(x, "contrast", 2, _gen())
    assert got.flatten().tolist() == pytest.approx(
        [np.floor(v * 255 + 1e-4) / 255 for v in (0.3, 0.4, 0.6, 0.7)])


def test_box_resize_matches_pil() -> None:
    rng = np.random.default_rng(0)
    for size_in, size_out in [(32, 30), (32, 20), (28, 18), (20, 32), (18, 28), (28, 26)]:
        image = rng.random((size_in, size_in)).astype(np.float32)
        ref = np.asarray(Image.fromarray(image, mode="F").resize((size_out, size_out), Image.BOX))
        w = box_resize_weights(size_in, size_out).numpy()
        assert w @ image.astype(np.float64) @ w.T == pytest.approx(ref, abs=1e-5)


def test_pixelate_matches_pil_round_trip() -> None:
    x = _random_images(2, 3, 32, seed=6)
    for severity, factor in enumerate(CORRUPTIONS["pixelate"].params, start=1):
        ref = []
        for img in x.numpy():
            chans = []
            for ch in img:
                small = Image.fromarray(ch, mode="F").resize((int(32 * factor),) * 2, Image.BOX)
                chans.append(np.asarray(small.resize((32, 32), Image.BOX)))
            ref.append(chans)
        got = corrupt(x, "pixelate", severity, _gen()).numpy()
        assert np.abs(got - _quantise(np.array(ref, dtype=np.float64))).max() <= LEVEL + 1e-6


def test_jpeg_matches_torchvision_and_worsens_with_severity() -> None:
    from torchvision.io import decode_jpeg, encode_jpeg

    # a smooth image with edges, so compression has something to lose
    t = torch.linspace(0, 1, 32)
    x = torch.stack([t[None, :].expand(32, 32), t[:, None].expand(32, 32),
                     (t[None, :] * t[:, None] > 0.25).float()])[None]
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
        a = ndimage.zoom(a[top:top + ch, top:top + ch], (zoom_factor, zoom_factor, 1), order=1)
        trim_top = (a.shape[0] - h) // 2
        return a[trim_top:trim_top + h, trim_top:trim_top + h]

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
            img = x[b].permute(1, 2, 0).double().numpy()
            blur = ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0), mode="nearest", truncate=4.0)
            u8 = np.floor(np.clip(blur, 0, 1) * 255 + 1e-4)  # np.uint8 of the blurred image
            for it in range(iterations):
                k = 0
                for h in range(12 - delta, delta, -1):
                    for w in range(12 - delta, delta, -1):
                        dy, dx = offsets[it, k, b]
                        k += 1
                        # the released "swap" on an RGB array: views, so a copy
                        u8[h, w], u8[h + dy, w + dx] = u8[h + dy, w + dx], u8[h, w]
            ref = ndimage.gaussian_filter(u8 / 255.0, sigma=(sigma, sigma, 0), mode="nearest",
                                          truncate=4.0)
            diff = np.abs(got[b] - _quantise(ref).transpose(2, 0, 1))
            assert diff.max() <= LEVEL + 1e-6 and np.mean(diff > 1e-6) < 0.01, severity
    # the draws: dy, dx in [-1, 0] for delta 1 (NumPy's randint excludes the upper bound)
    assert set(np.unique(offsets)) == {-1, 0}
