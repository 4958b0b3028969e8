"""Readers of the standard on-disk dataset formats; every malformed file is a UserError naming it."""

from __future__ import annotations

import gzip
import io
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from podbench.errors import UserError

__all__ = [
    "IMAGE_EXTENSIONS",
    "decode_image_files",
    "folder_image_size",
    "read_cifar_pickle",
    "read_idx",
    "read_svhn_mat",
    "scan_class_folders",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                    ".pgm")
_JPEG = (".jpg", ".jpeg")


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)

def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a numpy array; only unsigned-byte data is accepted."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as err:
        raise UserError(f"IDX file {path} could not be read ({err}); replace it with an intact "
                        "copy (gzipped or not).") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"IDX file {path} does not start with an unsigned-byte IDX header; "
                        "replace it with the original file.")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims)) + header
    if len(data) != expected:
        raise UserError(f"IDX file {path} holds {len(data)} bytes but its header {dims} needs "
                        f"{expected}; the file is truncated or corrupt, replace it.")
    # a writable copy: torch refuses to own read-only buffers
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


# ---------------------------------------------------------------- CIFAR python pickles

class _ArrayUnpickler(pickle.Unpickler):
    """Admits only what numpy arrays in a dict need: a pickle can otherwise run any code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("copy_reg", "_reconstructor"),
        ("copyreg", "_reconstructor"),
        ("__builtin__", "object"),
        ("builtins", "object"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_pickle(path: Path) -> dict[str, object]:
    """One file of ``cifar-10-batches-py`` / ``cifar-100-python`` as a dict with str keys."""
    try:
        with open(path, "rb") as fh:
            raw = _ArrayUnpickler(fh, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, AttributeError) as err:
        raise UserError(f"CIFAR batch file {path} could not be read ({err}); replace it with the "
                        "file from the original python-version archive.") from err
    if not isinstance(raw, dict):
        raise UserError(f"CIFAR batch file {path} does not hold a dict; replace it with the file "
                        "from the original python-version archive.")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in raw.items()}


# ---------------------------------------------------------------- SVHN .mat

def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``{train,test}_32x32.mat`` -> (N, 3, 32, 32) uint8 images and labels 0..9 (10 means 0)."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
        x, y = mat["X"], mat["y"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"SVHN file {path} could not be read as a MATLAB file with X and y "
                        f"({err}); replace it with the original cropped-digits file.") from err
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.reshape(-1).shape[0] != x.shape[3]:
        raise UserError(f"SVHN file {path} has X of shape {x.shape} and {y.size} labels; "
                        "expected X (32, 32, 3, N) and N labels, replace it.")
    labels = y.reshape(-1).astype(np.int64) % 10
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), labels


# ---------------------------------------------------------------- image folders

def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def scan_class_folders(
    split_dir: Path, classes: Sequence[str] | None = None, subdir: str = ""
) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """Image files of ``split_dir/<class>/[subdir/]`` sorted, their labels, and the class names.

    Classes are the sub-folders in sorted order (torchvision ImageFolder's order) unless given.
    """
    if classes is None:
        classes = sorted(e.name for e in os.scandir(split_dir)
                         if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise UserError(f"image folder {split_dir} has no class sub-folders; expected "
                        f"{split_dir}/<class>/<image> files.")
    paths: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        folder = split_dir / cls / subdir if subdir else split_dir / cls
        if not folder.is_dir():
            raise UserError(f"class folder {folder} is missing; every split needs one folder per "
                            f"class ({len(classes)} classes).")
        names = sorted(e.name for e in os.scandir(folder) if e.is_file() and _is_image(e.name))
        paths.extend(str(folder / n) for n in names)
        labels.extend([label] * len(names))
    if not paths:
        raise UserError(f"image folder {split_dir} holds no image files ({', '.join(IMAGE_EXTENSIONS)}"
                        "); put the images in its class sub-folders.")
    return paths, np.asarray(labels, dtype=np.int64), tuple(classes)


def folder_image_size(paths: Sequence[str], image_size: int | None, native: int | None) -> int:
    """Size images of a folder are decoded at: asked for, else the dataset's, else the first's."""
    if image_size:
        return int(image_size)
    if native:
        return int(native)
    from PIL import Image

    try:
        with Image.open(paths[0]) as im:  # reads the header only
            return int(min(im.size))
    except OSError as err:
        raise UserError(f"image file {paths[0]} could not be opened ({err}); replace it or "
                        "remove it from the folder.") from err


def _fit(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` then centre-crop a square (a no-op when it fits)."""
    if img.shape[-2:] == (size, size):
        return img
    from torchvision.transforms.v2 import functional as TF

    img = TF.resize(img, size, antialias=True)
    return TF.center_crop(img, [size, size])


def _decode_one(path: str, data: torch.Tensor) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(data, mode=ImageReadMode.RGB)
    except RuntimeError:
        pass
    from PIL import Image  # formats libjpeg/libpng do not cover (bmp, gif, tiff, ...)

    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as im:
            arr = np.asarray(im.convert("RGB"))
    except OSError as err:
        raise UserError(f"image file {path} could not be decoded ({err}); replace it or remove it "
                        "from the folder.") from err
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def decode_image_files(paths: Sequence[str], size: int, chunk: int = 1024) -> torch.Tensor:
    """Decode image files into one (N, 3, size, size) uint8 tensor (RGB, resized if needed)."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for start in range(0, len(paths), chunk):
        names = paths[start:start + chunk]
        try:
            blobs = [read_file(p) for p in names]
        except RuntimeError as err:
            raise UserError(f"an image file under {Path(names[0]).parent} could not be read "
                            f"({err}); check the folder's permissions.") from err
        jpeg = all(p.lower().endswith(_JPEG) for p in names)
        images: list[torch.Tensor] | None = None
        if jpeg:
            try:  # one call for the whole chunk: much faster than one per file
                images = decode_jpeg(blobs, mode=ImageReadMode.RGB)
            except RuntimeError:
                images = None  # find the bad file one by one below
        if images is None:
            images = [_decode_one(p, b) for p, b in zip(names, blobs, strict=True)]
        for i, img in enumerate(images):
            out[start + i] = _fit(img, size)
    return out
