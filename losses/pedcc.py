"""PEDCC: predefined evenly-distributed class centroids, generated (seeded) or loaded (safely).

- :func:`pedcc_simplex`: the regular simplex (the POD authors' generator, exact for d >= K-1).
- :func:`pedcc_charge`: the iterative charge model (the PEDCC-Loss authors' generator).
- :func:`load_centroids`: the authors' pickled centroid files through a restricted unpickler,
  ``torch.save`` files with ``weights_only=True``, or ``.npy`` arrays without pickle.
- :func:`make_centroids`: one of the above by name, as the losses' ``centroids`` option.

Example:
    >>> c = pedcc_simplex(10, 256, seed=0)
    >>> round(float(c[0] @ c[1]), 12)
    -0.111111111111
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from podbench.errors import UserError

__all__ = [
    "CENTROID_CHOICES",
    "load_centroids",
    "make_centroids",
    "pedcc_charge",
    "pedcc_random",
    "pedcc_simplex",
]

#: Generated centroid kinds; any other value of a ``centroids`` option is a file path.
CENTROID_CHOICES = ("simplex", "charge", "random")


def _check_sizes(num_classes: int, feat_dim: int) -> None:
    if num_classes < 2 or feat_dim < 1:
        raise UserError(
            f"centroids need num_classes >= 2 and feat_dim >= 1, got num_classes={num_classes}, "
            f"feat_dim={feat_dim}; fix the run's dataset or feat_dim."
        )


def pedcc_simplex(num_classes: int, feat_dim: int, seed: int = 0) -> Tensor:
    """K unit vectors in R^d with pairwise inner product exactly -1/(K-1), turned at random.

    The vertices of a regular simplex (rank K-1, summing to zero) embedded in R^d by a random
    orthonormal frame drawn from ``seed``: the same (K, d, seed) always gives the same centroids.

    Returns:
        A float64 tensor of shape (K, d).

    Raises:
        UserError: when d < K-1 (no such simplex exists in R^d).
    """
    _check_sizes(num_classes, feat_dim)
    k = num_classes
    if feat_dim < k - 1:
        raise UserError(
            f"a regular simplex of num_classes={k} centroids needs feat_dim >= {k - 1}, got "
            f"feat_dim={feat_dim}; raise feat_dim or use centroids='charge'."
        )
    # Helmert rows: an orthonormal basis of the sum-zero hyperplane of R^K, in closed form.
    helmert = torch.zeros(k - 1, k, dtype=torch.float64)
    for r in range(1, k):
        helmert[r - 1, :r] = 1.0 / math.sqrt(r * (r + 1))
        helmert[r - 1, r] = -r / math.sqrt(r * (r + 1))
    # Column j of the Helmert basis is the centred unit vector e_j - 1/K, of norm sqrt((K-1)/K).
    vertices = helmert.T * math.sqrt(k / (k - 1))  # (K, K-1)
    gen = torch.Generator().manual_seed(int(seed))
    gauss = torch.randn(feat_dim, k - 1, generator=gen, dtype=torch.float64)
    frame, r_factor = torch.linalg.qr(gauss)
    # Sign fix makes the frame Haar-distributed (a uniformly random rotation).
    frame = frame * torch.where(torch.diagonal(r_factor) < 0, -1.0, 1.0).to(frame.dtype)
    return vertices @ frame.T


def pedcc_charge(
    num_classes: int,
    feat_dim: int,
    seed: int = 0,
    *,
    iterations: int = 200,
    step: float = 0.01,
) -> Tensor:
    """The PEDCC-Loss authors' charge model: K like charges pushed apart on the unit sphere.

    Start from K random normal points projected on the sphere with velocity 0; each iteration
    computes the force F_m = sum_{n != m} (u_m - u_n) / max(||u_m - u_n||, 0.01)^3, keeps its
    tangential part, moves u <- normalise(u + v) with the old velocity, then v <- v + step * F.
    Works for any d (the only option when d < K-1); only approximately even.

    Returns:
        A float64 tensor of shape (K, d), rows of unit norm.
    """
    _check_sizes(num_classes, feat_dim)
    gen = torch.Generator().manual_seed(int(seed))
    u = torch.randn(num_classes, feat_dim, generator=gen, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    v = torch.zeros_like(u)
    for _ in range(iterations):
        gram = u @ u.T
        sq = torch.diagonal(gram)
        # Pairwise distances from the Gram matrix: O(K^2 d) memory-free, not a (K, K, d) tensor.
        dist = (sq[:, None] + sq[None, :] - 2.0 * gram).clamp_min(0.0).sqrt()
        weight = dist.clamp_min(0.01).pow(-3)
        weight.fill_diagonal_(0.0)
        force = u * weight.sum(dim=1, keepdim=True) - weight @ u
        tangential = force - (force * u).sum(dim=1, keepdim=True) * u
        u = u + v
        u = u / u.norm(dim=1, keepdim=True)
        v = v + step * tangential
    return u


def pedcc_random(num_classes: int, feat_dim: int, seed: int = 0) -> Tensor:
    """K independent random unit vectors (the ablation baseline: not evenly distributed)."""
    _check_sizes(num_classes, feat_dim)
    gen = torch.Generator().manual_seed(int(seed))
    u = torch.randn(num_classes, feat_dim, generator=gen, dtype=torch.float64)
    return u / u.norm(dim=1, keepdim=True)


# -- loading the authors' files ----------------------------------------------------------------


class _Refused(pickle.UnpicklingError):
    """The pickle names something a centroid file never needs."""


def _storage_from_bytes(data: bytes) -> Any:
    # torch's own _load_from_bytes unpickles with weights_only=False; this one stays restricted.
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except pickle.UnpicklingError as err:
        raise _Refused(str(err).splitlines()[0]) from None


def _rebuild_tensor(storage: Any, *args: Any) -> Tensor:
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise _Refused(f"a tensor is rebuilt from a {type(storage).__name__}")
    return torch._utils._rebuild_tensor_v2(storage, *args)


class _CentroidUnpickler(pickle.Unpickler):
    """Admits only what a pickled dict of CPU tensors needs; refuses every other global."""

    ALLOWED: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"forbidden global {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused(f"forbidden persistent id {pid!r}")


def _as_matrix(obj: Any, path: Path) -> Tensor:
    if isinstance(obj, dict):
        keys = sorted(obj) if all(type(k) is int for k in obj) else None
        if keys != list(range(len(obj))) or not all(isinstance(obj[k], Tensor) for k in keys):
            raise UserError(
                f"centroids file {path} holds a dict that is not {{0..K-1: tensor}}; save a dict "
                "of class index -> tensor (1, d), or a (K, d) tensor."
            )
        rows = [obj[k].reshape(1, -1) for k in keys]
        if len({r.shape[1] for r in rows}) != 1:
            raise UserError(
                f"centroids file {path} holds tensors of different lengths; every class "
                "centroid must have the same dimension d."
            )
        obj = torch.cat(rows, dim=0)
    if isinstance(obj, np.ndarray):
        obj = torch.from_numpy(obj)
    if not isinstance(obj, Tensor) or obj.dim() != 2 or not obj.is_floating_point():
        raise UserError(
            f"centroids file {path} does not hold a (K, d) float matrix; save a dict of class "
            "index -> tensor (1, d), or a (K, d) tensor."
        )
    return obj.detach().to(torch.float64).clone()


def load_centroids(path: str | Path) -> Tensor:
    """Load (K, d) centroids from a file, safely, as float64.

    Formats: a pickled dict {class index: tensor (1, d)} (the authors' ``<K>_<d>_s.pkl`` and
    ``<K>_<d>.pkl``), read by a restricted unpickler that admits only the tensor-rebuild
    functions; a ``torch.save`` file (read with ``weights_only=True``); a ``.npy`` array.

    Raises:
        UserError: missing or unreadable file, a pickle naming any other global (it could run
            code), or content that is not a (K, d) matrix.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"centroids file {path} does not exist; give the path of a centroid file "
            f"or one of {', '.join(CENTROID_CHOICES)}."
        )
    try:
        if path.suffix == ".npy":
            obj: Any = np.load(path, allow_pickle=False)
        elif zipfile.is_zipfile(path):
            obj = torch.load(path, map_location="cpu", weights_only=True)
        else:
            with path.open("rb") as fh:
                obj = _CentroidUnpickler(fh).load()
    except _Refused as err:
        raise UserError(
            f"centroids file {path} was refused ({err}): it is not a plain file of tensors and "
            "could run code when loaded; regenerate it with podbench.losses.pedcc."
        ) from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        raise UserError(
            f"centroids file {path} could not be read ({type(err).__name__}: {err}); give a "
            "pickled dict of tensors, a torch.save file or a .npy array."
        ) from None
    return _as_matrix(obj, path)


def make_centroids(kind: str, num_classes: int, feat_dim: int, seed: int = 0) -> Tensor:
    """(K, d) unit-norm float64 centroids: ``simplex``, ``charge``, ``random`` or a file path.

    Raises:
        UserError: an impossible simplex, or a file whose shape is not (num_classes, feat_dim).
    """
    if not isinstance(kind, (str, Path)):
        raise UserError(
            f"centroids={kind!r} is invalid; use one of {', '.join(CENTROID_CHOICES)} or a path."
        )
    if kind == "simplex":
        return pedcc_simplex(num_classes, feat_dim, seed)
    if kind == "charge":
        return pedcc_charge(num_classes, feat_dim, seed)
    if kind == "random":
        return pedcc_random(num_classes, feat_dim, seed)
    path = Path(kind).expanduser()
    if not path.is_file():
        raise UserError(
            f"centroids={str(kind)!r} is neither one of {', '.join(CENTROID_CHOICES)} nor an "
            "existing file; fix the name or the path."
        )
    cents = load_centroids(path)
    if tuple(cents.shape) != (num_classes, feat_dim):
        raise UserError(
            f"centroids file {path} holds {cents.shape[0]} centroids of dimension "
            f"{cents.shape[1]} but the run has num_classes={num_classes}, feat_dim={feat_dim}; "
            f"use a {num_classes}_{feat_dim} file or change feat_dim."
        )
    norms = cents.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        raise UserError(f"centroids file {path} holds a zero vector; every centroid needs norm 1.")
    return cents / norms
