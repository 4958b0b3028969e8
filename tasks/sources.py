"""The built-in datasets: their facts and where their files are.

Normalisation constants and the authors' latent dimension / batch size follow LOSSES.md (the POD
and PEDCC-Loss authors' code); the others are the usual training-set statistics.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from podbench.errors import UserError
from podbench.tasks.datasets import (
    ArraySplit,
    DatasetInfo,
    DatasetSource,
    FileSplit,
    Located,
    RawData,
    register_dataset,
)
from podbench.tasks.formats import (
    is_archive,
    read_cifar_pickle,
    read_idx,
    read_image_archive,
    read_svhn_mat,
    scan_class_folders,
)

__all__ = ["DIGITS_TEST_SIZE", "SYNTHETIC"]

# the "others" constants of the POD authors (CIFAR-100, TinyImageNet, FaceScrub)
POD_MEAN = (0.507, 0.487, 0.441)
POD_STD = (0.267, 0.256, 0.276)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
USER_DATA = "~/data"
SYSTEM_DATA = "/usr/share/datasets"


def _defaults(*names: str) -> tuple[str, ...]:
    return tuple(f"{base}/{n}" for n in names for base in (USER_DATA, SYSTEM_DATA))


def _arrays(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> ArraySplit:
    images = (
        x.contiguous() if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    )
    labels = torch.as_tensor(np.asarray(y, dtype=np.int64))
    return ArraySplit(images, labels)


# ---------------------------------------------------------------- scikit-learn digits

DIGITS_TEST_SIZE = 360  # a fixed stratified 20% test split (random_state 0): digits has none


@register_dataset(
    "digits",
    num_classes=10,
    channels=1,
    image_size=8,
    mean=(0.3054,),
    std=(0.3760,),  # of the training split, pixels 0..16 scaled to 0..1
    train_size=1797 - DIGITS_TEST_SIZE,
    test_size=DIGITS_TEST_SIZE,
    how_to_get="it ships with scikit-learn (pip install scikit-learn)",
    expected="scikit-learn's bundled digits",
    needs_files=False,
    crop_padding=1,
    description="scikit-learn's 1,797 8x8 handwritten digits (UCI); a stratified 80/20 split",
)
class Digits(DatasetSource):
    """scikit-learn's ``load_digits``: no files needed."""

    def locate(self, root: Path) -> Located | None:
        return Located(Path("<scikit-learn>"), "sklearn")

    def read(self, located: Located, *, image_size: int | None) -> RawData:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        # 0..16 grey levels -> 0..255 so every dataset is uint8 in the same range
        images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
        labels = digits.target.astype(np.int64)
        train, test = train_test_split(
            np.arange(len(labels)), test_size=DIGITS_TEST_SIZE, stratify=labels, random_state=0
        )
        train, test = np.sort(train), np.sort(test)
        return RawData(
            _arrays(images[train], labels[train]),
            _arrays(images[test], labels[test]),
            tuple(str(i) for i in range(10)),
        )


# ---------------------------------------------------------------- synthetic (tests, smoke runs)

SYNTHETIC = {"classes": 4, "channels": 3, "size": 16, "train": 512, "test": 256, "seed": 0}


@register_dataset(
    "synthetic",
    num_classes=SYNTHETIC["classes"],
    channels=SYNTHETIC["channels"],
    image_size=SYNTHETIC["size"],
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25),
    train_size=SYNTHETIC["train"],
    test_size=SYNTHETIC["test"],
    how_to_get="it is generated in memory",
    expected="nothing (generated)",
    needs_files=False,
    crop_padding=1,
    hflip=True,
    description="seeded noisy class prototypes, 4 classes of 16x16 RGB, learnable in seconds",
)
class Synthetic(DatasetSource):
    """Noisy copies of one smooth random prototype per class; the same bytes on every machine."""

    def locate(self, root: Path) -> Located | None:
        return Located(Path("<generated>"), "synthetic")

    def read(self, located: Located, *, image_size: int | None) -> RawData:
        k, c, s = SYNTHETIC["classes"], SYNTHETIC["channels"], SYNTHETIC["size"]
        rng = np.random.default_rng(SYNTHETIC["seed"])
        # low-frequency prototypes survive the crop/flip augmentation
        coarse = rng.uniform(40, 215, size=(k, c, 4, 4))
        protos = np.repeat(np.repeat(coarse, s // 4, axis=2), s // 4, axis=3)

        def sample(n: int) -> ArraySplit:
            labels = np.arange(n) % k
            noise = rng.normal(0.0, 30.0, size=(n, c, s, s))
            return _arrays(np.clip(protos[labels] + noise, 0, 255).astype(np.uint8), labels)

        train = sample(SYNTHETIC["train"])
        test = sample(SYNTHETIC["test"])
        return RawData(train, test, tuple(f"class{i}" for i in range(k)))


# ---------------------------------------------------------------- CIFAR-10 / CIFAR-100


def _split_folder(root: Path, *names: str) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def _count_dirs(folder: Path) -> int:
    return sum(1 for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


class _Cifar(DatasetSource):
    """The python-pickle batches or a ``train/<class>/``, ``test/<class>/`` image-folder tree."""

    pickle_dir: ClassVar[str]
    pickle_files: ClassVar[tuple[str, ...]]  # train files first, then the test file
    meta_file: ClassVar[str]
    names_key: ClassVar[str]
    label_key: ClassVar[str]
    cache = False

    def locate(self, root: Path) -> Located | None:
        if root.is_file():
            return _archive(root)
        for folder in (root / self.pickle_dir, root):
            present = [f for f in self.pickle_files if (folder / f).is_file()]
            if len(present) == len(self.pickle_files):
                files = [
                    folder / f
                    for f in (*self.pickle_files, self.meta_file)
                    if (folder / f).is_file()
                ]
                return Located(folder, "pickle", tuple(files))
            if present:  # half an extraction is a mistake to report, not a miss
                missing = sorted(set(self.pickle_files) - set(present))
                raise UserError(
                    f"{folder} holds only part of the {self.info.name} python "
                    f"batches (missing {', '.join(missing)}); extract the whole "
                    "archive there again."
                )
        train = _split_folder(root, "train")
        if (
            train
            and _split_folder(root, "test", "val")
            and _count_dirs(train) == self.info.num_classes
        ):  # another dataset's folder otherwise
            return Located(root, "folder")
        return None

    def read(self, located: Located, *, image_size: int | None) -> RawData:
        if located.layout in ("folder", "archive"):
            return _read_folder_pair(located.path, self.info, image_size)
        parts = [read_cifar_pickle(located.path / f) for f in self.pickle_files]
        xs, ys = [], []
        for name, part in zip(self.pickle_files, parts, strict=True):
            data, labels = part.get("data"), part.get(self.label_key)
            if (
                not isinstance(data, np.ndarray)
                or data.ndim != 2
                or data.shape[1] != 3072
                or not isinstance(labels, (list, np.ndarray))
                or len(labels) != data.shape[0]
            ):
                raise UserError(
                    f"CIFAR batch file {located.path / name} lacks 'data' (N, 3072) "
                    f"and '{self.label_key}' (N); replace it with the original file."
                )
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(np.asarray(labels, dtype=np.int64))
        n_train = len(self.pickle_files) - 1
        classes = tuple(str(i) for i in range(self.info.num_classes or 0))
        meta = located.path / self.meta_file
        if meta.is_file():
            names = read_cifar_pickle(meta).get(self.names_key)
            if isinstance(names, (list, tuple)) and len(names) == len(classes):
                classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
        train = _arrays(np.concatenate(xs[:n_train]), np.concatenate(ys[:n_train]))
        return RawData(train, _arrays(xs[-1], ys[-1]), classes)


def _archive(root: Path) -> Located | None:
    """A tar of an image-folder tree, decoded in memory once and cached."""
    return Located(root, "archive", (root,), cache=True) if is_archive(root) else None


def _read_folder_pair(root: Path, info: DatasetInfo, image_size: int | None) -> RawData:
    """``root/train/<class>/`` and ``root/test/<class>/`` (or ``val/``) as file lists, or the
    decoded images of such a tree in a tar archive."""
    if is_archive(root):
        splits, classes = read_image_archive(root, image_size or info.image_size)
        if info.num_classes is not None and len(classes) != info.num_classes:
            raise UserError(
                f"archive {root} has {len(classes)} classes in train/ but "
                f"{info.name} has {info.num_classes}; use the {info.name} archive."
            )
        return RawData(_arrays(*splits["train"]), _arrays(*splits["test"]), classes)
    train_dir = _split_folder(root, "train")
    test_dir = _split_folder(root, "test", "val")
    assert train_dir is not None and test_dir is not None  # checked by locate
    paths, labels, classes = scan_class_folders(train_dir)
    if info.num_classes is not None and len(classes) != info.num_classes:
        raise UserError(
            f"image folder {train_dir} has {len(classes)} class folders but "
            f"{info.name} has {info.num_classes}; point the data root at the "
            f"{info.name} folder."
        )
    test_paths, test_labels, _ = scan_class_folders(test_dir, classes)
    return RawData(
        FileSplit(paths, torch.from_numpy(labels)),
        FileSplit(test_paths, torch.from_numpy(test_labels)),
        classes,
    )


_CIFAR_GET = (
    "download the python version from https://www.cs.toronto.edu/~kriz/{archive} and extract it"
)


@register_dataset(
    "cifar10",
    aliases=("cifar-10",),
    num_classes=10,
    channels=3,
    image_size=32,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2023, 0.1994, 0.2010),  # the POD authors' constants
    train_size=50000,
    test_size=10000,
    latent_dim=256,
    batch_size=200,
    default_roots=_defaults("cifar10", "cifar-10"),
    crop_padding=4,
    hflip=True,
    how_to_get=_CIFAR_GET.format(archive="cifar-10-python.tar.gz"),
    expected="cifar-10-batches-py/ (data_batch_1..5, test_batch), or train/<class>/ and "
    "test/<class>/ image folders (or a .tar/.tar.gz of them)",
    description="CIFAR-10 (Krizhevsky 2009), 32x32 RGB, 10 classes",
)
class Cifar10(_Cifar):
    pickle_dir = "cifar-10-batches-py"
    pickle_files = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
    meta_file = "batches.meta"
    names_key = "label_names"
    label_key = "labels"


@register_dataset(
    "cifar100",
    aliases=("cifar-100",),
    num_classes=100,
    channels=3,
    image_size=32,
    mean=POD_MEAN,
    std=POD_STD,
    train_size=50000,
    test_size=10000,
    latent_dim=512,
    batch_size=128,
    default_roots=_defaults("cifar100", "cifar-100"),
    crop_padding=4,
    hflip=True,
    how_to_get=_CIFAR_GET.format(archive="cifar-100-python.tar.gz"),
    expected="cifar-100-python/ (train, test, meta), or train/<class>/ and test/<class>/ "
    "image folders (or a .tar/.tar.gz of them)",
    description="CIFAR-100 (Krizhevsky 2009), 32x32 RGB, 100 fine classes",
)
class Cifar100(_Cifar):
    pickle_dir = "cifar-100-python"
    pickle_files = ("train", "test")
    meta_file = "meta"
    names_key = "fine_label_names"
    label_key = "fine_labels"


# ---------------------------------------------------------------- MNIST / Fashion-MNIST (IDX)

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class _Idx(DatasetSource):
    """The four IDX files, gzipped or not, in the root, ``raw/`` or torchvision's ``<Name>/raw/``."""

    torchvision_dir: ClassVar[str]
    class_names: ClassVar[tuple[str, ...]]

    @staticmethod
    def _find(folder: Path, stem: str) -> Path | None:
        for name in (
            stem,
            stem + ".gz",
            stem.replace("-idx", ".idx"),
            stem.replace("-idx", ".idx") + ".gz",
        ):
            if (folder / name).is_file():
                return folder / name
        return None

    def locate(self, root: Path) -> Located | None:
        for folder in (root, root / "raw", root / self.torchvision_dir / "raw"):
            found = [self._find(folder, stem) for stem in _IDX_FILES]
            if all(found):
                return Located(folder, "idx", tuple(f for f in found if f is not None))
            if any(found):
                missing = [s for s, f in zip(_IDX_FILES, found, strict=True) if f is None]
                raise UserError(
                    f"{folder} holds only some of the {self.info.name} IDX files "
                    f"(missing {', '.join(missing)}, gzipped or not); "
                    f"{self.info.how_to_get}."
                )
        return None

    def read(self, located: Located, *, image_size: int | None) -> RawData:
        arrays = [read_idx(f) for f in located.files]
        splits = []
        for (img_file, lab_file), images, labels in zip(
            ((located.files[0], located.files[1]), (located.files[2], located.files[3])),
            arrays[0::2],
            arrays[1::2],
            strict=True,
        ):
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise UserError(
                    f"IDX files {img_file} and {lab_file} do not hold N images and N "
                    "labels; replace them with the original files."
                )
            if labels.max() >= len(self.class_names):
                raise UserError(
                    f"IDX label file {lab_file} holds label {labels.max()} but "
                    f"{self.info.name} has {len(self.class_names)} classes; replace it."
                )
            splits.append(_arrays(images[:, None], labels))
        return RawData(splits[0], splits[1], self.class_names)


@register_dataset(
    "mnist",
    num_classes=10,
    channels=1,
    image_size=28,
    mean=(0.1307,),
    std=(0.3081,),
    train_size=60000,
    test_size=10000,
    default_roots=_defaults("mnist"),
    crop_padding=2,
    how_to_get="download the four IDX files from http://yann.lecun.com/exdb/mnist/ (or a mirror) "
    "into that folder",
    expected="train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
    "t10k-labels-idx1-ubyte (gzipped or not)",
    description="MNIST handwritten digits (LeCun et al. 1998), 28x28 grayscale",
)
class Mnist(_Idx):
    torchvision_dir = "MNIST"
    class_names = tuple(str(i) for i in range(10))


@register_dataset(
    "fashion-mnist",
    aliases=("fashionmnist",),
    num_classes=10,
    channels=1,
    image_size=28,
    mean=(0.2860,),
    std=(0.3530,),
    train_size=60000,
    test_size=10000,
    default_roots=("/usr/share/datasets/fashion-mnist", *_defaults("fashion-mnist")),
    crop_padding=2,
    hflip=True,
    how_to_get="on Debian run `apt-get install dataset-fashion-mnist` (files land in "
    "/usr/share/datasets/fashion-mnist/) or download the four IDX files from "
    "https://github.com/zalandoresearch/fashion-mnist",
    expected="train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
    "t10k-labels-idx1-ubyte (gzipped or not)",
    description="Fashion-MNIST (Xiao et al. 2017), 28x28 grayscale clothing, 10 classes",
)
class FashionMnist(_Idx):
    torchvision_dir = "FashionMNIST"
    class_names = (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )


# ---------------------------------------------------------------- SVHN (.mat)


@register_dataset(
    "svhn",
    num_classes=10,
    channels=3,
    image_size=32,
    mean=(0.4377, 0.4438, 0.4728),
    std=(0.1980, 0.2010, 0.1970),
    train_size=73257,
    test_size=26032,
    default_roots=_defaults("svhn"),
    crop_padding=4,
    how_to_get="download train_32x32.mat and test_32x32.mat from "
    "http://ufldl.stanford.edu/housenumbers/ into that folder",
    expected="train_32x32.mat and test_32x32.mat (cropped digits, format 2)",
    description="SVHN cropped house-number digits (Netzer et al. 2011), 32x32 RGB",
)
class Svhn(DatasetSource):
    cache = True  # loadmat of the 180 MB training file takes seconds

    def locate(self, root: Path) -> Located | None:
        files = (root / "train_32x32.mat", root / "test_32x32.mat")
        if all(f.is_file() for f in files):
            return Located(root, "mat", files)
        if any(f.is_file() for f in files):
            missing = next(f for f in files if not f.is_file())
            raise UserError(
                f"{missing} is missing next to the other SVHN file; {self.info.how_to_get}."
            )
        return None

    def read(self, located: Located, *, image_size: int | None) -> RawData:
        train = read_svhn_mat(located.files[0])
        test = read_svhn_mat(located.files[1])
        return RawData(_arrays(*train), _arrays(*test), tuple(str(i) for i in range(10)))


# ---------------------------------------------------------------- TinyImageNet


@register_dataset(
    "tinyimagenet",
    aliases=("tiny-imagenet", "tiny-imagenet-200"),
    num_classes=200,
    channels=3,
    image_size=64,
    mean=POD_MEAN,
    std=POD_STD,
    train_size=100000,
    test_size=10000,
    latent_dim=512,
    batch_size=128,
    default_roots=_defaults("tinyimagenet", "tiny-imagenet-200"),
    crop_padding=4,
    hflip=True,
    how_to_get="download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it",
    expected="tiny-imagenet-200/ with wnids.txt, train/<wnid>/images/ and val/images/ plus "
    "val/val_annotations.txt (the labelled val split is the test split)",
    description="TinyImageNet, 64x64 RGB, 200 classes; test = the labelled val split",
)
class TinyImageNet(DatasetSource):
    def locate(self, root: Path) -> Located | None:
        for folder in (root / "tiny-imagenet-200", root):
            if (folder / "wnids.txt").is_file() and (folder / "train").is_dir():
                annotations = folder / "val" / "val_annotations.txt"
                if not annotations.is_file():
                    raise UserError(
                        f"{annotations} is missing; the validation labels come from "
                        "it, unzip tiny-imagenet-200.zip there again."
                    )
                return Located(folder, "tiny-imagenet-200")
        return None

    def read(self, located: Located, *, image_size: int | None) -> RawData:
        root = located.path
        wnids = sorted({w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip()})
        paths, labels, classes = scan_class_folders(root / "train", wnids, subdir="images")
        index = {w: i for i, w in enumerate(classes)}
        val_paths, val_labels = [], []
        annotations = root / "val" / "val_annotations.txt"
        for n, line in enumerate(annotations.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in index:
                raise UserError(
                    f"{annotations} line {n} does not name an image and a wnid from "
                    "wnids.txt; restore the original file."
                )
            image = root / "val" / "images" / fields[0]
            if not image.is_file():
                raise UserError(
                    f"{image} is listed in {annotations} but missing; unzip "
                    "tiny-imagenet-200.zip again."
                )
            val_paths.append(str(image))
            val_labels.append(index[fields[1]])
        return RawData(
            FileSplit(paths, torch.from_numpy(labels)),
            FileSplit(val_paths, torch.tensor(val_labels, dtype=torch.long)),
            classes,
        )


# ---------------------------------------------------------------- any image folder tree


@register_dataset(
    "imagefolder",
    num_classes=None,
    channels=3,
    image_size=None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    train_size=None,
    test_size=None,
    crop_padding=4,
    hflip=True,
    how_to_get="arrange the images as ROOT/train/<class>/<image> and ROOT/test/<class>/<image> "
    "(FaceScrub, ImageNet-100, ...)",
    expected="train/<class>/ and test/<class>/ (or val/<class>/) folders of images, or a "
    ".tar/.tar.gz of them",
    description="any train/<class>/, test/<class>/ tree (e.g. FaceScrub, ImageNet-100); "
    "ImageNet normalisation",
)
class ImageFolder(DatasetSource):
    def locate(self, root: Path) -> Located | None:
        if root.is_file():
            return _archive(root)
        if _split_folder(root, "train") and _split_folder(root, "test", "val"):
            return Located(root, "folder")
        return None

    def read(self, located: Located, *, image_size: int | None) -> RawData:
        return _read_folder_pair(located.path, self.info, image_size)
