"""``fastnet``: the network of the fastest known CIFAR-10 training recipe, as a podbench backbone.

Built from airbench94 (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU",
arXiv:2404.00498; github.com/KellerJordan/cifar10-airbench, file ``legacy/airbench94.py``: 94.01%
in 3.83 s on one A100). Our own code; what the network adopts, layer for layer:

- a 2x2 convolution without padding whose 24 filters are fixed (a buffer, never trained): the
  eigenvectors of the (uncentred) covariance of 2x2 patches of training images, each scaled by
  ``1 / sqrt(eigenvalue + 5e-4)``, and their negatives (so the GELU after it keeps both signs);
  its bias is trained for the first 3 epochs and then frozen (:meth:`FastNet.on_epoch_start`,
  which the engine calls at each epoch's start). Set from training images by
  :meth:`FastNet.init_from_data`, which the engine calls once before training (the first 5,000
  images of the training split, unaugmented, as airbench; never val or test);
- GELU, then three groups of ``conv3x3 -> max-pool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU``
  of widths 64, 256, 256; convolutions without bias, their first ``in_channels`` filters
  initialised to the identity (the rest PyTorch's default);
- BatchNorm with eps 1e-12, running statistics with airbench's momentum 0.6 (PyTorch's
  ``momentum=0.4``), scale fixed at 1 (not trained), shift trained with 64x the learning rate:
  the shift is stored divided by 8, and ``8^2 = 64`` makes plain SGD (one learning rate, one weight
  decay, as the engine has) take exactly the recipe's bias steps, weight decay included (airbench
  divides the shifts' decay by 64 so that their decay step equals the others');
- a global max-pool (airbench's ``MaxPool2d(3)`` on the 3x3 map of a 32 px input; global so that
  any input of 9 px or more works), and the recipe's output scale 1/9 applied to the 256 pooled
  features: ``W (f / 9)`` is airbench's ``(W f) / 9`` for its bias-free linear classifier.

The classifier is the loss plugin's (the podbench contract). airbench's own head, a bias-free
linear layer straight on these features, is ``proj: none`` (no projection: the latent features
are the 256 scaled pooled features) with the softmax or label-smoothing plugin at ``bias:
false``; the suite ``fast-cifar10`` runs the cross-entropy losses so, step for step airbench's
(tests/bench/test_bench_airbench_equivalence.py). The rest of the recipe lives in the training
settings: the triangular schedule, lookahead, alternating flips with 2-pixel reflect translation
(``augmentation: airbench``), dropping the last partial batch and test-time augmentation.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from podbench.tasks.archs import register_arch

__all__ = [
    "BIAS_GAIN",
    "WHITEN_BIAS_EPOCHS",
    "FastNet",
    "WhiteningConv",
    "patch_covariance",
    "whitening_filters",
]

WIDTHS = (64, 256, 256)
WHITEN_KERNEL = 2
WHITEN_EPS = 5e-4
WHITEN_SAMPLES = 5000
BN_EPS = 1e-12
BN_MOMENTUM = 0.4  # PyTorch convention: running <- 0.6 running + 0.4 batch
BIAS_GAIN = 8.0  # BN shift = 8 x parameter: SGD then moves it 8^2 = 64 times faster
OUTPUT_SCALE = 1.0 / 9.0
WHITEN_BIAS_EPOCHS = 3  # airbench trains the whitening bias for the first 3 epochs only


def patch_covariance(images: torch.Tensor, kernel: int, chunk: int = 500) -> torch.Tensor:
    """``E[p p^T]`` over every ``kernel`` x ``kernel`` patch (stride 1, no padding) of ``images``.

    Returns a (C k k, C k k) float64 matrix, in the order of a convolution weight's flattening
    (channel, row, column). Computed in chunks of images so memory stays bounded.
    """
    total = torch.zeros((), dtype=torch.float64, device=images.device)
    count = 0
    for start in range(0, images.shape[0], chunk):
        cols = F.unfold(images[start : start + chunk].float(), kernel)  # (n, C k k, L)
        flat = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        total = total + (flat.T @ flat).double()
        count += flat.shape[0]
    return total / max(count, 1)


def whitening_filters(
    covariance: torch.Tensor, channels: int, kernel: int, eps: float = WHITEN_EPS
) -> torch.Tensor:
    """Filters ``v_i / sqrt(lambda_i + eps)`` per eigenpair (largest first), then their negatives."""
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    order = torch.argsort(eigenvalues, descending=True)
    scaled = eigenvectors[:, order].T / torch.sqrt(eigenvalues[order].clamp_min(0) + eps)[:, None]
    filters = scaled.reshape(-1, channels, kernel, kernel)
    return torch.cat([filters, -filters])


class WhiteningConv(nn.Module):
    """A ``kernel`` x ``kernel`` convolution with fixed filters (a buffer) and a trained bias."""

    weight: torch.Tensor  # the filters, a buffer

    def __init__(self, in_channels: int, kernel: int = WHITEN_KERNEL) -> None:
        super().__init__()
        out = 2 * in_channels * kernel * kernel
        self.in_channels = in_channels
        self.kernel = kernel
        self.register_buffer("weight", torch.empty(out, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out))
        if self.weight.device.type != "meta":
            # usable before init_from_data: PyTorch's default convolution initialisation
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = WHITEN_EPS) -> None:
        """Set the filters from normalised training images (N, C, H, W)."""
        cov = patch_covariance(images.to(self.weight.device), self.kernel)
        filters = whitening_filters(cov, self.in_channels, self.kernel, eps)
        self.weight.copy_(filters.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias)


class _ShiftNorm(nn.BatchNorm2d):
    """BatchNorm with its scale fixed at 1 and its shift stored divided by :data:`BIAS_GAIN`."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias * BIAS_GAIN,
            self.training,
            BN_MOMENTUM,
            self.eps,
        )


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    if conv.weight.device.type != "meta":
        with torch.no_grad():  # the first filters pass their input channel through unchanged
            n = min(cin, cout)
            conv.weight[:n] = 0.0
            conv.weight[torch.arange(n), torch.arange(n), 1, 1] = 1.0
    return conv


def _group(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        _conv3x3(cin, cout),
        nn.MaxPool2d(2),
        _ShiftNorm(cout),
        nn.GELU(),
        _conv3x3(cout, cout),
        _ShiftNorm(cout),
        nn.GELU(),
    )


class FastNet(nn.Module):
    """Whitening stem, three conv groups, global max-pool, scaled pooled features (256)."""

    init_samples: ClassVar[int] = WHITEN_SAMPLES  # training images init_from_data wants

    def __init__(self, in_channels: int, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        self.whiten = WhiteningConv(in_channels)
        stem_width = self.whiten.weight.shape[0]
        blocks: list[nn.Module] = [nn.GELU()]
        for cin, cout in zip((stem_width, *widths[:-1]), widths, strict=True):
            blocks.append(_group(cin, cout))
        self.layers = nn.Sequential(*blocks)
        self.out_dim = widths[-1]

    def init_from_data(self, images: torch.Tensor) -> None:
        """Whitening filters from training images (called once by the engine before training)."""
        self.whiten.init_from_data(images)

    def on_epoch_start(self, epoch: int) -> None:
        """Train the whitening bias in the first :data:`WHITEN_BIAS_EPOCHS` epochs only.

        A frozen bias gets no gradient, so SGD leaves it (and its momentum) alone, as airbench.
        """
        self.whiten.bias.requires_grad_(epoch < WHITEN_BIAS_EPOCHS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.whiten(x))
        return torch.amax(x, dim=(2, 3)) * OUTPUT_SCALE


@register_arch(
    "fastnet",
    description="airbench94's network: fixed 2x2 whitening stem, GELU, conv "
    "groups 64-256-256 with max-pool and BN, global max-pool; a CIFAR-10 run in seconds "
    "on a GPU (suite fast-cifar10)",
    reference="Jordan 2024, airbench94, arXiv:2404.00498",
    min_image_size=9,
)
def fastnet(in_channels: int, image_size: int) -> tuple[nn.Module, int]:
    net = FastNet(in_channels)
    return net, net.out_dim
