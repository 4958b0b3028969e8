"""Real data: Fashion-MNIST (Debian), CIFAR-10 JPEG (shared/data), scikit-learn digits.

Every fact is checked against a computation that does not use podbench's readers: numpy on the
raw bytes, Pillow for the JPEGs, scikit-learn for digits.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from podbench.errors import UserError
from podbench.tasks import dataset_info, load_task
from podbench.tasks.cache import cache_dir

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def _raw_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        return np.frombuffer(fh.read()[header:], dtype=np.uint8)


def _all_labels(task, split: str) -> np.ndarray:
    return torch.cat([y for _, y in task.eval_batches(split, 4096)]).numpy()


def _denormalise(x: torch.Tensor, mean, std) -> np.ndarray:
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x * s + m).mul(255).numpy()


# ---------------------------------------------------------------- Fashion-MNIST


@pytest.fixture(scope="module")
def fashion():
    if not (FASHION_ROOT / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(
            f"Fashion-MNIST is missing from {FASHION_ROOT}: apt-get install "
            "dataset-fashion-mnist (install.sh does)"
        )
    return load_task("fashion-mnist", augment=False)  # default root: Debian's folder


def test_fashion_mnist_sizes_and_balance(fashion) -> None:
    assert fashion.num_samples("train") == 60000 and fashion.num_samples("test") == 10000
    assert fashion.info.train_size == 60000 and fashion.info.test_size == 10000
    assert np.bincount(_all_labels(fashion, "train")).tolist() == [6000] * 10
    assert np.bincount(_all_labels(fashion, "test")).tolist() == [1000] * 10
    assert fashion.classes[0] == "T-shirt/top" and fashion.classes[9] == "Ankle boot"


def test_fashion_mnist_pixels_and_labels_equal_the_raw_idx(fashion) -> None:
    images = _raw_idx(FASHION_ROOT / "train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = _raw_idx(FASHION_ROOT / "train-labels-idx1-ubyte.gz", 8)
    x, y = next(fashion.eval_batches("train", 256))
    info = fashion.info
    np.testing.assert_allclose(_denormalise(x, info.mean, info.std)[:, 0], images[:256], atol=1e-3)
    assert y.tolist() == labels[:256].tolist()
    assert x.dtype == torch.float32 and y.dtype == torch.int64


def test_fashion_mnist_normalisation_constants_match_the_data() -> None:
    pixels = _raw_idx(FASHION_ROOT / "train-images-idx3-ubyte.gz", 16) / 255.0
    info = dataset_info("fashion-mnist")
    assert abs(pixels.mean() - info.mean[0]) < 5e-4
    assert abs(pixels.std() - info.std[0]) < 5e-4


def test_fashion_mnist_uncompressed_and_torchvision_layout(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        with gzip.open(FASHION_ROOT / f"{name}.gz") as src, open(raw / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    task = load_task("fashion-mnist", tmp_path, augment=False, limit=50)
    reference = load_task("fashion-mnist", augment=False, limit=50)
    for split in ("train", "test"):
        (a, ya), (b, yb) = (
            next(task.eval_batches(split, 50)),
            next(reference.eval_batches(split, 50)),
        )
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_fashion_mnist_truncated_file_is_named(tmp_path: Path) -> None:
    for name in os.listdir(FASHION_ROOT):
        shutil.copy(FASHION_ROOT / name, tmp_path / name)
    with gzip.open(FASHION_ROOT / "t10k-labels-idx1-ubyte.gz") as fh:
        data = fh.read()
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(data[:-10])
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte\.gz.*truncated"):
        load_task("fashion-mnist", tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="missing t10k-labels-idx1-ubyte"):
        load_task("fashion-mnist", tmp_path)


# ---------------------------------------------------------------- digits


def test_digits_counts_match_scikit_learn() -> None:
    digits = load_digits()
    per_class = np.bincount(digits.target, minlength=10)  # independent: straight from sklearn
    task = load_task("digits", augment=False)
    train, test = _all_labels(task, "train"), _all_labels(task, "test")
    assert len(train) + len(test) == 1797 == per_class.sum()
    assert len(test) == dataset_info("digits").test_size == 360
    np.testing.assert_array_equal(
        np.bincount(train, minlength=10) + np.bincount(test, minlength=10), per_class
    )
    # stratified: each class's test share is within one sample of 360/1797 of it
    assert np.all(np.abs(np.bincount(test, minlength=10) - per_class * 360 / 1797) <= 1)


def test_digits_pixels_are_the_sklearn_images() -> None:
    digits = load_digits()
    task = load_task("digits", augment=False)
    x, y = torch.cat([b[0] for b in task.eval_batches("test", 100)]), _all_labels(task, "test")
    restored = _denormalise(x, task.info.mean, task.info.std)[:, 0] * 16 / 255  # back to 0..16
    # find each test image in sklearn's set: it must be there with the same label
    flat = digits.images.reshape(len(digits.images), -1)
    for img, label in zip(restored[:40], y[:40], strict=True):
        match = np.flatnonzero(np.abs(flat - img.reshape(-1)).max(axis=1) < 0.05)
        assert len(match) >= 1 and label in digits.target[match]


# ---------------------------------------------------------------- CIFAR-10 JPEG (image folder)


def test_cifar10_jpeg_full_dataset(cifar_archive: Path) -> None:
    task = load_task("cifar10", cifar_archive, augment=False)  # read from the tarball in place
    assert task.classes == CIFAR10_CLASSES
    assert task.num_samples("train") == 50000 and task.num_samples("test") == 10000
    assert np.bincount(_all_labels(task, "train")).tolist() == [5000] * 10
    assert np.bincount(_all_labels(task, "test")).tolist() == [1000] * 10
    # decoded pixels equal Pillow's decoding of the same members (sorted by class, then name)
    x, y = next(task.eval_batches("test", 5))
    with tarfile.open(cifar_archive) as tar:
        names = sorted(n for n in tar.getnames() if n.startswith("test/airplane/"))[:5]
        pil = (
            np.stack(
                [
                    np.asarray(Image.open(io.BytesIO(tar.extractfile(n).read())).convert("RGB"))
                    for n in names
                ]
            )
            .transpose(0, 3, 1, 2)
            .astype(np.float64)
        )
    np.testing.assert_allclose(_denormalise(x, task.info.mean, task.info.std), pil, atol=2.01)
    assert y.tolist() == [0] * 5
    # the POD authors' CIFAR-10 means hold for this JPEG copy within the compression's shift
    sums = torch.zeros(3, dtype=torch.float64)
    for xb, _ in task.eval_batches("train", 10000):
        sums += torch.from_numpy(_denormalise(xb, task.info.mean, task.info.std)).sum((0, 2, 3))
    means = (sums / (50000 * 32 * 32 * 255)).numpy()
    np.testing.assert_allclose(means, task.info.mean, atol=0.01)


def test_archive_and_extracted_folder_agree(cifar_tiny: Path, tmp_path: Path) -> None:
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(cifar_tiny / "train", arcname="data/train")
        tar.add(cifar_tiny / "test", arcname="data/test")
    from_tar = load_task("cifar10", archive, augment=False)
    from_dir = load_task("cifar10", cifar_tiny, augment=False)
    for split in ("train", "test"):
        (a, ya), (b, yb) = (
            next(from_tar.eval_batches(split, 500)),
            next(from_dir.eval_batches(split, 500)),
        )
        assert torch.equal(a, b) and torch.equal(ya, yb)
    with pytest.raises(UserError, match="archive .* has 10 classes in train/ but cifar100 has 100"):
        load_task("cifar100", archive)


def test_cifar10_second_load_comes_from_the_cache(cifar_tiny: Path) -> None:
    first = load_task("cifar10", cifar_tiny, augment=False)
    entries = {p.name: p.stat().st_mtime_ns for p in cache_dir().glob("cifar10-*.pt")}
    assert entries, "decoding should have written a cache entry"
    assert not list(cache_dir().glob("*.tmp"))  # written atomically
    second = load_task("cifar10", cifar_tiny, augment=False)
    after = {p.name: p.stat().st_mtime_ns for p in cache_dir().glob("cifar10-*.pt")}
    assert after == entries  # read, not rewritten
    for split in ("train", "test"):
        (a, ya), (b, yb) = (
            next(first.eval_batches(split, 200)),
            next(second.eval_batches(split, 200)),
        )
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_cache_key_follows_file_changes(cifar_tiny: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(cifar_tiny, root)
    before = load_task("cifar10", root, augment=False)
    # replace the first test image (class airplane) by a mirrored copy: same name, new content
    target = root / "test" / "airplane" / sorted(os.listdir(root / "test" / "airplane"))[0]
    img = Image.open(target).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img.save(target, quality=95)
    os.utime(target, ns=(1, 1))
    after = load_task("cifar10", root, augment=False)
    a, b = next(before.eval_batches("test", 1))[0], next(after.eval_batches("test", 1))[0]
    assert not torch.equal(a, b)
    mirrored = np.asarray(Image.open(target).convert("RGB")).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(
        _denormalise(b, after.info.mean, after.info.std), mirrored, atol=2.01
    )


def test_corrupt_image_is_named(cifar_tiny: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(cifar_tiny, root)
    bad = root / "train" / "cat" / sorted(os.listdir(root / "train" / "cat"))[3]
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(UserError, match=f"{bad.name}.*could not be decoded"):
        load_task("cifar10", root)


def test_cifar10_from_environment_variable(cifar_tiny: Path, monkeypatch) -> None:
    parent = cifar_tiny.parent / "env-root"
    parent.mkdir(exist_ok=True)
    link = parent / "cifar10"
    if not link.exists():
        link.symlink_to(cifar_tiny)
    monkeypatch.setenv("PODBENCH_DATA", str(parent))
    task = load_task("cifar10", augment=False)
    assert task.num_samples("train") == 120 and task.num_samples("test") == 60
