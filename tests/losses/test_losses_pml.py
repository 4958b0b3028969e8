"""pytorch-metric-learning's losses as ``pml:<Name>``: discovery, hyperparameters, agreement with
the library and with our own ArcFace/CosFace, nearest-class-mean prediction, miners, proxies' lr.

The conformance kit runs on every ``pml:`` loss in test_losses_conformance.py (they are listed).
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from torch import nn

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")

from podbench.errors import UserError  # noqa: E402
from podbench.losses import create_loss, list_losses, loss_info  # noqa: E402
from podbench.losses import pml as adapter  # noqa: E402
from podbench.losses.testing import check_no_host_sync, count_host_syncs  # noqa: E402

NAMED_IN_THE_ISSUE = [
    "ArcFaceLoss",
    "SubCenterArcFaceLoss",
    "ProxyAnchorLoss",
    "SoftTripleLoss",
    "NormalizedSoftmaxLoss",
    "LargeMarginSoftmaxLoss",
    "SphereFaceLoss",
    "CosFaceLoss",
    "ProxyNCALoss",
]
PAIR_LOSSES = ["ContrastiveLoss", "TripletMarginLoss", "MultiSimilarityLoss", "SupConLoss"]


def _pml_names() -> list[str]:
    return [n for n in list_losses() if n.startswith("pml:")]


def _batch(seed: int = 0, b: int = 24, k: int = 5, d: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=gen) * 2, torch.arange(b) % k


def test_pml_every_loss_class_is_offered_or_left_out_with_a_reason() -> None:
    classes = {
        n for n, c in vars(pml_losses).items() if inspect.isclass(c) and issubclass(c, nn.Module)
    }
    offered = {n.removeprefix("pml:") for n in _pml_names()}
    left = adapter.left_out()
    assert offered | set(left) == classes and not offered & set(left)
    assert all(reason.strip() for reason in left.values())
    assert set(NAMED_IN_THE_ISSUE) | set(PAIR_LOSSES) <= offered
    # wrappers and losses without labels are left out, with the reason PML gives
    assert "wraps other losses" in left["CrossBatchMemory"]
    assert "labels" in left["VICRegLoss"]
    assert "needs margin, Tn" in left["RankedListLoss"]


def test_pml_kinds_and_descriptions() -> None:
    for name in NAMED_IN_THE_ISSUE:
        info = loss_info(f"pml:{name}")
        assert "class logits" in info.description and info.learnable_head
        assert info.source.startswith("pytorch-metric-learning ")
    for name in PAIR_LOSSES:
        info = loss_info(f"pml:{name}")
        assert "nearest class mean" in info.description and not info.learnable_head
        assert info.defaults["miner"] is None


def test_pml_hyperparameters_are_the_constructor_defaults() -> None:
    # PML's own names, units and defaults (ArcFace's margin in degrees), as documented by PML
    assert dict(loss_info("pml:ArcFaceLoss").defaults) == {
        "margin": 28.6,
        "scale": 64,
        "head_lr_scale": 1.0,
    }
    assert dict(loss_info("pml:SubCenterArcFaceLoss").defaults) == {
        "margin": 28.6,
        "scale": 64,
        "sub_centers": 3,
        "head_lr_scale": 1.0,
    }
    assert dict(loss_info("pml:CosFaceLoss").defaults) == {
        "margin": 0.35,
        "scale": 64,
        "head_lr_scale": 1.0,
    }
    # proxies learn at 100x the network's rate, as in the ProxyAnchor authors' code
    assert dict(loss_info("pml:ProxyAnchorLoss").defaults) == {
        "margin": 0.1,
        "alpha": 32,
        "head_lr_scale": 100.0,
    }
    assert dict(loss_info("pml:ContrastiveLoss").defaults) == {
        "pos_margin": 0,
        "neg_margin": 1,
        "miner": None,
    }
    assert dict(loss_info("pml:TripletMarginLoss").defaults) == {
        "margin": 0.05,
        "swap": False,
        "smooth_loss": False,
        "triplets_per_anchor": "all",
        "miner": None,
    }
    loss = create_loss(
        "pml:SoftTripleLoss", num_classes=3, feat_dim=4, centers_per_class=2, la=np.float64(10.0)
    )
    assert loss.loss.centers_per_class == 2 and loss.loss.la == 10.0
    assert tuple(loss.loss.fc.shape) == (4, 6)


@pytest.mark.parametrize(
    ("name", "params", "words"),
    [
        ("pml:ArcFaceLoss", {"marginn": 1.0}, "no hyperparameter 'marginn'"),
        ("pml:ArcFaceLoss", {"scale": -1.0}, "scale=-1.0 is invalid"),
        ("pml:ArcFaceLoss", {"scale": "big"}, "scale='big' is invalid"),
        ("pml:ArcFaceLoss", {"scale": math.nan}, "finite number"),
        ("pml:SupConLoss", {"temperature": 0.0}, "> 0"),
        ("pml:TripletMarginLoss", {"swap": 1}, "true or false"),
        ("pml:TripletMarginLoss", {"miner": "NoSuchMiner"}, "not a PML miner"),
        ("pml:ProxyAnchorLoss", {"head_lr_scale": 0}, "> 0"),
        ("pml:SoftTripleLoss", {"centers_per_class": 2.5}, "PML rejects"),
    ],
)
def test_pml_bad_hyperparameters_are_one_sentence(name: str, params: dict, words: str) -> None:
    with pytest.raises(UserError, match=words.replace("(", r"\(").replace("[", r"\[")):
        create_loss(name, num_classes=4, feat_dim=8, **params)


def test_pml_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(UserError, match=r"did you mean 'pml:ProxyAnchorLoss'"):
        loss_info("pml:ProxyAnchor")


@pytest.mark.parametrize("name", sorted(n.removeprefix("pml:") for n in _pml_names()))
def test_pml_total_and_parts_equal_the_library_forward(name: str) -> None:
    plugin = create_loss(f"pml:{name}", num_classes=5, feat_dim=8)
    x, y = _batch(1)
    out = plugin(x, y)
    with torch.random.fork_rng(devices=[]):
        expected = plugin.loss(x, y)  # PML's own forward on the same module
    torch.testing.assert_close(out.total, expected, rtol=1e-5, atol=1e-6)
    if out.parts:
        torch.testing.assert_close(sum(out.parts.values()), expected, rtol=1e-5, atol=1e-6)


def test_pml_proxy_anchor_parts_are_its_two_terms() -> None:
    plugin = create_loss("pml:ProxyAnchorLoss", num_classes=5, feat_dim=8)
    x, y = _batch(2)
    parts = plugin(x, y).parts
    assert set(parts) == {"pos_loss", "neg_loss"}
    # the paper's terms, written out: cosines to the proxies, alpha = 32, delta = 0.1
    cos = nn.functional.normalize(x, dim=1) @ nn.functional.normalize(plugin.loss.proxies, dim=1).T
    pos = y[:, None] == torch.arange(5)[None, :]
    with_pos = pos.any(dim=0)
    pos_term = (
        torch.log1p((torch.exp(-32 * (cos - 0.1)) * pos).sum(0))[with_pos].sum() / with_pos.sum()
    )
    neg_term = torch.log1p((torch.exp(32 * (cos + 0.1)) * ~pos).sum(0)).sum() / 5
    torch.testing.assert_close(parts["pos_loss"], pos_term, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(parts["neg_loss"], neg_term, rtol=1e-4, atol=1e-5)


def _both(ours: nn.Module, theirs: nn.Module) -> tuple[torch.Tensor, ...]:
    """Loss and feature gradient of each on the same weights and batch, and the batch."""
    with torch.no_grad():
        theirs.loss.W.copy_(ours.weight.T)  # PML keeps W as (d, K), ours (K, d)
    weight = ours.weight.detach()
    gen = torch.Generator().manual_seed(3)
    y = torch.arange(20) % weight.shape[0]
    x = torch.randn(20, weight.shape[1], generator=gen)
    x[:5] = -weight[y[:5]] + 0.05 * x[:5]  # nearly opposite the class weight: theta + m > pi
    x = x * 3
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    la, lb = ours(xa, y).total, theirs(xb, y).total
    la.backward()
    lb.backward()
    return la, lb, xa.grad, xb.grad, x


@pytest.mark.parametrize("scale, margin_rad", [(64.0, 0.5), (30.0, 0.3)])
def test_pml_arcface_agrees_with_ours(scale: float, margin_rad: float) -> None:
    torch.manual_seed(0)
    ours = create_loss("arcface", num_classes=6, feat_dim=8, s=scale, m=margin_rad)
    # PML's ArcFace margin is in degrees
    theirs = create_loss(
        "pml:ArcFaceLoss", num_classes=6, feat_dim=8, scale=scale, margin=math.degrees(margin_rad)
    )
    la, lb, ga, gb, x = _both(ours, theirs)
    torch.testing.assert_close(la, lb, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ga, gb, rtol=1e-3, atol=1e-5)
    # scores: ours the cosines, PML's the scaled cosines
    torch.testing.assert_close(theirs.predict(x), scale * ours.predict(x), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("scale, margin", [(64.0, 0.35), (30.0, 0.2)])
def test_pml_cosface_agrees_with_ours(scale: float, margin: float) -> None:
    torch.manual_seed(0)
    ours = create_loss("cosface", num_classes=6, feat_dim=8, s=scale, m=margin)
    theirs = create_loss("pml:CosFaceLoss", num_classes=6, feat_dim=8, scale=scale, margin=margin)
    la, lb, ga, gb, x = _both(ours, theirs)
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)
    assert torch.equal(theirs.predict(x).argmax(1), ours.predict(x).argmax(1))


def test_pml_classifier_scores_negate_distances() -> None:
    # ProxyNCA's logits are squared distances of unit vectors: the nearest proxy must win
    plugin = create_loss("pml:ProxyNCALoss", num_classes=4, feat_dim=8)
    proxies = nn.functional.normalize(plugin.loss.proxies.detach(), dim=1)
    x = proxies[[2, 0, 3]] * 5
    assert plugin.predict(x).argmax(1).tolist() == [2, 0, 3]
    torch.testing.assert_close(plugin.centroids_for_geometry(), plugin.loss.proxies.detach())


def test_pml_nearest_class_mean_from_training_batches_only() -> None:
    plugin = create_loss("pml:TripletMarginLoss", num_classes=4, feat_dim=3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=gen)
    y = torch.arange(40) % 3  # class 3 never appears in training
    plugin.train()
    plugin.on_epoch_start(0)
    plugin(x[:20], y[:20])
    plugin(x[20:], y[20:])
    plugin.eval()
    plugin(
        torch.randn(10, 3, generator=gen) * 100, torch.zeros(10, dtype=torch.long)
    )  # eval: ignored
    plugin.on_epoch_end(0)
    # the means of the unit-normalised training features (TripletMarginLoss: normalised L2)
    unit = x.numpy() / np.linalg.norm(x.numpy(), axis=1, keepdims=True)
    means = np.stack([unit[y.numpy() == c].mean(0) for c in range(3)])
    np.testing.assert_allclose(plugin.class_means[:3].numpy(), means, rtol=1e-5, atol=1e-6)
    assert plugin.has_mean.tolist() == [True, True, True, False]
    queries = torch.tensor(means, dtype=torch.float32) * 7
    scores = plugin.predict(queries)
    assert scores.argmax(1).tolist() == [0, 1, 2]
    assert bool((scores[:, 3] < scores[:, :3].min(1).values).all())  # never seen: never chosen
    # the next epoch's sums start afresh; its means replace the old ones at its end
    plugin.train()
    plugin.on_epoch_start(1)
    assert float(plugin.feature_count.sum()) == 0
    plugin(x[:4], torch.tensor([3, 3, 3, 3]))
    plugin.on_epoch_end(1)
    assert plugin.has_mean.all()
    np.testing.assert_allclose(plugin.class_means[0].numpy(), means[0], rtol=1e-5)


def test_pml_miner_tuples_reach_the_loss() -> None:
    plugin = create_loss("pml:TripletMarginLoss", num_classes=4, feat_dim=8, miner="BatchHardMiner")
    assert type(plugin.miner).__name__ == "BatchHardMiner"
    x, y = _batch(4, k=4)
    miner = pml_miners.BatchHardMiner()
    expected = pml_losses.TripletMarginLoss()(x, y, miner(x, y))
    torch.testing.assert_close(plugin(x, y).total, expected)
    unmined = create_loss("pml:TripletMarginLoss", num_classes=4, feat_dim=8)(x, y).total
    assert not torch.isclose(unmined, expected)


def test_pml_proxies_train_at_their_own_learning_rate() -> None:
    plugin = create_loss("pml:ProxyAnchorLoss", num_classes=4, feat_dim=8)
    net = nn.Linear(3, 8)
    groups = plugin.param_groups(list(net.parameters()), 0.05)
    assert [g["lr"] for g in groups] == [0.05, 5.0]
    assert groups[1]["params"] == [plugin.loss.proxies]
    # one SGD step moves each by its own rate times its gradient
    opt = torch.optim.SGD(groups, lr=0.05)
    before = plugin.loss.proxies.detach().clone(), net.weight.detach().clone()
    plugin(net(torch.randn(16, 3)), torch.arange(16) % 4).total.backward()
    grads = plugin.loss.proxies.grad.clone(), net.weight.grad.clone()
    opt.step()
    torch.testing.assert_close(plugin.loss.proxies.detach(), before[0] - 5.0 * grads[0])
    torch.testing.assert_close(net.weight.detach(), before[1] - 0.05 * grads[1])
    one = create_loss("pml:ArcFaceLoss", num_classes=4, feat_dim=8)
    assert len(one.param_groups(list(net.parameters()), 0.05)) == 1


def test_pml_creation_does_not_touch_the_global_random_state() -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    create_loss("pml:TripletMarginLoss", num_classes=4, feat_dim=8)  # no parameters: no draw
    torch.testing.assert_close(torch.rand(3), expected)


def test_pml_cli_lists_offered_and_left_out(capsys: pytest.CaptureFixture[str]) -> None:
    from podbench.cli import main

    assert main(["losses"]) == 0
    out = capsys.readouterr().out
    assert f"pml: {len(_pml_names())} losses of pytorch-metric-learning" in out
    assert "nearest class mean" in out
    for name in adapter.left_out():
        assert f"left out: {name}:" in out


@pytest.mark.parametrize("name", sorted(n.removeprefix("pml:") for n in _pml_names()))
def test_pml_every_device_read_is_the_librarys(name: str) -> None:
    plugin = create_loss(f"pml:{name}", num_classes=4, feat_dim=8)
    plugin.check_values = False  # as the engine runs after a run's first batch
    x, y = _batch(7, b=16, k=4)
    reads = []
    for mode in (True, False):
        plugin.train(mode)
        # forward and predict: each read is attributed to the line that asks for it (the
        # backward pass only replays the forward's ops)
        with count_host_syncs() as syncs:
            plugin.update_loss(x.clone().requires_grad_(True), y, 0)
            with torch.no_grad():
                plugin.predict(x)
        reads += syncs.calls
    ours = [r for r in reads if "pytorch_metric_learning" not in r]
    assert not ours, f"podbench's wrapper reads the device: {ours}"
    if reads:  # the library's own reads stall a GPU: the kit says so
        with pytest.raises(AssertionError, match="makes the host wait"):
            check_no_host_sync(f"pml:{name}")
    else:
        check_no_host_sync(f"pml:{name}")
