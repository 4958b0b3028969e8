"""Architectures: every network x input size builds and trains a step; counts match torchvision."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from podbench.errors import UserError
from podbench.tasks import (
    ARCHS,
    arch_info,
    count_parameters,
    create_arch,
    list_archs,
    prepare_model,
    register_arch,
)

# (channels, size): MNIST-like grayscale, CIFAR, TinyImageNet, ImageNet
INPUTS = [(1, 28), (3, 32), (3, 64), (3, 224)]


@pytest.mark.parametrize("name", list_archs())
@pytest.mark.parametrize(("channels", "size"), INPUTS, ids=[f"{c}x{s}" for c, s in INPUTS])
def test_every_arch_forward_backward(name: str, channels: int, size: int) -> None:
    if size < arch_info(name).min_image_size:
        with pytest.raises(UserError, match="image_size"):
            create_arch(name, in_channels=channels, image_size=size, feat_dim=8)
        return
    torch.manual_seed(0)
    model = create_arch(name, in_channels=channels, image_size=size, feat_dim=8)
    assert isinstance(model.proj, nn.Linear) and model.proj.out_features == 8
    assert isinstance(model.backbone, nn.Module)
    x = torch.randn(2, channels, size, size)
    feats = model(x)
    assert feats.shape == (2, 8) and torch.isfinite(feats).all()
    feats.square().sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert model.proj.weight.grad.abs().sum() > 0
    first = next(p for p in model.backbone.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0  # gradient reaches the stem


def _last_linear(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


@pytest.mark.parametrize(
    ("name", "factory"),
    [
        ("resnet18", torchvision.models.resnet18),
        ("resnet34", torchvision.models.resnet34),
        ("resnet50", torchvision.models.resnet50),
        ("vgg16", torchvision.models.vgg16_bn),
        ("densenet121", torchvision.models.densenet121),
        ("mobilenet-v2", torchvision.models.mobilenet_v2),
    ],
)
def test_unmodified_networks_match_torchvision_parameter_counts(name: str, factory) -> None:
    # 224 px RGB: the standard stem; the backbone is torchvision's network minus its last Linear
    with torch.device("meta"):
        reference = factory(weights=None, num_classes=1000)
    head = _last_linear(reference)
    expected = count_parameters(reference) - head.weight.numel() - head.bias.numel()
    info = arch_info(name, in_channels=3, image_size=224, feat_dim=64)
    assert info.backbone_params == expected
    # the projection replaces the classifier: same input width, d outputs, with bias
    assert info.param_count == expected + head.in_features * 64 + 64


def test_published_parameter_counts() -> None:
    # torchvision's documented totals (ImageNet heads): resnet18 11,689,512; resnet50 25,557,032
    for name, total, head in (
        ("resnet18", 11_689_512, 512 * 1000 + 1000),
        ("resnet50", 25_557_032, 2048 * 1000 + 1000),
    ):
        assert arch_info(name, image_size=224).backbone_params == total - head


def test_small_image_stem_keeps_resolution() -> None:
    model = create_arch("resnet50", in_channels=3, image_size=32, feat_dim=4)
    conv1 = model.backbone.conv1
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1)
    assert isinstance(model.backbone.maxpool, nn.Identity)
    seen: dict[str, torch.Size] = {}

    def record(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        seen["s"] = output.shape

    model.backbone.layer4.register_forward_hook(record)
    model.eval()(torch.zeros(1, 3, 32, 32))
    assert seen["s"][-2:] == (4, 4)  # 32 / 8: stride only in layers 2-4
    big = create_arch("resnet50", in_channels=3, image_size=224, feat_dim=4)
    assert big.backbone.conv1.kernel_size == (7, 7) and big.backbone.conv1.stride == (2, 2)
    assert isinstance(big.backbone.maxpool, nn.MaxPool2d)
    # small-input MobileNetV2 and DenseNet end at 4x4 for 32 px too
    for name, last in (("mobilenet-v2", "features"), ("densenet121", "features")):
        net = create_arch(name, in_channels=3, image_size=32, feat_dim=4).eval()
        out = getattr(net.backbone, last)(torch.zeros(1, 3, 32, 32))
        assert out.shape[-2:] == (4, 4), name


def test_channels_last_matches_contiguous() -> None:
    torch.manual_seed(0)
    model = create_arch("resnet18", in_channels=3, image_size=32, feat_dim=8).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    cl = prepare_model(model, "cpu", channels_last=True)
    got = cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["small-cnn", "resnet18", "mobilenet-v2"])
def test_bf16_autocast(name: str) -> None:
    torch.manual_seed(0)
    model = create_arch(name, in_channels=3, image_size=32, feat_dim=8).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        full = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x)
    assert half.dtype == torch.bfloat16
    # bf16 keeps ~3 significant digits: compare relative to the features' scale
    assert (half.float() - full).abs().max() <= 0.05 * full.abs().max() + 1e-3


@pytest.mark.parametrize("name", ["small-cnn", "mlp", "resnet18"])
def test_torch_compile_traces_without_graph_breaks(name: str) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = create_arch(name, in_channels=1, image_size=28, feat_dim=8).eval()
    x = torch.randn(2, 1, 28, 28)
    expected = model(x)
    # fullgraph=True fails on any graph break; aot_eager traces forward and backward without C++
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), expected, rtol=1e-5, atol=1e-5)
    assert compiled.proj is model.proj and compiled.backbone is model.backbone


def test_prepare_model_compile_keeps_attributes() -> None:
    model = create_arch("mlp", in_channels=1, image_size=8, feat_dim=4)
    prepared = prepare_model(model, "cpu", compile=True)
    assert prepared.proj is model.proj


def test_small_networks_handle_digit_sized_inputs() -> None:
    for name in ("small-cnn", "mlp", "resnet18", "densenet121", "mobilenet-v2"):
        model = create_arch(name, in_channels=1, image_size=8, feat_dim=5)
        assert model(torch.randn(3, 1, 8, 8)).shape == (3, 5), name


def test_mlp_parameter_count_by_hand() -> None:
    # 1x8x8 -> 256 -> 256 -> d=10: (64*256 + 256) + (256*256 + 256) + (256*10 + 10)
    expected = 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    assert arch_info("mlp", in_channels=1, image_size=8, feat_dim=10).param_count == expected


def test_user_errors() -> None:
    with pytest.raises(UserError, match="unknown architecture 'resnet9'"):
        create_arch("resnet9", in_channels=3, image_size=32, feat_dim=8)
    with pytest.raises(UserError, match="feat_dim"):
        create_arch("mlp", in_channels=3, image_size=32, feat_dim=0)
    with pytest.raises(UserError, match="at least 32 px"):
        create_arch("vgg16", in_channels=3, image_size=16, feat_dim=8)


def test_register_arch_plugin() -> None:
    with ARCHS.scratch():

        @register_arch("test-linear", description="one flatten")
        def _linear(in_channels: int, image_size: int) -> tuple[nn.Module, int]:
            return nn.Flatten(), in_channels * image_size * image_size

        assert "test-linear" in list_archs()
        model = create_arch("test-linear", in_channels=2, image_size=3, feat_dim=4)
        assert model(torch.ones(1, 2, 3, 3)).shape == (1, 4)
        assert (
            arch_info("test-linear", in_channels=2, image_size=3, feat_dim=4).param_count
            == 18 * 4 + 4
        )
        assert arch_info("test-linear").source == __name__  # registered outside podbench
    assert "test-linear" not in list_archs()
