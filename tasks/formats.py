"""Readers of the standard on-disk dataset formats; every malformed file is a UserError naming it."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import tarfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from podbench.errors import UserError

__all__ = [
    "IMAGE_EXTENSIONS",
    "decode_image_blobs",
    "decode_image_files",
    "is_archive",
    "read_image_archive",
    "folder_image_size",
    "read_cifar_pickle",
    "read_idx",
    "read_svhn_mat",
    "scan_class_folders",
]

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
)
_JPEG = (".jpg", ".jpeg")


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a numpy array; only unsigned-byte data is accepted."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as err:
        raise UserError(
            f"IDX file {path} could not be read ({err}); replace it with an intact "
            "copy (gzipped or not)."
        ) from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(
            f"IDX file {path} does not start with an unsigned-byte IDX header; "
            "replace it with the original file."
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims)) + header
    if len(data) != expected:
        raise UserError(
            f"IDX file {path} holds {len(data)} bytes but its header {dims} needs "
            f"{expected}; the file is truncated or corrupt, replace it."
        )
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
        ("_codecs", "encode"),  # bytes inside protocol-2 pickles written by Python 3
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
        raise UserError(
            f"CIFAR batch file {path} could not be read ({err}); replace it with the "
            "file from the original python-version archive."
        ) from err
    if not isinstance(raw, dict):
        raise UserError(
            f"CIFAR batch file {path} does not hold a dict; replace it with the file "
            "from the original python-version archive."
        )
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in raw.items()}


# ---------------------------------------------------------------- SVHN .mat


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``{train,test}_32x32.mat`` -> (N, 3, 32, 32) uint8 images and labels 0..9 (10 means 0)."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
        x, y = mat["X"], mat["y"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"SVHN file {path} could not be read as a MATLAB file with X and y "
            f"({err}); replace it with the original cropped-digits file."
        ) from err
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.reshape(-1).shape[0] != x.shape[3]:
        raise UserError(
            f"SVHN file {path} has X of shape {x.shape} and {y.size} labels; "
            "expected X (32, 32, 3, N) and N labels, replace it."
        )
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
        classes = sorted(
            e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")
        )
    if not classes:
        raise UserError(
            f"image folder {split_dir} has no class sub-folders; expected "
            f"{split_dir}/<class>/<image> files."
        )
    paths: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        folder = split_dir / cls / subdir if subdir else split_dir / cls
        if not folder.is_dir():
            raise UserError(
                f"class folder {folder} is missing; every split needs one folder per "
                f"class ({len(classes)} classes)."
            )
        names = sorted(e.name for e in os.scandir(folder) if e.is_file() and _is_image(e.name))
        paths.extend(str(folder / n) for n in names)
        labels.extend([label] * len(names))
    if not paths:
        raise UserError(
            f"image folder {split_dir} holds no image files ({', '.join(IMAGE_EXTENSIONS)}"
            "); put the images in its class sub-folders."
        )
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
        raise UserError(
            f"image file {paths[0]} could not be opened ({err}); replace it or "
            "remove it from the folder."
        ) from err


def _fit(img: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` then centre-crop a square (a no-op when it fits)."""
    if img.shape[-2:] == (size, size):
        return img
    from torchvision.transforms.v2 import functional as TF

    img = TF.resize(img, size, antialias=True)
    return TF.center_crop(img, [size, size])


@contextmanager
def _quiet_torchvision_io() -> Iterator[None]:
    """torchvision 0.29 warns on every decode that TorchCodec will take over; it still works."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message="The image decoding and encoding capabilities",
            category=DeprecationWarning,
        )
        yield


def _tv_io() -> Any:
    """torchvision.io when it can decode images (libjpeg/libpng built in), else None."""
    try:
        import torchvision.io as tv_io

        return tv_io if hasattr(tv_io, "decode_jpeg") and hasattr(tv_io, "decode_image") else None
    except ImportError:
        return None


def read_bytes(path: str) -> bytes:
    """A file's bytes; an unreadable file is a UserError naming it."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as err:
        raise UserError(
            f"image file {path} could not be read ({err}); check it exists and is readable."
        ) from err


def _decode_one(path: str, data: bytes) -> torch.Tensor:
    """One encoded image -> (3, H, W) uint8 RGB; libjpeg/libpng first, Pillow for the rest."""
    tv_io = _tv_io()
    if tv_io is not None:
        try:
            with _quiet_torchvision_io():
                return tv_io.decode_image(
                    torch.frombuffer(bytearray(data), dtype=torch.uint8),
                    mode=tv_io.ImageReadMode.RGB,
                )
        except RuntimeError:
            pass
    from PIL import Image  # formats libjpeg/libpng do not cover (bmp, gif, tiff, ...)

    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as err:
        raise UserError(
            f"image file {path} could not be decoded ({err}); replace it or remove it "
            "from the folder."
        ) from err
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def decode_image_blobs(names: Sequence[str], blobs: Sequence[bytes], size: int) -> torch.Tensor:
    """Encoded images -> one (N, 3, size, size) uint8 tensor (RGB, resized if needed).

    ``names`` only serve error messages.
    """
    tv_io = _tv_io()
    out = torch.empty((len(blobs), 3, size, size), dtype=torch.uint8)
    chunk = 1024
    for start in range(0, len(blobs), chunk):
        part_names, part = names[start : start + chunk], blobs[start : start + chunk]
        images: list[torch.Tensor] | None = None
        if tv_io is not None and all(n.lower().endswith(_JPEG) for n in part_names):
            try:  # one call for the whole chunk: much faster than one per file
                with _quiet_torchvision_io():
                    images = tv_io.decode_jpeg(
                        [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in part],
                        mode=tv_io.ImageReadMode.RGB,
                    )
            except RuntimeError:
                images = None  # find the bad file one by one below
        if images is None:
            images = [_decode_one(n, b) for n, b in zip(part_names, part, strict=True)]
        for i, img in enumerate(images):
            out[start + i] = _fit(img, size)
    return out


def decode_image_files(paths: Sequence[str], size: int, chunk: int = 1024) -> torch.Tensor:
    """Decode image files into one (N, 3, size, size) uint8 tensor (RGB, resized if needed)."""
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for start in range(0, len(paths), chunk):  # bounded memory: a chunk of encoded files at once
        names = paths[start : start + chunk]
        out[start : start + len(names)] = decode_image_blobs(
            names, [read_bytes(p) for p in names], size
        )
    return out


# ---------------------------------------------------------------- image-folder archives

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_SPLIT_MEMBER = re.compile(r"(?:^|/)(train|test|val)/([^/]+)/([^/]+)$")


def is_archive(path: Path) -> bool:
    """Whether ``path`` is a tar archive podbench reads image folders from."""
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def read_image_archive(
    archive: Path, size: int | None
) -> tuple[dict[str, tuple[torch.Tensor, np.ndarray]], tuple[str, ...]]:
    """A tar of a ``train/<class>/``, ``test/<class>/`` (or ``val/``) tree, decoded in memory.

    Returns ``{"train": (images, labels), "test": (images, labels)}`` and the class names; files
    are ordered by class, then name, as when read from the extracted folders.
    """
    found: dict[str, list[tuple[str, str, bytes]]] = {"train": [], "test": [], "val": []}
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                match = _SPLIT_MEMBER.search(member.name) if member.isfile() else None
                if match is None or not _is_image(match.group(3)):
                    continue
                handle = tar.extractfile(member)
                if handle is not None:
                    found[match.group(1)].append((match.group(2), match.group(3), handle.read()))
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UserError(
            f"archive {archive} could not be read ({err}); replace it with an intact "
            "copy or extract it and point the data root at the folder."
        ) from err
    test = found["test"] or found["val"]
    if not found["train"] or not test:
        raise UserError(
            f"archive {archive} holds no train/<class>/ and test/<class>/ images; "
            "expected an image-folder tree inside it."
        )
    classes = tuple(sorted({cls for cls, _, _ in found["train"]}))
    index = {c: i for i, c in enumerate(classes)}
    out = {}
    for split, items in (("train", found["train"]), ("test", test)):
        unknown = sorted({cls for cls, _, _ in items} - set(index))
        if unknown:
            raise UserError(
                f"archive {archive} has {split} classes {', '.join(unknown)} that "
                "train/ lacks; every class needs training images."
            )
        items.sort(key=lambda e: (index[e[0]], e[1]))
        names = [f"{archive}:{split}/{cls}/{name}" for cls, name, _ in items]
        blobs = [b for _, _, b in items]
        if size is None:
            size = int(min(_decode_one(names[0], blobs[0]).shape[-2:]))
        labels = np.asarray([index[cls] for cls, _, _ in items], dtype=np.int64)
        out[split] = (decode_image_blobs(names, blobs, size), labels)
    return out, classes
