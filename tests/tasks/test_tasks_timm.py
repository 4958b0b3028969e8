"""timm's networks as ``timm:<model>``: features, the small-image stem, counts, errors, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

timm = pytest.importorskip("timm")

from podbench.errors import UserError  # noqa: E402
from podbench.tasks import arch_info, count_parameters, create_arch, find_arch  # noqa: E402


@pytest.fixture(autouse=True)
def _no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    # random weights only: any attempt to fetch pretrained weights fails the test
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("timm tried to load pretrained weights")

    monkeypatch.setattr("timm.models._builder.load_pretrained", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_timm_resnet18_small_stem_matches_torchvision_count() -> None:
    # the same network as podbench's torchvision ResNet-18 with the POD authors' small stem
    ours = arch_info("resnet18", in_channels=3, image_size=32, feat_dim=16).param_count
    theirs = arch_info("timm:resnet18", in_channels=3, image_size=32, feat_dim=16).param_count
    assert theirs == ours
    net = create_arch("timm:resnet18", in_channels=3, image_size=32, feat_dim=16)
    conv1 = net.backbone.conv1
    assert (conv1.kernel_size, conv1.stride) == ((3, 3), (1, 1))
    assert isinstance(net.backbone.maxpool, nn.Identity)
    # the 224 px network keeps the published 7x7 stride-2 stem and max-pool, and its counts
    big = create_arch("timm:resnet18", in_channels=3, image_size=224, feat_dim=16)
    assert big.backbone.conv1.stride == (2, 2) and isinstance(big.backbone.maxpool, nn.MaxPool2d)
    reference = count_parameters(torchvision.models.resnet18(weights=None)) - (512 * 1000 + 1000)
    assert count_parameters(big.backbone) == reference
    assert count_parameters(big.proj) == 512 * 16 + 16


@pytest.mark.parametrize(
    ("model", "channels", "size", "dim"),
    [
        ("resnet18", 1, 8, 512),  # digits: grayscale 8 px
        ("resnet50d", 3, 32, 2048),  # deep stem replaced by the small stem
        ("vit_tiny_patch16_224", 3, 32, 192),  # built for 32 px (img_size)
        ("mobilenetv3_small_100", 3, 32, 1024),  # a hidden layer after pooling
    ],
)
def test_timm_pooled_features_and_projection(
    model: str, channels: int, size: int, dim: int
) -> None:
    torch.manual_seed(0)
    net = create_arch(f"timm:{model}", in_channels=channels, image_size=size, feat_dim=8)
    assert net.backbone_dim == dim and net.proj.in_features == dim
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        pooled = net.backbone(x)
    assert pooled.shape == (2, dim)
    feats = net(x)
    torch.testing.assert_close(feats, net.proj(pooled))
    feats.square().sum().backward()
    stem = next(p for p in net.backbone.parameters())
    assert stem.grad is not None and stem.grad.abs().sum() > 0


def test_timm_resnet_deep_stem_keeps_channels() -> None:
    net = create_arch("timm:resnet50d", in_channels=3, image_size=32, feat_dim=8)
    assert net.backbone.conv1.out_channels == net.backbone.bn1.num_features == 64


def test_timm_unknown_model_is_one_sentence() -> None:
    with pytest.raises(UserError, match=r"no model 'resnet19' \(did you mean 'timm:resnet18'\?\)"):
        create_arch("timm:resnet19", in_channels=3, image_size=32, feat_dim=8)
    assert find_arch("timm:resnet18").description.startswith("timm resnet network")


def test_timm_cli_lists_matches_with_counts(capsys: pytest.CaptureFixture[str]) -> None:
    from podbench.cli import main

    assert main(["tasks", "--timm", "resnet18*", "--json", "--feat-dim", "16"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["archs"]}
    assert {"timm:resnet18", "timm:resnet18d"} <= set(rows)
    expected = count_parameters(
        create_arch("timm:resnet18", in_channels=3, image_size=32, feat_dim=16)
    )
    assert rows["timm:resnet18"]["params"] == expected
    assert main(["tasks"]) == 0
    assert (
        f"timm {timm.__version__}: {len(timm.list_models())} more networks"
        in capsys.readouterr().out
    )
    assert main(["tasks", "--timm", "nothing-like-this*"]) == 2
