"""Fixtures of the tasks tests: an isolated cache, and the real CIFAR-10 JPEG data extracted once."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
CIFAR_TARBALL_NAME = "cifar10-jpeg-q75.tar.gz"
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


def cifar_tarball() -> Path:
    """The shared CIFAR-10 JPEG tarball: <repo>/../shared/data/ (CI) or $PODBENCH_TEST_DATA."""
    candidates = [
        REPO.parent / "shared" / "data" / CIFAR_TARBALL_NAME,
        Path("/work/shared/data") / CIFAR_TARBALL_NAME,
    ]
    if os.environ.get("PODBENCH_TEST_DATA"):
        candidates.insert(0, Path(os.environ["PODBENCH_TEST_DATA"]) / CIFAR_TARBALL_NAME)
    for path in candidates:
        if path.is_file():
            return path
    pytest.fail(
        f"the test data {CIFAR_TARBALL_NAME} is missing (looked in "
        f"{', '.join(map(str, candidates))}); it ships in shared/data/."
    )


@pytest.fixture(autouse=True)
def _isolated_env(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one cache per test session: decodes are shared between tests, never with the user's cache
    monkeypatch.setenv("PODBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "podbench-cache"))
    monkeypatch.delenv("PODBENCH_DATA", raising=False)
    monkeypatch.delenv("PODBENCH_STREAM_BYTES", raising=False)
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cifar_archive() -> Path:
    """The real CIFAR-10 JPEG tarball (an image-folder tree), read in place by the loader."""
    return cifar_tarball()


@pytest.fixture(scope="session")
def cifar_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 training and 6 test images per class of the real data (first by file name), extracted.

    Only these members are extracted: writing all 60,000 files costs more than decoding them.
    """
    root = tmp_path_factory.mktemp("cifar10-tiny")
    with tarfile.open(cifar_tarball()) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
    by_folder: dict[str, list[str]] = {}
    for name in names:
        by_folder.setdefault(os.path.dirname(name), []).append(name)
    keep = set()
    for folder, items in by_folder.items():
        keep.update(sorted(items)[: 12 if folder.startswith("train/") else 6])
    with tarfile.open(cifar_tarball(), "r|gz") as tar:  # one forward pass, no seeking back
        for member in tar:
            if member.name in keep:
                tar.extract(member, root, filter="data")
    return root
