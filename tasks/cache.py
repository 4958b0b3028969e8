"""Decode once: decoded uint8 tensors cached on disk, keyed by the source files' path, mtime, size.

The cache folder is $PODBENCH_CACHE, else ``~/.cache/podbench``. Entries are written to a
temporary file and renamed, so a crash never leaves a half-written entry that a later run trusts.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from podbench.tasks.datasets import ArraySplit, FileSplit, Located, RawData

__all__ = ["cache_dir", "cache_key", "cached_arrays", "cached_decode"]

# bump when the decoded layout changes, so stale entries are never read
CACHE_VERSION = 1


def cache_dir() -> Path:
    """$PODBENCH_CACHE, else ~/.cache/podbench."""
    env = os.environ.get("PODBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "podbench"


def cache_key(kind: str, files: Iterable[str | Path], extra: object = None) -> str:
    """sha256 over the kind, ``extra`` and every file's absolute path, mtime and size."""
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, kind, extra]).encode())
    for f in files:
        st = os.stat(f)
        h.update(f"\n{os.path.abspath(f)}\t{st.st_mtime_ns}\t{st.st_size}".encode())
    return h.hexdigest()[:24]


def _load(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt entry is rebuilt, never trusted
        warnings.warn(f"ignoring unreadable cache entry {path}: {err}", stacklevel=3)
        return None


def _store(path: Path, payload: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(payload, fh)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:  # a read-only cache only costs speed
        warnings.warn(
            f"could not write the data cache {path} ({err}); set PODBENCH_CACHE to a "
            "writable folder to decode only once.",
            stacklevel=3,
        )


def cached_decode(name: str, split: FileSplit, image_size: int) -> ArraySplit:
    """Decode ``split``'s image files at ``image_size`` (or load them from the cache)."""
    from podbench.tasks.formats import decode_image_files

    key = cache_key("files", split.paths, extra=image_size)
    path = cache_dir() / f"{name}-{image_size}px-{len(split.paths)}-{key}.pt"
    hit = _load(path)
    if hit is not None and len(hit["labels"]) == len(split.labels):
        return ArraySplit(hit["images"], split.labels)
    images = decode_image_files(split.paths, image_size)
    _store(path, {"images": images, "labels": split.labels})
    return ArraySplit(images, split.labels)


def cached_arrays(
    name: str, located: Located, image_size: int | None, read: Callable[[], RawData]
) -> RawData:
    """``read()`` once per version of ``located.files``; later calls load the cached tensors."""
    key = cache_key(located.layout, located.files, extra=image_size)
    path = cache_dir() / f"{name}-{located.layout}-{key}.pt"
    hit = _load(path)
    if hit is not None:
        return RawData(
            ArraySplit(hit["train_x"], hit["train_y"]),
            ArraySplit(hit["test_x"], hit["test_y"]),
            tuple(hit["classes"]),
        )
    raw = read()
    if isinstance(raw.train, ArraySplit) and isinstance(raw.test, ArraySplit):
        _store(
            path,
            {
                "train_x": raw.train.images,
                "train_y": raw.train.labels,
                "test_x": raw.test.images,
                "test_y": raw.test.labels,
                "classes": list(raw.classes),
            },
        )
    return raw
