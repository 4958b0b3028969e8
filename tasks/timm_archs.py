"""timm's networks by name: ``timm:<model>`` wherever an architecture is named.

The network is built with random weights (``pretrained=False``: nothing is downloaded), with its
classifier removed (``num_classes=0``), so it returns its pooled features; podbench's projection
maps them to the latent dimension d, as for every other architecture. Inputs of at most
:data:`~podbench.tasks.archs.SMALL_STEM_MAX` px get the small-image stem where the family allows
it: ResNet-family networks (timm's ``ResNet`` class: resnet, resnet-d, resnext, seresnet, ...)
get a 3x3 stride-1 stem without max-pool, like podbench's own ResNets; networks that take an
``img_size`` (ViT, DeiT, Swin, ...) are built for the input size. Other families keep their
published stem.

Example:
    >>> from podbench.tasks import create_arch
    >>> import torch
    >>> net = create_arch("timm:resnet18", in_channels=3, image_size=32, feat_dim=16)
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 16])
"""

from __future__ import annotations

import difflib
import functools
from typing import Any, cast

from torch import nn

from podbench.errors import UserError
from podbench.tasks.archs import SMALL_STEM_MAX, ArchInfo, stem_conv

__all__ = ["PREFIX", "build", "list_models", "resolve", "timm_version"]

PREFIX = "timm"
INSTALL = "pip install 'podbench[timm]'"


def _import_timm() -> Any:
    try:
        import timm
    except ImportError as err:
        raise UserError(
            f"architecture names '{PREFIX}:...' need the timm package ({err}); install it with "
            f"`{INSTALL}` (or `pip install timm`)."
        ) from None
    return timm


def timm_version() -> str | None:
    """The installed timm's version, or None when it is missing."""
    try:
        return str(_import_timm().__version__)
    except UserError:
        return None


def list_models(pattern: str = "*") -> list[str]:
    """timm's model names matching a shell-style ``pattern`` (e.g. ``resnet*``)."""
    return list(_import_timm().list_models(pattern))


def _create(timm: Any, model: str, in_channels: int, image_size: int) -> nn.Module:
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0, "in_chans": in_channels}
    try:
        # networks with position embeddings or windows are built for the input size
        return timm.create_model(model, img_size=image_size, **kwargs)
    except TypeError as err:
        if "img_size" not in str(err):
            raise
    return timm.create_model(model, **kwargs)


def build(model: str, in_channels: int, image_size: int) -> tuple[nn.Module, int]:
    """timm's ``model`` without its classifier, and the size of the features it returns."""
    timm = _import_timm()
    from timm.models.resnet import ResNet

    try:
        net = _create(timm, model, in_channels, image_size)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001  timm's reason, as one sentence
        raise UserError(
            f"architecture '{PREFIX}:{model}': timm cannot build it for {in_channels}x"
            f"{image_size}x{image_size} inputs ({type(err).__name__}: {err}); choose another "
            "network or set image_size."
        ) from None
    if isinstance(net, ResNet) and image_size <= SMALL_STEM_MAX:
        # the POD authors' small-image stem: 3x3 stride 1, no max-pool (deep stems replaced too)
        stem_width = int(cast(nn.BatchNorm2d, net.bn1).num_features)
        # timm types a deep stem's conv1 as Sequential: any module fits there
        net.conv1 = stem_conv(in_channels, stem_width, small=True)  # type: ignore[assignment]
        net.maxpool = nn.Identity()  # type: ignore[assignment]
    # with num_classes=0 the forward returns the pre-logits features (some families add a
    # hidden layer after pooling, e.g. MobileNetV3's conv_head: head_hidden_size)
    dim: Any = getattr(net, "head_hidden_size", None) or getattr(net, "num_features")  # noqa: B009
    return net, int(dim)


def resolve(model: str) -> tuple[ArchInfo, Any]:
    """The :class:`ArchInfo` and builder of ``timm:<model>`` (UserError: timm missing, or no
    such model)."""
    timm = _import_timm()
    if not timm.is_model(model):
        close = difflib.get_close_matches(model, timm.list_models(), n=1, cutoff=0.6)
        hint = f" (did you mean '{PREFIX}:{close[0]}'?)" if close else ""
        raise UserError(
            f"architecture '{PREFIX}:{model}': timm {timm.__version__} has no model '{model}'"
            f"{hint}; list them with `podbench tasks --timm 'PATTERN'`."
        )
    family = timm.models.model_entrypoint(model).__module__.rsplit(".", 1)[-1]
    stem = "; small inputs: 3x3 stride-1 stem, no max-pool" if family == "resnet" else ""
    builder = functools.partial(build, model)
    info = ArchInfo(
        name=f"{PREFIX}:{model}",
        description=f"timm {family} network, random init{stem}",
        reference=f"timm {timm.__version__} (huggingface/pytorch-image-models), model '{model}'",
        min_image_size=1,
        builder=builder,
        source=f"timm {timm.__version__}",
    )
    return info, builder
