"""The architecture registry: a backbone plus a linear projection to the latent dimension d.

Every network returns ``model(x) -> (B, feat_dim)``; the loss plugin owns the classifier head.
torchvision networks keep their layers; for inputs of at most 64 px they get the small-image stem
the POD authors used (3x3 convolution, stride 1, no max-pool), so a 32 px image is not reduced to
1x1 before the last stage.

Example:
    >>> from podbench.tasks import create_arch
    >>> net = create_arch("small-cnn", in_channels=1, image_size=28, feat_dim=16)
    >>> net(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 16])
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar, cast

import torch
from torch import nn

from podbench.errors import UserError
from podbench.registry import Registry
from podbench.tasks.devices import resolve_device

__all__ = [
    "ARCHS",
    "SMALL_STEM_MAX",
    "ArchInfo",
    "LatentNet",
    "arch_info",
    "count_parameters",
    "create_arch",
    "find_arch",
    "list_archs",
    "prepare_model",
    "register_arch",
    "stem_conv",
]

ENTRY_POINT_GROUP = "podbench.archs"
SMALL_STEM_MAX = 64  # inputs up to this size get the small-image stem
DEFAULT_INIT_SAMPLES = 5000  # training images for a backbone's init_from_data
# compiled variants of one forward kept per process (PyTorch's default, 8, is reached by a few
# architectures in train and eval mode, since they all share LatentNet.forward)
RECOMPILE_LIMIT = 64

Builder = Callable[[int, int], tuple[nn.Module, int]]


@dataclass(frozen=True)
class ArchInfo:
    """Metadata of a registered architecture.

    Attributes:
        name: registry name.
        description: one line for listings.
        reference: where the network comes from.
        min_image_size: smallest input height = width it accepts.
        builder: ``builder(in_channels, image_size) -> (backbone, backbone_dim)``.
        param_count: parameters of the whole model (backbone + projection) for the configuration
            asked of :func:`arch_info`; None until asked.
        backbone_params: parameters of the backbone alone, for that configuration.
        config: the configuration the counts are for.
        aliases: other accepted names (kebab-case).
        source: ``podbench``, or the distribution (or module) that registered the network.
    """

    name: str
    description: str
    reference: str
    min_image_size: int
    builder: Builder
    param_count: int | None = None
    backbone_params: int | None = None
    config: dict | None = None
    aliases: tuple[str, ...] = ()
    source: str = "podbench"


class LatentNet(nn.Module):
    """``proj(flatten(backbone(x)))``: a backbone and the Linear to the latent dimension."""

    def __init__(
        self, backbone: nn.Module, backbone_dim: int, feat_dim: int, proj: str = "linear"
    ) -> None:
        super().__init__()
        self.backbone = backbone
        # with bias, as in the POD authors' code; "none": the backbone's features are the latent
        # ones (airbench's head is one bias-free linear layer on them: the loss plugin's)
        self.proj: nn.Module = (
            nn.Identity() if proj == "none" else nn.Linear(backbone_dim, feat_dim)
        )
        self.backbone_dim = backbone_dim
        self.feat_dim = feat_dim

    def on_epoch_start(self, epoch: int) -> None:
        """The backbone's optional per-epoch hook (fastnet freezes its whitening bias)."""
        hook = getattr(self.backbone, "on_epoch_start", None)
        if callable(hook):
            hook(epoch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.flatten(self.backbone(x), 1))

    @property
    def init_samples(self) -> int:
        """Training images the backbone's ``init_from_data`` wants (0: it has none)."""
        if not callable(getattr(self.backbone, "init_from_data", None)):
            return 0
        return int(getattr(self.backbone, "init_samples", DEFAULT_INIT_SAMPLES))

    def init_from_data(self, images: torch.Tensor) -> None:
        """Data-dependent initialisation (e.g. whitening filters) from normalised training images.

        An optional backbone hook: a backbone that defines ``init_from_data(images)`` (and
        optionally ``init_samples``) gets it called once by the engine before training, with a
        shuffled batch of the training split as the network sees it (never val or test data).
        """
        hook = getattr(self.backbone, "init_from_data", None)
        if callable(hook):
            hook(images)


ARCHS: Registry[ArchInfo] = Registry(
    "architecture",
    plural="architectures",
    group=ENTRY_POINT_GROUP,
    decorator="register_arch",
    builtins=("podbench.tasks.fastnet",),  # built-ins in their own modules; the rest are below
)

B = TypeVar("B", bound=Builder)


def register_arch(
    name: str,
    *,
    description: str,
    reference: str = "",
    min_image_size: int = 1,
    aliases: tuple[str, ...] = (),
) -> Callable[[B], B]:
    """Decorator registering ``builder(in_channels, image_size) -> (backbone, backbone_dim)``.

    Example:
        >>> @register_arch("tiny-linear", description="one linear layer")
        ... def tiny(in_channels: int, image_size: int) -> tuple[nn.Module, int]:
        ...     return nn.Flatten(), in_channels * image_size * image_size
    """

    def decorator(builder: B) -> B:
        ARCHS.add(
            ArchInfo(name, description, reference, min_image_size, builder, aliases=tuple(aliases)),
            owner=builder,
        )
        return builder

    return decorator


def list_archs(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered architectures (built-ins and entry-point plugins).

    Args:
        pattern: keep only the names matching this glob (e.g. ``"resnet*"``).
    """
    return ARCHS.names(pattern)


def find_arch(name: str) -> ArchInfo:
    """The metadata of ``name`` (registered, or another library's name such as
    ``timm:resnet18``) without building it; a UserError says why an unknown name is unknown."""
    return ARCHS.get(name)


def _check(info: ArchInfo, in_channels: int, image_size: int, feat_dim: int) -> None:
    if int(in_channels) < 1:
        raise UserError(f"in_channels must be a positive integer, got {in_channels}.")
    if int(feat_dim) < 1:
        raise UserError(f"feat_dim must be a positive integer, got {feat_dim}.")
    if int(image_size) < info.min_image_size:
        raise UserError(
            f"architecture '{info.name}' needs images of at least "
            f"{info.min_image_size} px but image_size is {image_size}; set image_size "
            "(the images are resized) or choose a smaller network."
        )


def create_arch(
    name: str, *, in_channels: int, image_size: int, feat_dim: int, proj: str = "linear"
) -> LatentNet:
    """Build architecture ``name``: ``model(x) -> (B, feat_dim)`` with ``.backbone``, ``.proj``.

    The network ends at the latent features: the loss plugin owns the classifier head.
    ``proj``: ``"linear"`` (a Linear with bias to ``feat_dim``) or ``"none"`` (the backbone's
    features themselves; ``feat_dim`` must then equal the backbone's width).
    """
    info = ARCHS.get(name)
    _check(info, in_channels, image_size, feat_dim)
    backbone, dim = info.builder(int(in_channels), int(image_size))
    if proj == "none" and int(feat_dim) != int(dim):
        raise UserError(
            f"feat_dim: with proj: none the latent features are architecture "
            f"'{name}''s {dim} outputs, but feat_dim is {feat_dim}; set feat_dim: {dim} "
            "or proj: linear."
        )
    return LatentNet(backbone, dim, int(feat_dim), proj)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers excluded)."""
    return sum(p.numel() for p in module.parameters())


def arch_info(
    name: str, *, in_channels: int = 3, image_size: int = 32, feat_dim: int = 128
) -> ArchInfo:
    """Metadata of ``name`` with its parameter counts for the given configuration.

    The network is built on the meta device: counting costs no memory and no initialisation.
    """
    info = ARCHS.get(name)
    _check(info, in_channels, image_size, feat_dim)
    with torch.device("meta"):
        model = create_arch(name, in_channels=in_channels, image_size=image_size, feat_dim=feat_dim)
    return replace(
        info,
        param_count=count_parameters(model),
        backbone_params=count_parameters(model.backbone),
        config={"in_channels": in_channels, "image_size": image_size, "feat_dim": feat_dim},
    )


def prepare_model(
    model: nn.Module,
    device: str | torch.device = "cpu",
    *,
    channels_last: bool = False,
    compile: bool = False,
    compile_mode: str | None = None,
    compile_threads: float | None = None,
) -> nn.Module:
    """Move ``model`` to ``device`` (``"auto"`` too), optionally channels_last and compiled.

    ``model`` itself is moved and converted in place; the return value is ``model``, or its
    ``torch.compile`` wrapper when ``compile`` (whose state_dict keys gain an ``_orig_mod.``
    prefix: save ``model``'s). Inputs must then be converted too:
    ``x.to(memory_format=torch.channels_last)``. A compiled model forwards
    ``.backbone``/``.proj`` attribute access to the original module.

    Compiled code is kept per process and guarded on the module's class and tensor shapes, not
    on the module object: the next network of the same architecture (the next run in a reused
    worker) runs it without compiling again. ``compile_threads``: Inductor's compile workers
    (a run's CPUs; default: one per core of the host).
    """
    model = model.to(resolve_device(device))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        _compile_settings(compile_threads)
        model = torch.compile(model, mode=compile_mode)  # type: ignore[assignment]
    return model


def _compile_settings(threads: float | None) -> None:
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):  # the name changed across releases
        if getattr(dynamo_config, name, RECOMPILE_LIMIT) < RECOMPILE_LIMIT:
            setattr(dynamo_config, name, RECOMPILE_LIMIT)
    if threads is not None:
        with contextlib.suppress(ImportError, AttributeError):
            import torch._inductor.config as inductor_config

            inductor_config.compile_threads = max(1, int(threads))


# ---------------------------------------------------------------- small, CPU-friendly networks


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


@register_arch(
    "small-cnn",
    description="3 conv layers (32-64-128) with BN, global average pool; "
    "trains in seconds on a CPU",
    reference="podbench",
    min_image_size=4,
)
def small_cnn(in_channels: int, image_size: int) -> tuple[nn.Module, int]:
    layers: list[nn.Module] = [
        *_conv_bn(in_channels, 32),
        nn.MaxPool2d(2),
        *_conv_bn(32, 64),
        nn.MaxPool2d(2),
        *_conv_bn(64, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ]
    return nn.Sequential(*layers), 128


@register_arch(
    "mlp", description="2 hidden layers of 256 units on the flattened image", reference="podbench"
)
def mlp(in_channels: int, image_size: int) -> tuple[nn.Module, int]:
    inputs = in_channels * image_size * image_size
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(inputs, 256),
        nn.ReLU(inplace=True),
        nn.Linear(256, 256),
        nn.ReLU(inplace=True),
    ), 256


# ---------------------------------------------------------------- torchvision networks


def stem_conv(in_channels: int, out_channels: int, small: bool) -> nn.Conv2d:
    """The first convolution: 3x3 stride 1 for small images, else ResNet's 7x7 stride 2."""
    conv = (
        nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False)
        if small
        else nn.Conv2d(in_channels, out_channels, 7, 2, 3, bias=False)
    )
    if conv.weight.device.type != "meta":  # same initialisation torchvision gives its convs
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _resnet(
    factory: Callable[..., nn.Module], in_channels: int, image_size: int
) -> tuple[nn.Module, int]:
    net = factory(weights=None)
    small = image_size <= SMALL_STEM_MAX
    if small or in_channels != 3:
        net.conv1 = stem_conv(in_channels, 64, small)
    if small:
        net.maxpool = nn.Identity()
    dim = cast(nn.Linear, net.fc).in_features
    net.fc = nn.Identity()
    return net, dim


@register_arch(
    "resnet18",
    description="ResNet-18 (basic blocks [2, 2, 2, 2])",
    reference="torchvision.models.resnet18; He et al. 2016",
)
def resnet18(in_channels: int, image_size: int) -> tuple[nn.Module, int]:
    from torchvision.models import resnet18 as factory

    return _resnet(factory, in_channels, image_size)


@register_arch(
    "resnet34",
    description="ResNet-34 (basic blocks [3, 4, 6, 3])",
    reference="torchvision.models.resnet34; He et al. 2016",
)
def resnet34(in_channels: int, image_size: int) -> tuple[nn.Module, int]:
    from torchvision.models import resnet34 as factory

    return _resnet(factory, in_channels, image_size)


@register_arch(
    "resnet50",
    description="ResNet-50 (bottleneck blocks [3, 4, 6, 3]), the POD authors' network",
    reference="torchvision.models.resnet50; He et al. 2016",
)
def resnet50(in_channels: int, image_size: int) -> tuple[nn.Module, int]:
    from torchvision.models import resnet50 as factory

    return _resnet(factory, in_channels, image_size)


def _vgg_init(module: nn.Module) -> None:
    """torchvision VGG's initialisation (its __init__ applies it only to what it builds)."""
    if any(p.is_meta for p in module.parameters()):  # counting parameters only
        return
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@register_arch(
    "vgg16",
    description="VGG-16 with batch norm; small inputs: conv features + "
    "global average pool (512), 224 px: up to the second 4096 layer",
    reference="torchvision.models.vgg16_bn; Simonyan & Zisserman 2015",
    min_image_size=32,
)
def vgg16(in_channels: int, image_size: int) -> tuple[nn.Module, int]:
    from torchvision.models import vgg16_bn
    from torchvision.models.vgg import cfgs, make_layers

    if image_size <= SMALL_STEM_MAX:
        # the 7x7 pool and 25088-input classifier assume 224 px; small inputs end at 1x1 or 2x2
        features = make_layers(cfgs["D"], batch_norm=True)  # VGG-16's convolutions, no classifier
        if in_channels != 3:
            features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
        _vgg_init(features)
        return nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten()), 512
    net = vgg16_bn(weights=None)
    if in_channels != 3:
        net.features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
        _vgg_init(net.features[0])
    head = nn.Sequential(*list(net.classifier.children())[:-1])
    return nn.Sequential(net.features, net.avgpool, nn.Flatten(), head), 4096


@register_arch(
    "densenet121",
    description="DenseNet-121 (growth 32, blocks [6, 12, 24, 16]); "
    "small inputs: 3x3 stride-1 stem, no max-pool",
    reference="torchvision.models.densenet121; Huang et al. 2017",
    min_image_size=8,
)
def densenet121(in_channels: int, image_size: int) -> tuple[nn.Module, int]:
    from torchvision.models import densenet121 as factory

    net = factory(weights=None)
    small = image_size <= SMALL_STEM_MAX
    if small or in_channels != 3:
        net.features.conv0 = stem_conv(in_channels, 64, small)
    if small:
        net.features.pool0 = nn.Identity()
    dim = net.classifier.in_features
    net.classifier = nn.Identity()
    return net, dim


@register_arch(
    "mobilenet-v2",
    description="MobileNetV2 (width 1.0); small inputs: stride 1 in "
    "the stem and the first 24-channel block (total stride 8)",
    reference="torchvision.models.mobilenet_v2; Sandler et al. 2018",
    min_image_size=8,
)
def mobilenet_v2(in_channels: int, image_size: int) -> tuple[nn.Module, int]:
    from torchvision.models import mobilenet_v2 as factory

    net = factory(weights=None)
    small = image_size <= SMALL_STEM_MAX
    if small or in_channels != 3:
        stem = nn.Conv2d(in_channels, 32, 3, 1 if small else 2, 1, bias=False)
        if stem.weight.device.type != "meta":
            nn.init.kaiming_normal_(stem.weight, mode="fan_out")
        net.features[0][0] = stem
    if small:
        # the usual CIFAR adaptation: keep 32 px at 4x4 in the last stage instead of 1x1
        net.features[2].conv[1][0].stride = (1, 1)
    dim = net.last_channel
    net.classifier = nn.Identity()
    return net, dim
