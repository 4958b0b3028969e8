"""Geometry statistics against NumPy/SciPy computations and feature sets known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from podbench.geometry import GEOMETRY_KEYS, geometry_stats, plugin_geometry
from podbench.losses import create_loss
from podbench.losses.pedcc import make_centroids


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    c = 1.0 - cdist(a[None], b[None], "cosine")[0, 0]
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


def _offdiag(z: np.ndarray) -> float:
    corr = np.corrcoef(z, rowvar=False)
    d = corr.shape[0]
    return float(np.mean([abs(corr[i, j]) for i in range(d) for j in range(d) if i != j]))


def _reference(
    x: np.ndarray, y: np.ndarray, centers: np.ndarray | None, f: np.ndarray
) -> dict[str, float]:
    """Every statistic written differently: scipy distances, np.corrcoef, explicit loops."""
    classes = sorted(set(y.tolist()))
    means = {k: f[y == k].mean(axis=0) for k in classes}
    own = np.stack([means[k] if centers is None else centers[k] for k in y])
    cos_own = [1.0 - cdist(f[i : i + 1], own[i : i + 1], "cosine")[0, 0] for i in range(len(f))]
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    inter = [_angle(means[a], means[b]) for a in classes for b in classes if a < b]
    intra = np.mean([_angle(f[i], means[y[i]]) for i in range(len(f))])
    norms = np.linalg.norm(x, axis=1)
    return {
        "mean_cos_to_center": float(np.mean(cos_own)),
        "residual_abs_offdiag_corr": _offdiag(unit(f) - unit(own)),
        "mean_abs_offdiag_corr": _offdiag(x),
        "min_interclass_angle_deg": min(inter),
        "mean_interclass_angle_deg": float(np.mean(inter)),
        "mean_intraclass_angle_deg": float(intra),
        "intra_inter_angle_ratio": float(intra / np.mean(inter)),
        "mean_feature_norm": float(norms.mean()),
        "std_feature_norm": float(np.sqrt(np.mean((norms - norms.mean()) ** 2))),
    }


@pytest.mark.parametrize("with_centers", [False, True])
@pytest.mark.parametrize("with_classified", [False, True])
def test_geometry_matches_numpy_reference(with_centers: bool, with_classified: bool) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 5)) + rng.normal(size=(1, 5))
    y = rng.integers(0, 4, size=60)
    f = np.tanh(x @ rng.normal(size=(5, 6))) if with_classified else x
    centers = rng.normal(size=(4, f.shape[1])) if with_centers else None
    got = geometry_stats(
        torch.from_numpy(x),
        torch.from_numpy(y),
        None if centers is None else torch.from_numpy(centers),
        classified=torch.from_numpy(f) if with_classified else None,
    )
    want = _reference(x, y, centers, f)
    assert set(got) == set(want) == set(GEOMETRY_KEYS)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_geometry_of_features_on_a_regular_simplex() -> None:
    # every feature on its class's simplex vertex, at its own norm: perfectly aligned and compact
    k, d = 5, 8
    c = make_centroids("simplex", k, d, 0).double()
    y = torch.arange(40) % k
    norms = torch.linspace(0.5, 4.0, 40, dtype=torch.float64)
    x = c[y] * norms[:, None]
    got = geometry_stats(x, y, c)
    simplex = math.degrees(math.acos(-1.0 / (k - 1)))
    assert got["mean_cos_to_center"] == pytest.approx(1.0)
    assert got["min_interclass_angle_deg"] == pytest.approx(simplex)
    assert got["mean_interclass_angle_deg"] == pytest.approx(simplex)
    assert got["mean_intraclass_angle_deg"] == pytest.approx(0.0, abs=1e-5)
    assert got["intra_inter_angle_ratio"] == pytest.approx(0.0, abs=1e-7)
    assert got["mean_feature_norm"] == pytest.approx(2.25)  # mean of linspace(0.5, 4)
    # population std of 40 evenly spaced values of step h: h sqrt((n^2 - 1) / 12)
    assert got["std_feature_norm"] == pytest.approx(3.5 / 39 * math.sqrt((40**2 - 1) / 12))


@pytest.mark.parametrize(("k", "phi"), [(3, 0.2), (5, 0.7)])
def test_geometry_of_a_cone_around_orthogonal_centres(k: int, phi: float) -> None:
    # class j: cos(phi) e_j +- sin(phi) e_{k+j} (two samples), centre e_j, at norm j + 1.
    # Cosine to the centre cos(phi); class mean cos(phi) e_j: intra-class angle phi, class
    # means orthogonal. Residuals x_hat - e_j: the first k dimensions are (cos phi - 1) on
    # class j only, so pairs among them correlate -1/(k-1); every other pair is uncorrelated
    # (the +- cancels): mean |off-diagonal r| = k(k-1)/(k-1) / (2k(2k-1)) = 1 / (2(2k-1)).
    # The raw features have the same pattern of correlations (and their norms differ).
    eye = torch.eye(2 * k, dtype=torch.float64)
    rows, labels, norms = [], [], []
    for j in range(k):
        for sign in (1.0, -1.0):
            rows.append((math.cos(phi) * eye[j] + sign * math.sin(phi) * eye[k + j]) * (j + 1))
            labels.append(j)
            norms.append(j + 1.0)
    x, y = torch.stack(rows), torch.tensor(labels)
    got = geometry_stats(x, y, eye[:k])
    assert got["mean_cos_to_center"] == pytest.approx(math.cos(phi))
    assert got["mean_intraclass_angle_deg"] == pytest.approx(math.degrees(phi))
    assert got["min_interclass_angle_deg"] == pytest.approx(90.0)
    assert got["mean_interclass_angle_deg"] == pytest.approx(90.0)
    assert got["intra_inter_angle_ratio"] == pytest.approx(math.degrees(phi) / 90.0)
    assert got["residual_abs_offdiag_corr"] == pytest.approx(1.0 / (2 * (2 * k - 1)))
    assert got["mean_abs_offdiag_corr"] == pytest.approx(1.0 / (2 * (2 * k - 1)))
    assert got["mean_feature_norm"] == pytest.approx(np.mean(norms))
    assert got["std_feature_norm"] == pytest.approx(math.sqrt((k**2 - 1) / 12))


@pytest.mark.parametrize("phi", [0.1, 0.3, 0.6])
def test_geometry_residual_correlation_is_not_the_class_means_correlation(phi: float) -> None:
    # two classes at centres e_0, e_1; samples (c, +-s) and (+-s, c), c = cos phi, s = sin phi.
    # Raw: r = -c^2 / (2 - c^2), near -1 (the class means). Residuals (c - 1, +-s), (+-s, c - 1):
    # r = -(1 - c)^2 / ((1 - c)^2 + 2 s^2), near 0: within each class the noise is uncorrelated.
    c, s = math.cos(phi), math.sin(phi)
    x = torch.tensor([[c, s], [c, -s], [s, c], [-s, c]], dtype=torch.float64)
    got = geometry_stats(x, torch.tensor([0, 0, 1, 1]), torch.eye(2, dtype=torch.float64))
    assert got["mean_abs_offdiag_corr"] == pytest.approx(c**2 / (2 - c**2))
    assert got["residual_abs_offdiag_corr"] == pytest.approx(
        (1 - c) ** 2 / ((1 - c) ** 2 + 2 * s**2)
    )
    assert got["mean_abs_offdiag_corr"] > 0.5 > 0.1 > got["residual_abs_offdiag_corr"]


def test_geometry_hand_worked_orthogonal_case() -> None:
    # two classes on the axes: features exactly on their centres, 90 degrees apart
    x = torch.tensor([[2.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 5.0]])
    y = torch.tensor([0, 0, 1, 1])
    got = geometry_stats(x, y, torch.eye(2))
    assert got["mean_cos_to_center"] == pytest.approx(1.0)
    assert got["min_interclass_angle_deg"] == pytest.approx(90.0)
    assert got["mean_feature_norm"] == pytest.approx((2 + 3 + 1 + 5) / 4)
    # Pearson r of the two columns (2,3,0,0) and (0,0,1,5), computed from its definition
    a = np.array([2, 3, 0, 0.0]) - 1.25
    b = np.array([0, 0, 1, 5.0]) - 1.5
    r = (a @ b) / math.sqrt((a @ a) * (b @ b))
    assert got["mean_abs_offdiag_corr"] == pytest.approx(abs(r))
    assert "residual_abs_offdiag_corr" not in got  # residuals all zero: no correlation defined


def test_geometry_leaves_out_what_is_undefined() -> None:
    x = torch.tensor([[1.0, 0.0, 7.0], [2.0, 1.0, 7.0], [3.0, 3.0, 7.0]])
    got = geometry_stats(x, torch.zeros(3, dtype=torch.long))
    for key in ("min_interclass_angle_deg", "mean_interclass_angle_deg", "intra_inter_angle_ratio"):
        assert key not in got  # one class: no pair of class means
    r = np.corrcoef(np.array([1.0, 2, 3]), np.array([0.0, 1, 3]))[0, 1]
    assert got["mean_abs_offdiag_corr"] == pytest.approx(abs(r))  # the constant column left out
    assert all(isinstance(v, float) and math.isfinite(v) for v in got.values())
    one = geometry_stats(x[:1], torch.zeros(1, dtype=torch.long))
    assert "mean_abs_offdiag_corr" not in one and one["mean_feature_norm"] == pytest.approx(
        math.sqrt(50)
    )


def test_geometry_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        geometry_stats(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError):
        geometry_stats(
            torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), classified=torch.zeros(2, 2)
        )


# -- through the plugins: the features each loss classifies, its own centres -----------------


def test_pedcc_geometry_is_measured_on_bn_normalised_features() -> None:
    # x = mu + sigma * c_y: BN with these running statistics maps x back onto the centroid c_y,
    # so PEDCC classifies every sample at cosine 1 from its centroid; the raw x is far from it.
    k, d = 4, 6
    plugin = create_loss("pedcc", num_classes=k, feat_dim=d, centroids="simplex", centroid_seed=0)
    c = plugin.centroids.double()
    mu = torch.linspace(5.0, 10.0, d, dtype=torch.float64)
    sigma = torch.linspace(0.5, 3.0, d, dtype=torch.float64)
    y = torch.arange(24) % k
    x = mu + sigma * c[y]
    plugin.bn.running_mean.copy_(mu.float())
    plugin.bn.running_var.copy_((sigma**2 - plugin.bn.eps).float())  # BN divides by sqrt(var + eps)
    plugin.train()
    got = plugin_geometry(plugin, x.float(), y)
    assert plugin.training  # the mode is given back
    assert got["mean_cos_to_center"] == pytest.approx(1.0, abs=1e-5)
    simplex = math.degrees(math.acos(-1.0 / (k - 1)))
    assert got["min_interclass_angle_deg"] == pytest.approx(simplex, abs=1e-3)
    raw = np.mean(
        [
            1.0 - cdist(x[i : i + 1].numpy(), c[y[i]][None].numpy(), "cosine")[0, 0]
            for i in range(24)
        ]
    )
    assert raw < 0.5  # what the raw output would have claimed
    assert geometry_stats(x, y, c)["mean_cos_to_center"] == pytest.approx(raw)


def test_cosine_losses_are_measured_on_normalised_features() -> None:
    torch.manual_seed(0)
    for name in ("pod", "cosface", "arcface", "sphereface"):
        plugin = create_loss(name, num_classes=3, feat_dim=4)
        x = torch.randn(30, 4) * torch.linspace(0.1, 9.0, 30)[:, None]
        y = torch.arange(30) % 3
        got = plugin_geometry(plugin, x, y)
        want = geometry_stats(
            x, y, plugin.centroids_for_geometry(), classified=x / x.norm(dim=1, keepdim=True)
        )
        assert got == pytest.approx(want), name
        # class means of the unit features, not of x: the long vectors do not dominate
        assert got != pytest.approx(geometry_stats(x, y, plugin.centroids_for_geometry())), name


def test_center_loss_geometry_reads_its_learned_centres() -> None:
    torch.manual_seed(0)
    plugin = create_loss("center", num_classes=3, feat_dim=4)
    y = torch.arange(12) % 3
    x = plugin.centers[y] * 2.0  # on the learned centres, not on the softmax weights
    got = plugin_geometry(plugin, x, y)
    assert got["mean_cos_to_center"] == pytest.approx(1.0)
    assert geometry_stats(x, y, plugin.head.weight)["mean_cos_to_center"] < 0.9
