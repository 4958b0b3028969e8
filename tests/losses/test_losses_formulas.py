"""Every loss against an independent computation: numpy/scipy formulas and hand-worked points."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, logsumexp

from podbench.losses import create_loss, loss_info
from podbench.losses.large_margin import psi

RNG = np.random.default_rng(0)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float32)


def _data(b: int, d: int, k: int, scale: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    return RNG.normal(size=(b, d)) * scale, np.arange(b) % k


# -- POD ------------------------------------------------------------------------------------


def _pod_reference(
    x: np.ndarray, y: np.ndarray, c: np.ndarray, delta: float
) -> tuple[float, float]:
    """NaC as the squared cosine distance of [x, delta] to [c, 0]; SC from the d x d matrix S."""
    xa = np.hstack([x, np.full((len(x), 1), delta)])
    ca = np.hstack([c[y], np.zeros((len(x), 1))])
    cos = (xa * ca).sum(1) / np.linalg.norm(xa, axis=1) / np.linalg.norm(ca, axis=1)
    nac = np.mean((1 - cos) ** 2)
    z = x / np.linalg.norm(x, axis=1, keepdims=True) - c[y]
    s = z.T @ z / (len(x) - 1)
    d = x.shape[1]
    sc = (s**2)[~np.eye(d, dtype=bool)].sum() / (d - 1)
    return nac, sc


@pytest.mark.parametrize(("b", "d"), [(16, 32), (64, 12)])  # Gram trick (B < d) and d x d path
def test_losses_pod_terms_match_the_formulas(b, d):
    k = 5
    plugin = create_loss("pod", num_classes=k, feat_dim=d, centroid_seed=1, sc_weight=0.7)
    c = plugin.centroids.double().numpy()
    x, y = _data(b, d, k)
    out = plugin(_t(x), torch.tensor(y))
    nac, sc = _pod_reference(x, y, c, 0.05)
    assert out.parts["nac"].item() == pytest.approx(nac, rel=1e-5)
    assert out.parts["sc"].item() == pytest.approx(sc, rel=1e-4)
    assert out.total.item() == pytest.approx(nac + 0.7 * sc, rel=1e-4)


def test_losses_pod_official_delta_schedule():
    k, d = 4, 6
    plugin = create_loss("pod", num_classes=k, feat_dim=d, centroid_seed=0)
    c = plugin.centroids.double().numpy()
    assert plugin.delta == pytest.approx(0.05)  # first epoch
    for epoch in range(3):
        plugin.train()
        plugin.on_epoch_start(epoch)
        seen = []
        for _ in range(3):
            x, y = _data(8, d, k, scale=1.0 + epoch)
            plugin(_t(x), torch.tensor(y))
            seen.append(x)
        plugin.eval()
        plugin(_t(x * 100), torch.tensor(y))  # evaluation batches must not count
        plugin.on_epoch_end(epoch)
        m = np.linalg.norm(np.vstack(seen) @ c.T, axis=1).mean()
        assert plugin.delta == pytest.approx(0.01 * (epoch + 1) * m, rel=1e-5)
        # the next epoch's NaC uses that delta
        x, y = _data(8, d, k)
        nac, _ = _pod_reference(x, y, c, plugin.delta)
        assert plugin(_t(x), torch.tensor(y)).parts["nac"].item() == pytest.approx(nac, rel=1e-5)


@pytest.mark.parametrize(
    ("variant", "expected"), [("delta-mean-norm", "m"), ("delta-constant", 0.05)]
)
def test_losses_pod_other_delta_schedules(variant, expected):
    k, d = 3, 4
    plugin = create_loss("pod", num_classes=k, feat_dim=d, variant=variant, centroid_seed=0)
    c = plugin.centroids.double().numpy()
    x, y = _data(9, d, k)
    plugin.train()
    plugin(_t(x), torch.tensor(y))
    plugin.on_epoch_end(4)
    m = np.linalg.norm(x @ c.T, axis=1).mean()
    assert plugin.delta == pytest.approx(m if expected == "m" else expected, rel=1e-5)


def test_losses_pod_delta_none_is_the_normalised_first_version():
    k, d = 3, 5
    plugin = create_loss("pod", num_classes=k, feat_dim=d, variant="delta-none", centroid_seed=2)
    c = plugin.centroids.double().numpy()
    x, y = _data(10, d, k)
    plugin.on_epoch_end(0)
    assert plugin.delta == 0.0
    xh = x / np.linalg.norm(x, axis=1, keepdims=True)
    nac = np.mean((1 - (xh * c[y]).sum(1)) ** 2)  # mean (1 - <x_hat, c_y>)^2
    assert plugin(_t(x), torch.tensor(y)).parts["nac"].item() == pytest.approx(nac, rel=1e-5)


def test_losses_pod_predicts_by_cosine_and_argmax_of_x_ct():
    plugin = create_loss("pod", num_classes=6, feat_dim=8, centroid_seed=0)
    x, _ = _data(50, 8, 6)
    c = plugin.centroids.double().numpy()
    xh = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(plugin.predict(_t(x)).numpy(), xh @ c.T, atol=1e-6)
    assert (plugin.predict(_t(x)).argmax(1).numpy() == (x @ c.T).argmax(1)).all()


def test_losses_pod_weights_switch_terms_off():
    x, y = _data(12, 8, 4)
    no_sc = create_loss("pod", num_classes=4, feat_dim=8, variant="no-sc", centroid_seed=0)
    no_nac = create_loss("pod", num_classes=4, feat_dim=8, variant="no-nac", centroid_seed=0)
    a, b = no_sc(_t(x), torch.tensor(y)), no_nac(_t(x), torch.tensor(y))
    assert a.total.item() == pytest.approx(a.parts["nac"].item())
    assert b.total.item() == pytest.approx(b.parts["sc"].item())


# -- PEDCC-Loss -------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [None, "mse-mean", "cifar100"])
def test_losses_pedcc_loss_matches_its_formula(variant):
    k, d, b = 5, 8, 20
    plugin = create_loss("pedcc", num_classes=k, feat_dim=d, variant=variant, centroid_seed=3)
    s, m = plugin.s, plugin.m
    c = plugin.centroids.double().numpy()
    x, y = _data(b, d, k)
    out = plugin(_t(x), torch.tensor(y))
    bn = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)  # BatchNorm1d(affine=False), batch stats
    xh = bn / np.linalg.norm(bn, axis=1, keepdims=True)
    cos = xh @ c.T
    logits = s * (cos - m * np.eye(k)[y])
    am = np.mean(logsumexp(logits, axis=1) - logits[np.arange(b), y])
    sq = (xh - c[y]) ** 2
    mse = sq.sum() if variant != "mse-mean" else sq.mean()
    assert out.parts["am"].item() == pytest.approx(am, rel=1e-5)
    assert out.parts["mse"].item() == pytest.approx(mse, rel=1e-5)
    assert out.total.item() == pytest.approx(am + mse, rel=1e-5)


# -- softmax family ------------------------------------------------------------------------------


def _head(plugin) -> tuple[np.ndarray, np.ndarray]:
    return plugin.head.weight.detach().double().numpy(), plugin.head.bias.detach().double().numpy()


def test_losses_softmax_and_label_smoothing_match_scipy():
    k, d, b = 6, 5, 30
    x, y = _data(b, d, k)
    for name, eps in (("softmax", 0.0), ("label-smoothing", 0.1)):
        torch.manual_seed(0)
        plugin = create_loss(name, num_classes=k, feat_dim=d)
        w, bias = _head(plugin)
        logp = log_softmax(x @ w.T + bias, axis=1)
        expected = np.mean(-(1 - eps) * logp[np.arange(b), y] - eps * logp.mean(1))
        assert plugin(_t(x), torch.tensor(y)).total.item() == pytest.approx(expected, rel=1e-5)


def _set_weight(plugin, w) -> None:
    with torch.no_grad():
        plugin.weight.copy_(torch.tensor(w, dtype=torch.float32))


def test_losses_cosface_at_a_hand_worked_point():
    plugin = create_loss("am-softmax", num_classes=2, feat_dim=2)
    _set_weight(plugin, [[3.0, 0.0], [0.0, 0.5]])  # normalised to the axes
    out = plugin(torch.tensor([[1.2, 1.6]]), torch.tensor([0]))
    # cosines (0.6, 0.8): logits 30 (0.6 - 0.35) = 7.5 and 30 * 0.8 = 24
    assert out.total.item() == pytest.approx(math.log1p(math.exp(24.0 - 7.5)), rel=1e-5)


@pytest.mark.parametrize("theta", [math.pi / 3, 2.9])  # theta + m below and above pi
def test_losses_arcface_at_hand_worked_points(theta):
    plugin = create_loss("arcface", num_classes=2, feat_dim=2, s=10.0)
    _set_weight(plugin, [[1.0, 0.0], [0.0, 1.0]])
    x = torch.tensor([[math.cos(theta), math.sin(theta)]]) * 4.0
    out = plugin(x, torch.tensor([0]))
    m = 0.5
    target = math.cos(theta + m) if theta + m <= math.pi else math.cos(theta) - m * math.sin(m)
    other = math.sin(theta)
    expected = math.log1p(math.exp(10.0 * (other - target)))
    assert out.total.item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(
    ("m", "theta", "expected"),
    [
        (2, math.pi / 3, -0.5),  # k = 0: cos(2pi/3)
        (2, 2 * math.pi / 3, -1.5),  # k = 1: -cos(4pi/3) - 2
        (4, math.pi / 4, -1.0),  # k = 1: -cos(pi) - 2
        (4, 0.1, math.cos(0.4)),  # k = 0
        (3, math.pi, -5.0),  # k = 2: cos(3pi) - 4
    ],
)
def test_losses_large_margin_psi_at_hand_worked_points(m, theta, expected):
    value = psi(torch.tensor([math.cos(theta)], dtype=torch.float64), m).item()
    assert value == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_losses_large_margin_psi_is_continuous_and_decreasing(m):
    theta = np.linspace(0, np.pi, 20001)
    values = psi(torch.tensor(np.cos(theta)), m).numpy()
    assert np.all(np.diff(values) < 1e-12)
    assert np.max(np.abs(np.diff(values))) < 1e-2  # no jumps at k pi / m
    assert values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(1 - 2 * m)


def test_losses_l_softmax_without_annealing_at_a_hand_worked_point():
    plugin = create_loss("l-softmax", num_classes=2, feat_dim=2, variant="no-anneal", margin=2)
    _set_weight(plugin, [[1.0, 0.0], [0.0, 1.0]])
    theta = math.pi / 3
    x = torch.tensor([[2 * math.cos(theta), 2 * math.sin(theta)]])
    out = plugin(x, torch.tensor([0]))
    target = 1.0 * 2.0 * -0.5  # ||W_0|| ||x|| psi(pi/3) with m = 2
    other = 2 * math.sin(theta)
    assert out.total.item() == pytest.approx(math.log1p(math.exp(other - target)), rel=1e-5)


def _large_margin_loss(lam: float, norm_w: float, norm_x: float, theta: float, m: int) -> float:
    """CE of two classes at angle theta from W_0 (W_1 orthogonal to W_0), the target annealed."""
    plain = norm_w * norm_x * math.cos(theta)
    margin = norm_w * norm_x * math.cos(m * theta)  # k = 0 since m theta < pi
    target = (lam * plain + margin) / (1 + lam)
    other = norm_x * math.sin(theta)  # ||W_1|| = 1 in both tests
    return math.log1p(math.exp(other - target))


def test_losses_sphereface_annealing_schedule():
    plugin = create_loss("sphereface", num_classes=2, feat_dim=2)
    _set_weight(plugin, [[2.0, 0.0], [0.0, 3.0]])  # A-Softmax normalises W
    theta = 0.5
    x = torch.tensor([[3 * math.cos(theta), 3 * math.sin(theta)]])
    plugin.train()
    assert plugin.current_lambda == 1000.0  # before the first iteration
    for t in range(1, 5):  # the Caffe layer counts the iteration before computing lambda
        lam = max(5.0, 1000.0 / (1 + 0.12 * t))
        out = plugin(x, torch.tensor([0]))
        assert plugin.current_lambda == pytest.approx(lam)
        assert out.total.item() == pytest.approx(_large_margin_loss(lam, 1, 3, theta, 4), rel=1e-5)
    plugin.iteration.fill_(10**6)
    assert plugin.current_lambda == 5.0  # the floor


def test_losses_l_softmax_anneals_with_its_authors_schedule():
    # the L-Softmax authors' Caffe layer: lambda = 1000 (1 + 2.5e-5 t)^-35, floor 0, t from 1
    plugin = create_loss("l-softmax", num_classes=2, feat_dim=2)
    _set_weight(plugin, [[2.0, 0.0], [0.0, 1.0]])
    theta = 0.3
    x = torch.tensor([[1.5 * math.cos(theta), 1.5 * math.sin(theta)]])
    plugin.train()
    for start, t in [(0, 1), (1, 2), (2, 3), (999, 1000), (9_999, 10_000), (39_099, 39_100)]:
        plugin.iteration.fill_(start)
        lam = 1000.0 * math.pow(1.0 + 0.000025 * t, -35.0)
        out = plugin(x, torch.tensor([0]))
        assert int(plugin.iteration) == t
        assert plugin.current_lambda == pytest.approx(lam, rel=1e-6)
        assert out.total.item() == pytest.approx(
            _large_margin_loss(lam, 2, 1.5, theta, 4), rel=1e-5
        )
    assert plugin.current_lambda < 1e-7  # 100 CIFAR epochs at batch 128: the full margin
    plugin.eval()
    plugin(x, torch.tensor([0]))
    assert int(plugin.iteration) == 39_100  # evaluation does not advance the schedule
    assert dict(loss_info("sphereface").defaults)["lambda_gamma"] == 0.12  # each its own


def test_losses_center_loss_value_and_centre_update():
    plugin = create_loss("center", num_classes=2, feat_dim=1, lam=0.1, alpha=0.5)
    w, bias = _head(plugin)
    x = np.array([[1.0], [3.0], [-2.0]])
    y = np.array([0, 0, 1])
    plugin.centers.zero_()  # the hand-worked numbers below start from zero centres
    plugin.train()
    out = plugin(_t(x), torch.tensor(y))
    logp = log_softmax(x @ w.T + bias, axis=1)
    ce = -logp[np.arange(3), y].mean()
    center = 0.5 * np.mean([1.0, 9.0, 4.0])  # centres start at zero
    assert out.parts["center"].item() == pytest.approx(center, rel=1e-6)
    assert out.total.item() == pytest.approx(ce + 0.1 * center, rel=1e-6)
    # Wen et al.: delta_c0 = ((0 - 1) + (0 - 3)) / (1 + 2), c0 <- 0 - 0.5 delta_c0 = 2/3
    #              delta_c1 = (0 + 2) / (1 + 1) = 1,        c1 <- 0 - 0.5 * 1 = -1/2
    np.testing.assert_allclose(plugin.centers.numpy().ravel(), [2 / 3, -0.5], rtol=1e-6)
    plugin.eval()
    plugin(_t(x), torch.tensor(y))
    np.testing.assert_allclose(plugin.centers.numpy().ravel(), [2 / 3, -0.5], rtol=1e-6)


def test_losses_center_starts_from_caffes_xavier_filler():
    from scipy.stats import kstest

    k, d = 50, 64
    torch.manual_seed(3)
    plugin = create_loss("center", num_classes=k, feat_dim=d)
    c = plugin.centers.double().numpy()
    a = math.sqrt(3.0 / d)  # Caffe XavierFiller: U(-sqrt(3 / fan_in), +), fan_in = count / K = d
    assert c.shape == (k, d) and np.abs(c).max() <= a and np.abs(c).max() > 0.99 * a
    assert kstest(c.ravel(), "uniform", args=(-a, 2 * a)).pvalue > 1e-3
    assert c.var() == pytest.approx(1.0 / d, rel=0.05)  # a^2 / 3
    torch.manual_seed(3)
    again = create_loss("center", num_classes=k, feat_dim=d).centers
    torch.manual_seed(4)
    other = create_loss("center", num_classes=k, feat_dim=d).centers
    assert torch.equal(plugin.centers, again) and not torch.equal(plugin.centers, other)
    assert plugin.centroids_for_geometry() is plugin.centers  # geometry reads the centres


def _released_cot_step(logits: np.ndarray, y: np.ndarray) -> float:
    """The released code's ComplementEntropy (henry8527/COT) in numpy, its guards included."""
    b, k = logits.shape
    p = np.exp(logits - logsumexp(logits, axis=1, keepdims=True))
    yg_ = (1.0 - p[np.arange(b), y]) + 1e-7
    px = p / yg_[:, None]
    zerohot = np.ones((b, k))
    zerohot[np.arange(b), y] = 0.0
    return float(np.sum(px * np.log(px + 1e-10) * zerohot) / b / k)  # what its loop minimises


@pytest.mark.parametrize("k", [5, 10, 100])
def test_losses_cot_complement_step_is_the_released_code(k):
    d, b = 6, 40
    plugin = create_loss("cot", num_classes=k, feat_dim=d)
    w, bias = _head(plugin)
    x, y = _data(b, d, k, scale=1.0)
    comp_step = plugin.update_loss(_t(x), torch.tensor(y), 1)
    assert comp_step.total.item() == pytest.approx(_released_cot_step(x @ w.T + bias, y), rel=1e-5)
    # the log(K-1) variant is K / ln(K-1) times stronger
    log_step = create_loss("cot", num_classes=k, feat_dim=d, variant="log-norm")
    log_step.load_state_dict(plugin.state_dict())
    ratio = log_step.update_loss(_t(x), torch.tensor(y), 1).total.item() / comp_step.total.item()
    assert ratio == pytest.approx(k / math.log(k - 1), rel=1e-5)


def test_losses_cot_log_norm_variant_matches_numpy():
    k, d, b = 5, 4, 12
    plugin = create_loss("cot", num_classes=k, feat_dim=d, variant="log-norm")
    w, bias = _head(plugin)
    x, y = _data(b, d, k)
    p = np.exp(log_softmax(x @ w.T + bias, axis=1))
    entropies = []
    for i in range(b):
        q = np.delete(p[i], y[i])
        q = q / q.sum()
        entropies.append(-(q * np.log(q)).sum())
    expected = np.mean(entropies) / np.log(k - 1)
    ce_step = plugin.update_loss(_t(x), torch.tensor(y), 0)
    comp_step = plugin.update_loss(_t(x), torch.tensor(y), 1)
    assert comp_step.total.item() == pytest.approx(-expected, rel=1e-5)
    assert ce_step.total.item() == pytest.approx(-np.log(p[np.arange(b), y]).mean(), rel=1e-5)
    # uniform non-target probabilities: complement entropy exactly 1
    with torch.no_grad():
        plugin.head.weight.zero_()
        plugin.head.bias.zero_()
    assert plugin.update_loss(_t(x), torch.tensor(y), 1).total.item() == pytest.approx(-1.0)


def _pod_autograd(x: torch.Tensor, own: torch.Tensor, delta: float) -> torch.Tensor:
    """Plain-autograd POD (NaC + SC with the d x d matrix) for checking the written-out backward."""
    r = (x.square().sum(1) + delta**2).sqrt()
    nac = ((1 - (x * own).sum(1) / r) ** 2).mean()
    z = torch.nn.functional.normalize(x, dim=1) - own
    s = z.T @ z / (x.shape[0] - 1)
    sc = (s.square().sum() - torch.diagonal(s).square().sum()) / (x.shape[1] - 1)
    return 0.7 * nac + 1.3 * sc


@pytest.mark.parametrize(("b", "d"), [(9, 5), (5, 9), (200, 300), (300, 130)])
@pytest.mark.parametrize("delta", [0.0, 0.05, 3.0])
def test_losses_pod_gradient_matches_autograd_of_the_formula(b, d, delta):
    from podbench.losses.pod import pod_terms

    gen = torch.Generator().manual_seed(b * d)
    x = (torch.randn(b, d, generator=gen, dtype=torch.float64) * 2).requires_grad_(True)
    own = torch.nn.functional.normalize(
        torch.randn(b, d, generator=gen, dtype=torch.float64), dim=1
    )
    expected = _pod_autograd(x, own, delta)
    (want,) = torch.autograd.grad(expected, x)
    for dot in (None, (x * own).sum(1)):  # the plugin passes <x, c_y> from the delta scores
        nac, sc = pod_terms(x, own, delta, dot)
        total = 0.7 * nac + 1.3 * sc
        (got,) = torch.autograd.grad(total, x)
        assert total.item() == pytest.approx(expected.item(), rel=1e-12)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)
