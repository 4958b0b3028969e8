"""PEDCC centroids: exact simplex geometry, the charge model, the authors' files, safe loading."""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from podbench.errors import UserError
from podbench.losses import create_loss
from podbench.losses.pedcc import (
    load_centroids,
    make_centroids,
    pedcc_charge,
    pedcc_random,
    pedcc_simplex,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
REFERENCE_FILES = sorted(SHARED.glob("*/*.pkl")) if SHARED.is_dir() else []
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(),
    reason=f"the authors' centroid files are not at {SHARED} (../shared absent)",
)


def _off_diagonal(c: torch.Tensor) -> np.ndarray:
    g = (c @ c.T).numpy()
    return g[~np.eye(len(g), dtype=bool)]


@pytest.mark.parametrize(("k", "d"), [(2, 1), (3, 2), (10, 9), (10, 256), (100, 512), (37, 40)])
def test_losses_simplex_is_exact(k, d):
    c = pedcc_simplex(k, d, seed=3)
    assert c.shape == (k, d) and c.dtype == torch.float64
    np.testing.assert_allclose(np.linalg.norm(c.numpy(), axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(_off_diagonal(c), -1.0 / (k - 1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(c.sum(dim=0).numpy(), 0.0, rtol=0, atol=1e-12)
    assert np.linalg.matrix_rank(c.numpy(), tol=1e-9) == k - 1


def test_losses_simplex_is_seeded():
    assert torch.equal(pedcc_simplex(10, 32, seed=5), pedcc_simplex(10, 32, seed=5))
    assert not torch.allclose(pedcc_simplex(10, 32, seed=5), pedcc_simplex(10, 32, seed=6))


def test_losses_simplex_impossible_names_the_fix():
    with pytest.raises(UserError, match=r"feat_dim >= 9.*centroids='charge'"):
        pedcc_simplex(10, 8)
    with pytest.raises(UserError, match="feat_dim >= 99"):
        create_loss("pod", num_classes=100, feat_dim=32)


def test_losses_charge_model_is_seeded_unit_and_spread_like_the_authors():
    c = pedcc_charge(100, 512, seed=0)
    assert torch.equal(c, pedcc_charge(100, 512, seed=0))
    np.testing.assert_allclose(np.linalg.norm(c.numpy(), axis=1), 1.0, atol=1e-12)
    off = _off_diagonal(c)
    # LOSSES.md: the authors' (100, 512) file spans cosines -0.0171 .. -0.0052 around -1/99.
    assert -0.0200 < off.min() < -0.0140 and -0.0080 < off.max() < -0.0030
    assert abs(off.mean() + 1 / 99) < 5e-4


def test_losses_charge_model_works_below_the_simplex_dimension():
    c = pedcc_charge(10, 3, seed=1)
    off = _off_diagonal(c)
    rand = _off_diagonal(pedcc_random(10, 3, seed=1))
    assert off.max() < rand.max()  # pushed apart compared with its random start
    assert off.max() < 0.75  # 10 points on S^2: the best packing has max cosine about 0.69


@needs_shared
def test_losses_all_five_reference_files_load():
    assert len(REFERENCE_FILES) == 5
    for path in REFERENCE_FILES:
        k, d = (int(v) for v in re.match(r"(\d+)_(\d+)", path.name).groups())
        c = load_centroids(path)
        assert c.shape == (k, d) and c.dtype == torch.float64
        np.testing.assert_allclose(np.linalg.norm(c.numpy(), axis=1), 1.0, atol=1e-9)


@needs_shared
@pytest.mark.parametrize("name", ["10_256_s.pkl", "100_512_s.pkl", "200_512_s.pkl"])
def test_losses_pod_official_files_are_closed_form_simplices(name):
    c = load_centroids(SHARED / "pod-official-centroids" / name)
    k = c.shape[0]
    np.testing.assert_allclose(_off_diagonal(c), -1.0 / (k - 1), atol=1e-11)
    np.testing.assert_allclose(c.sum(dim=0).numpy(), 0.0, atol=1e-11)
    assert np.linalg.matrix_rank(c.numpy(), tol=1e-8) == k - 1


@needs_shared
def test_losses_pedcc_loss_file_spread_matches_losses_md():
    off = _off_diagonal(load_centroids(SHARED / "pedcc-loss-centroids" / "100_512.pkl"))
    assert round(float(off.min()), 4) == -0.0171 and round(float(off.max()), 4) == -0.0052


@needs_shared
def test_losses_pod_uses_the_authors_file_as_centroids():
    path = SHARED / "pod-official-centroids" / "10_256_s.pkl"
    plugin = create_loss("pod", num_classes=10, feat_dim=256, centroids=str(path))
    with open(path, "rb") as fh:  # trusted file: plain pickle here as the independent reading
        raw = pickle.load(fh)
    expected = torch.cat([raw[i].reshape(1, -1) for i in range(10)]).float()
    torch.testing.assert_close(plugin.centroids, expected, rtol=0, atol=1e-7)
    with pytest.raises(UserError, match="num_classes=100, feat_dim=256"):
        create_loss("pod", num_classes=100, feat_dim=256, centroids=str(path))


class _Hostile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_losses_hostile_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "10_16_s.pkl"
    path.write_bytes(pickle.dumps({0: _Hostile(marker)}))
    with pytest.raises(UserError, match=r"refused.*(system|posix)"):
        load_centroids(path)
    with pytest.raises(UserError, match="refused"):
        create_loss("pod", num_classes=10, feat_dim=16, centroids=str(path))
    assert not marker.exists()


def test_losses_hostile_payload_inside_a_tensor_storage_is_refused(tmp_path):
    # The authors' files rebuild storages with torch.storage._load_from_bytes; torch's own
    # version unpickles those bytes without restriction. Ours must not run what they name.
    marker = tmp_path / "pwned"
    inner = pickle.dumps(_Hostile(marker), protocol=2)
    payload = (
        b"\x80\x03}q\x00K\x00ctorch.storage\n_load_from_bytes\nq\x01C"
        + bytes([len(inner)])
        + inner
        + b"\x85q\x02Rq\x03s."
    )
    assert len(inner) < 256
    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    with pytest.raises(UserError, match="refused"):
        load_centroids(path)
    assert not marker.exists()


def test_losses_other_centroid_formats(tmp_path):
    c = pedcc_simplex(5, 6, seed=2)
    np.save(tmp_path / "c.npy", c.numpy())
    torch.save({i: c[i : i + 1] for i in range(5)}, tmp_path / "c.pt")
    buf = io.BytesIO()
    pickle.dump({i: c[i : i + 1].clone() for i in range(5)}, buf)  # the authors' way
    (tmp_path / "c.pkl").write_bytes(buf.getvalue())
    for name in ("c.npy", "c.pt", "c.pkl"):
        np.testing.assert_array_equal(load_centroids(tmp_path / name).numpy(), c.numpy())
    np.testing.assert_allclose(make_centroids(str(tmp_path / "c.npy"), 5, 6).numpy(), c.numpy())


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "does not exist"),
        (b"not a pickle at all", "could not be read"),
        (pickle.dumps({0: torch.zeros(1, 3), 2: torch.zeros(1, 3)}), "0..K-1"),
        (pickle.dumps([1, 2, 3]), "(K, d) float matrix"),
    ],
)
def test_losses_bad_centroid_files_give_one_sentence(tmp_path, content, words):
    path = tmp_path / "bad.pkl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError) as info:
        load_centroids(path)
    assert words in str(info.value) and str(path) in str(info.value)


def test_losses_unknown_centroid_kind_names_the_choices():
    with pytest.raises(UserError, match=r"'simplx' is neither one of simplex, charge, random"):
        make_centroids("simplx", 3, 4)
