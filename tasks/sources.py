"""The built-in datasets: their facts and where their files are.

Normalisation constants and the authors' latent dimension / batch size follow LOSSES.md (the POD
and PEDCC-Loss authors' code); the others are the usual training-set statistics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from podbench.tasks.datasets import (
    ArraySplit,
    DatasetInfo,
    DatasetSource,
    Located,
    RawData,
    register_dataset,
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


def _arrays(x: np.ndarray, y: np.ndarray) -> ArraySplit:
    return ArraySplit(torch.from_numpy(np.ascontiguousarray(x)),
                      torch.from_numpy(np.asarray(y, dtype=np.int64)))


# ---------------------------------------------------------------- scikit-learn digits

DIGITS_TEST_SIZE = 360  # a fixed stratified 20% test split (random_state 0): digits has none


@register_dataset(DatasetInfo(
    name="digits", num_classes=10, channels=1, image_size=8,
    mean=(0.3054,), std=(0.3760,),  # of the training split, pixels 0..16 scaled to 0..1
    train_size=1797 - DIGITS_TEST_SIZE, test_size=DIGITS_TEST_SIZE,
    how_to_get="it ships with scikit-learn (pip install scikit-learn)",
    expected="scikit-learn's bundled digits", needs_files=False, crop_padding=1,
    description="scikit-learn's 1,797 8x8 handwritten digits (UCI); a stratified 80/20 split",
))
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
        train, test = train_test_split(np.arange(len(labels)), test_size=DIGITS_TEST_SIZE,
                                       stratify=labels, random_state=0)
        train, test = np.sort(train), np.sort(test)
        return RawData(_arrays(images[train], labels[train]), _arrays(images[test], labels[test]),
                       tuple(str(i) for i in range(10)))


# ---------------------------------------------------------------- synthetic (tests, smoke runs)

SYNTHETIC = {"classes": 4, "channels": 3, "size": 16, "train": 512, "test": 256, "seed": 0}


@register_dataset(DatasetInfo(
    name="synthetic", num_classes=SYNTHETIC["classes"], channels=SYNTHETIC["channels"],
    image_size=SYNTHETIC["size"], mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
    train_size=SYNTHETIC["train"], test_size=SYNTHETIC["test"],
    how_to_get="it is generated in memory", expected="nothing (generated)", needs_files=False,
    crop_padding=1, hflip=True,
    description="seeded noisy class prototypes, 4 classes of 16x16 RGB, learnable in seconds",
))
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
