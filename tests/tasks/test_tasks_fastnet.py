"""fastnet (airbench94's network): counts by hand, whitening against numpy, BN shift gain, hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from podbench.tasks import arch_info, create_arch
from podbench.tasks.fastnet import (
    BIAS_GAIN,
    WHITEN_EPS,
    FastNet,
    WhiteningConv,
    _conv3x3,
    _ShiftNorm,
    patch_covariance,
)


def test_parameter_count_by_hand() -> None:
    # 3x3 convs without bias: 24->64, 64->64, 64->256, 256->256, 256->256, 256->256;
    # BN scale + shift per channel of the six norms; the whitening bias (24); its filters are a
    # buffer. Then the projection 256 -> d (with bias).
    convs = 9 * (24 * 64 + 64 * 64 + 64 * 256 + 256 * 256 + 256 * 256 + 256 * 256)
    norms = 2 * (64 + 64 + 256 + 256 + 256 + 256)
    backbone = convs + norms + 24
    info = arch_info("fastnet", in_channels=3, image_size=32, feat_dim=10)
    assert info.backbone_params == backbone == 1_969_944
    assert info.param_count == backbone + 256 * 10 + 10


def _numpy_patches(images: np.ndarray, k: int) -> np.ndarray:
    """Every k x k patch, flattened channel-major (as a conv weight is), by explicit slicing."""
    n, c, h, w = images.shape
    rows = []
    for i in range(h - k + 1):
        for j in range(w - k + 1):
            rows.append(images[:, :, i : i + k, j : j + k].reshape(n, c * k * k))
    return np.concatenate(rows)


def _correlated_images(n: int = 40, size: int = 12, seed: int = 0) -> torch.Tensor:
    # strongly correlated channels and neighbouring pixels, so whitening has work to do
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, size + 1, size + 1, generator=gen)
    smooth = (base[..., 1:, 1:] + base[..., :-1, 1:] + base[..., 1:, :-1]) / 3
    mix = torch.tensor([[1.0], [0.8], [0.5]])
    return smooth * mix.view(1, 3, 1, 1) + 0.2 * torch.randn(n, 3, size, size, generator=gen)


def test_patch_covariance_matches_numpy() -> None:
    images = _correlated_images()
    expected = _numpy_patches(images.double().numpy(), 2)
    expected = expected.T @ expected / len(expected)
    got = patch_covariance(images, 2, chunk=7)  # chunks that do not divide N
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_whitening_conv_whitens_its_training_patches() -> None:
    images = _correlated_images()
    layer = WhiteningConv(3)
    layer.init_from_data(images)
    out = nn.functional.conv2d(images, layer.weight).double()  # without the bias
    assert out.shape == (40, 24, 11, 11)
    # the second half of the filters are the negatives of the first
    torch.testing.assert_close(layer.weight[12:], -layer.weight[:12])
    # each of the first 12 channels is one eigen-direction scaled by 1/sqrt(lambda + eps):
    # their covariance over the patches is diag(lambda / (lambda + eps)), lambda from numpy
    flat = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12).numpy()
    cov = flat.T @ flat / len(flat)
    patches = _numpy_patches(images.double().numpy(), 2)
    lam = np.sort(np.linalg.eigvalsh(patches.T @ patches / len(patches)))[::-1]
    np.testing.assert_allclose(cov, np.diag(lam / (lam + WHITEN_EPS)), atol=2e-4)
    assert np.diag(cov).min() > 0.9  # close to white: the eps only damps tiny directions


def test_identity_initialised_convolutions_pass_inputs_through() -> None:
    torch.manual_seed(0)
    conv = _conv3x3(5, 8)
    x = torch.randn(2, 5, 6, 6)
    torch.testing.assert_close(conv(x)[:, :5], x)
    assert conv(x)[:, 5:].abs().sum() > 0  # the other filters keep the default random init


def test_shift_norm_statistics_and_the_64x_shift_step() -> None:
    norm = _ShiftNorm(3)
    assert not norm.weight.requires_grad and norm.bias.requires_grad
    x = torch.randn(4, 3, 5, 5) * 3 + 1
    out = norm(x)
    mean = x.mean(dim=(0, 2, 3))
    var = x.var(dim=(0, 2, 3), unbiased=False)
    expected = (x - mean.view(1, 3, 1, 1)) / torch.sqrt(var.view(1, 3, 1, 1) + 1e-12)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # airbench's momentum 0.6 on the running statistics: 0.6 * old + 0.4 * batch
    torch.testing.assert_close(norm.running_mean, 0.4 * mean)
    # one plain SGD step of lr on the stored shift moves the applied shift by 64 lr g,
    # with g = dL/d(applied shift) = sum of the upstream gradient over N, H, W
    weights = torch.randn_like(out)
    (norm(x) * weights).sum().backward()
    g = weights.sum(dim=(0, 2, 3))
    lr = 0.01
    before = BIAS_GAIN * norm.bias.detach().clone()
    torch.optim.SGD([norm.bias], lr=lr).step()
    torch.testing.assert_close(BIAS_GAIN * norm.bias.detach() - before, -64 * lr * g)


def test_output_is_the_global_max_of_the_last_map_over_nine() -> None:
    torch.manual_seed(0)
    net = FastNet(3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        last = net.layers(net.whiten(x))
        assert last.shape == (2, 256, 3, 3)  # 32 -> 31 (2x2 stem) -> 15 -> 7 -> 3
        expected = last.reshape(2, 256, 9).max(dim=2).values / 9
        torch.testing.assert_close(net(x), expected)


@pytest.mark.parametrize("size", [9, 28, 32, 64])
def test_sizes_and_channels(size: int) -> None:
    model = create_arch("fastnet", in_channels=1, image_size=size, feat_dim=7)
    assert model(torch.randn(2, 1, size, size)).shape == (2, 7)
    assert model.init_samples == 5000


def test_latent_net_data_init_hook() -> None:
    model = create_arch("fastnet", in_channels=3, image_size=16, feat_dim=4)
    images = _correlated_images(n=10, size=16)
    model.init_from_data(images)
    reference = WhiteningConv(3)
    reference.init_from_data(images)
    torch.testing.assert_close(model.backbone.whiten.weight, reference.weight)
    plain = create_arch("small-cnn", in_channels=3, image_size=16, feat_dim=4)
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    assert plain.init_samples == 0
    plain.init_from_data(images)  # no hook: nothing changes
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())


def test_bf16_autocast_and_channels_last_match_float32() -> None:
    torch.manual_seed(0)
    model = create_arch("fastnet", in_channels=3, image_size=32, feat_dim=8).eval()
    model.init_from_data(_correlated_images(n=8, size=32))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        full = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x)
        cl = model.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last)
        )
    assert (half.float() - full).abs().max() <= 0.05 * full.abs().max() + 1e-3
    torch.testing.assert_close(cl, full, rtol=1e-4, atol=1e-4)


def test_torch_compile_traces_without_graph_breaks() -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = create_arch("fastnet", in_channels=3, image_size=16, feat_dim=8)
    x = torch.randn(3, 3, 16, 16)
    expected = model(x)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), expected, rtol=1e-5, atol=1e-5)
