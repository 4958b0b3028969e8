"""Training-data throughput: podbench's fast path against torchvision ImageFolder + DataLoader.

Usage: python benchmarks/bench_data.py [--data PATH] [--batch 200] [--epochs 3]
           [--baseline-batches 60] [--workers N] [--threads 1] [--device cpu]

Both sides produce the same thing from the same CIFAR-10 JPEG files: shuffled training batches,
random crop with 4-pixel padding + horizontal flip, normalised float tensors on the device.

- baseline: ``torchvision.datasets.ImageFolder`` with ``RandomCrop(32, padding=4)``,
  ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize`` through a ``DataLoader`` (shuffle,
  ``--workers`` persistent workers, pinned memory on CUDA), timed after its first batch.
- podbench: ``load_task("cifar10", folder)`` (decoded once, cached as uint8), then
  ``Task.train_batches`` (batched crop/flip/normalise on the device), timed over whole epochs.

Printed: images/second of each and their ratio (steady state), plus the one-off cost of the
first decode and of a cached load, and the ratio with that first decode counted in one epoch.
"""

from __future__ import annotations

import argparse
import os
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from podbench.tasks import load_task
from podbench.tasks.cache import cache_dir

REPO = Path(__file__).resolve().parents[1]
_TARBALL = Path("shared") / "data" / "cifar10-jpeg-q75.tar.gz"
# ../shared/data/ of the repository; a git worktree deeper down finds it further up
DEFAULT_DATA = next(
    (p / _TARBALL for p in REPO.parents if (p / _TARBALL).is_file()), REPO.parent / _TARBALL
)


def extracted(archive: Path) -> Path:
    """The archive's image-folder tree, extracted once under the podbench cache folder."""
    st = archive.stat()
    target = cache_dir() / "bench" / f"{archive.name}-{st.st_size}-{st.st_mtime_ns}"
    if not (target / ".complete").is_file():
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
        (target / ".complete").write_text("ok\n")
    return target


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def baseline_rate(
    folder: Path, batch: int, batches: int, workers: int, device: torch.device
) -> float:
    """Images/second of torchvision ImageFolder + transforms + DataLoader (after its 1st batch)."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    info_mean, info_std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(info_mean, info_std),
        ]
    )
    data = datasets.ImageFolder(str(folder / "train"), transform=transform)
    loader = DataLoader(
        data,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        drop_last=True,
    )
    it = iter(loader)
    x, _ = next(it)  # worker start-up is not throughput
    x.to(device, non_blocking=True)
    _sync(device)
    start = time.perf_counter()
    seen = 0
    for _ in range(batches):
        x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        seen += len(y)
    _sync(device)
    return seen / (time.perf_counter() - start)


def fast_rate(task, batch: int, epochs: int, device: torch.device) -> float:
    """Images/second of Task.train_batches over whole epochs."""
    seen = 0
    _sync(device)
    start = time.perf_counter()
    for epoch in range(epochs):
        for _x, y in task.train_batches(batch, seed=0, epoch=epoch, drop_last=True):
            seen += len(y)
    _sync(device)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="CIFAR-10 JPEG tarball (train/<class>/, test/<class>/)",
    )
    parser.add_argument("--batch", type=int, default=200, help="batch size (authors': 200)")
    parser.add_argument("--epochs", type=int, default=3, help="fast-path epochs timed")
    parser.add_argument(
        "--baseline-batches",
        type=int,
        default=60,
        help="baseline batches timed (a full epoch takes minutes)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="baseline DataLoader workers (default: CPU count)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the fast path (default 1: per-batch work is small, "
        "and the baseline's workers take the other cores)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if not args.data.is_file():
        raise SystemExit(
            f"bench_data: {args.data} is missing; pass --data PATH to the CIFAR-10 "
            "JPEG tarball (shared/data/cifar10-jpeg-q75.tar.gz)."
        )
    folder = extracted(args.data)
    print(
        f"data: {folder} (CIFAR-10 JPEG q75, 50,000 training images); device {device}; "
        f"batch {args.batch}; torch threads {torch.get_num_threads()}; "
        f"baseline workers {args.workers}"
    )

    with tempfile.TemporaryDirectory() as fresh_cache:
        os.environ["PODBENCH_CACHE"] = fresh_cache  # time a first decode, not an old cache
        t0 = time.perf_counter()
        load_task("cifar10", folder, device=device)
        first_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        task = load_task("cifar10", folder, device=device)
        cached_load = time.perf_counter() - t0
        next(task.train_batches(args.batch, seed=0, epoch=99))  # warm-up: allocator, kernels
        fast = fast_rate(task, args.batch, args.epochs, device)

    base = baseline_rate(folder, args.batch, args.baseline_batches, args.workers, device)
    n = task.num_train
    first_epoch_fast = n / (first_load + n / fast)
    print(f"first load (decode 60,000 JPEGs + write cache): {first_load:8.2f} s")
    print(f"cached load:                                    {cached_load:8.2f} s")
    print(f"podbench fast path:           {fast:12,.0f} images/s  ({args.epochs} epochs)")
    print(
        f"torchvision ImageFolder+DataLoader: {base:6,.0f} images/s  "
        f"({args.baseline_batches} batches)"
    )
    print(f"ratio fast / baseline (steady state):         {fast / base:8.1f}x")
    print(f"ratio with the first decode in one epoch:     {first_epoch_fast / base:8.1f}x")


if __name__ == "__main__":
    main()
