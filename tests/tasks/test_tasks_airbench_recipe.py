"""airbench94's data side in podbench: alternating flips, reflect translation, TTA views, the
whitening filters and the frozen whitening bias, each against airbench's formulas written out."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from podbench.errors import UserError
from podbench.tasks import create_arch, load_task
from podbench.tasks.augment import (
    epoch_plan,
    image_protocol,
    random_crop_flip,
    run_flips,
    tta_views,
)
from podbench.tasks.fastnet import WHITEN_BIAS_EPOCHS, FastNet, WhiteningConv


def test_airbench_protocol_is_reflect_translate_2_with_alternating_flips() -> None:
    p = image_protocol(32, 32, augment=True, crop_padding=4, hflip=True, policy="airbench")
    assert (p.train, p.padding, p.pad_mode, p.hflip, p.alternating_flip) == (
        "pad-crop",
        2,
        "reflect",
        True,
        True,
    )
    off = image_protocol(32, 32, augment=False, crop_padding=4, hflip=True, policy="airbench")
    assert (off.train, off.padding, off.hflip, off.alternating_flip) == ("none", 0, False, False)


def test_alternating_flips_invert_every_other_epoch_per_image() -> None:
    n = 1000
    base = run_flips(n, seed=7)
    assert 400 < int(base.sum()) < 600  # a fair coin per image
    for epoch in range(4):
        plan = epoch_plan(n, 7, epoch, padding=2, hflip=True, alternating_flip=True)
        assert plan.flips is not None
        flipped = torch.zeros(n, dtype=torch.bool)
        flipped[plan.order] = plan.flips  # per image index, not per position
        # airbench: the once-drawn flip in even epochs, all of them inverted in odd ones
        assert torch.equal(flipped, base if epoch % 2 == 0 else ~base)
    # another seed, other draws
    assert not torch.equal(run_flips(n, seed=8), base)


def test_reflect_translation_equals_slicing_a_reflect_padded_image() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 8, 8), generator=gen, dtype=torch.uint8)
    offsets = torch.tensor([[0, 0], [4, 4], [1, 3], [2, 2], [4, 0], [3, 1]])
    flips = torch.tensor([False, True, False, True, True, False])
    got = random_crop_flip(images, offsets, flips, 2, "reflect")
    for i in range(6):
        # reflect padding by hand: mirrored rows/columns without the edge pixel
        idx = torch.tensor([2, 1, *range(8), 6, 5])
        padded = images[i][:, idx][:, :, idx]
        top, left = offsets[i].tolist()
        crop = padded[:, top : top + 8, left : left + 8]
        expected = crop.flip(-1) if flips[i] else crop
        assert torch.equal(got[i], expected), i


def test_tta_views_weight_airbench_level_2() -> None:
    # airbench: 0.5 * mirror(x) + 0.5 * mean(mirror(x shifted up-left), mirror(x shifted
    # down-right)), mirror(v) = 0.5 f(v) + 0.5 f(flip v), shifts from a 1-pixel reflect pad
    torch.manual_seed(0)
    x = torch.randn(3, 2, 10, 10)
    weight = torch.randn(5, 2 * 10 * 10)

    def f(v: torch.Tensor) -> torch.Tensor:
        return torch.tanh(v.flatten(1) @ weight.T)

    def mirror(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * f(v) + 0.5 * f(v.flip(-1))

    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    translated = torch.stack(
        [mirror(padded[:, :, 0:10, 0:10]), mirror(padded[:, :, 2:12, 2:12])]
    ).mean(0)
    expected = 0.5 * mirror(x) + 0.5 * translated
    views = tta_views(x)
    assert len(views) == 6 and sum(w for w, _ in views) == pytest.approx(1.0)
    got = sum(w * f(v) for w, v in views)
    torch.testing.assert_close(got, expected)


def _airbench_whitening(images: torch.Tensor, eps: float = 5e-4) -> torch.Tensor:
    """airbench's init_whitening_conv, written out: patches by unfold, eigh, largest first."""
    c = images.shape[1]
    patches = images.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, c, 2, 2)
    flat = patches.reshape(len(patches), -1).double()
    cov = flat.T @ flat / len(flat)
    values, vectors = torch.linalg.eigh(cov)
    values, vectors = values.flip(0), vectors.T.flip(0)
    scaled = vectors / torch.sqrt(values + eps)[:, None]
    return torch.cat([scaled, -scaled]).reshape(-1, c, 2, 2)


def test_whitening_filters_equal_airbench_up_to_each_eigenvector_sign() -> None:
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(30, 1, 13, 13, generator=gen)
    images = (base[..., 1:, 1:] + base[..., :-1, :-1]) * torch.tensor([1.0, 0.7, 0.4]).view(
        1, 3, 1, 1
    )
    images = images + 0.1 * torch.randn(30, 3, 12, 12, generator=gen)
    layer = WhiteningConv(3)
    layer.init_from_data(images)
    ours = layer.weight.double().reshape(24, -1)
    theirs = _airbench_whitening(images).reshape(24, -1)
    # an eigenvector's sign is arbitrary (and a basis of a repeated eigenvalue's space): compare
    # the filters' norms, largest eigenvalue first, and the operator sum_i w_i w_i^T they make
    torch.testing.assert_close(ours[:12].norm(dim=1), theirs[:12].norm(dim=1), rtol=1e-4, atol=0)
    operator = theirs[:12].T @ theirs[:12]  # the inverse of (covariance + eps I)
    torch.testing.assert_close(
        ours[:12].T @ ours[:12], operator, rtol=1e-4, atol=1e-5 * float(operator.abs().max())
    )  # float32 filters
    # the leading eigenvalue is well separated: that filter matches up to its sign
    sign = torch.sign(ours[0] @ theirs[0])
    torch.testing.assert_close(ours[0], sign * theirs[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours[12:], -ours[:12])


def test_whitening_bias_is_trained_for_three_epochs_then_frozen() -> None:
    net = FastNet(3, widths=(4, 8, 8))
    states = []
    for epoch in range(5):
        net.on_epoch_start(epoch)
        states.append(net.whiten.bias.requires_grad)
    assert WHITEN_BIAS_EPOCHS == 3 and states == [True, True, True, False, False]
    model = create_arch("fastnet", in_channels=3, image_size=16, feat_dim=256, proj="none")
    model.on_epoch_start(3)  # the latent net passes the hook on
    assert not model.backbone.whiten.bias.requires_grad
    assert isinstance(model.proj, torch.nn.Identity)


def test_proj_none_needs_the_backbone_width() -> None:
    with pytest.raises(UserError, match="feat_dim: with proj: none .* set feat_dim: 256"):
        create_arch("fastnet", in_channels=3, image_size=16, feat_dim=10, proj="none")


def test_airbench_augmentation_on_the_in_memory_task() -> None:
    task = load_task("synthetic", augmentation="airbench", limit={"train": 64, "test": 8})
    assert task.protocol.pad_mode == "reflect" and task.protocol.alternating_flip
    raw = load_task("synthetic", augment=False, limit={"train": 64, "test": 8})
    stored = next(raw.eval_batches("train", 64))[0]
    for epoch in (0, 1):
        plan = epoch_plan(64, 3, epoch, padding=2, hflip=True, alternating_flip=True)
        x, _ = next(task.train_batches(64, seed=3, epoch=epoch))
        # every batch image is its stored image translated by the plan and mirrored by it
        idx = torch.tensor([2, 1, *range(16), 14, 13])
        for pos in (0, 17, 63):
            img = stored[plan.order[pos]][:, idx][:, :, idx]
            top, left = plan.offsets[pos].tolist()
            crop = img[:, top : top + 16, left : left + 16]
            crop = crop.flip(-1) if plan.flips[pos] else crop
            torch.testing.assert_close(x[pos], crop, rtol=1e-5, atol=1e-5)
