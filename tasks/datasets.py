"""The dataset registry and :func:`load_task`.

A dataset is a :class:`DatasetInfo` (facts) next to a :class:`DatasetSource` (where its files are
and how to read them), registered with :func:`register_dataset`. Nothing is ever downloaded: a
source looks in the data root and says exactly what is missing and how to get it.

Example:
    >>> from podbench.tasks import load_task
    >>> task = load_task("digits", limit=100)
    >>> x, y = next(task.train_batches(32, seed=0, epoch=0))
    >>> tuple(x.shape)
    (32, 1, 8, 8)
"""

from __future__ import annotations

import dataclasses
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

import numpy as np
import torch

from podbench.errors import UserError
from podbench.registry import Registry
from podbench.tasks.devices import resolve_device
from podbench.tasks.label_noise import LabelNoise
from podbench.tasks.task import Task

__all__ = [
    "DATASETS",
    "ArraySplit",
    "DatasetInfo",
    "DatasetSource",
    "FileSplit",
    "Located",
    "RawData",
    "candidate_roots",
    "dataset_info",
    "dataset_source",
    "list_datasets",
    "load_task",
    "locate_dataset",
    "register_dataset",
    "resolve_device",
    "stream_threshold",
]

ENTRY_POINT_GROUP = "podbench.datasets"
# in-memory above this many decoded bytes would crowd a GPU: stream through DataLoader workers
DEFAULT_STREAM_BYTES = 4 * 1024**3


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about one dataset, in one place.

    ``None`` means "not fixed": taken from the data (image folders) or not known (authors' values).

    Attributes:
        name: registry name.
        num_classes: number of classes.
        channels: 1 (grayscale) or 3 (RGB).
        image_size: native height = width in pixels.
        mean, std: per-channel normalisation constants of images scaled to [0, 1].
        train_size, test_size: samples in the standard splits.
        latent_dim: latent dimension d the POD/PEDCC authors used, when they used the dataset.
        batch_size: the authors' batch size.
        default_root: first default place looked in when no root is given.
        how_to_get: one sentence on obtaining the files.
        expected: what must be found in a data root.
        description: one line for listings.
        crop_padding: zero padding of the random-crop augmentation (0: no crop).
        hflip: whether training images are flipped horizontally at random.
        default_roots: every default place, in the order they are tried.
        aliases: other accepted names (kebab-case).
        needs_files: False for a dataset generated or bundled in code (no data root).
        source: ``podbench``, or the distribution (or module) that registered the dataset.
    """

    name: str
    num_classes: int | None
    channels: int
    image_size: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int | None
    test_size: int | None
    latent_dim: int | None = None
    batch_size: int | None = None
    default_root: str | None = None
    how_to_get: str = ""
    expected: str = ""
    description: str = ""
    crop_padding: int = 0
    hflip: bool = False
    default_roots: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    needs_files: bool = True
    source: str = "podbench"

    def __post_init__(self) -> None:
        if self.default_root is None and self.default_roots:
            object.__setattr__(self, "default_root", self.default_roots[0])


@dataclass(frozen=True)
class Located:
    """Where a source found its data.

    Attributes:
        path: the folder, archive (or pseudo path) holding the data.
        layout: which on-disk format was found there (e.g. "pickle", "folder", "idx").
        files: the files the decoded arrays depend on (their mtime and size key the cache).
        cache: cache what ``read`` returns (slow reads such as archives), whatever the source.
    """

    path: Path
    layout: str
    files: tuple[Path, ...] = ()
    cache: bool = False


@dataclass
class ArraySplit:
    """Decoded images (N, C, H, W) uint8 and labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor


@dataclass
class FileSplit:
    """Image files not decoded yet and their labels (N,) int64."""

    paths: list[str]
    labels: torch.Tensor


@dataclass
class RawData:
    """What a source reads: the train and test splits and the class names."""

    train: ArraySplit | FileSplit
    test: ArraySplit | FileSplit
    classes: tuple[str, ...]


class DatasetSource(ABC):
    """Finds and reads one dataset's files. Subclass, then decorate with :func:`register_dataset`.

    ``read`` of a folder-based source only lists files (cheap) and returns :class:`FileSplit`:
    the loader decides whether to decode them once into the cache or stream them. ``read`` of an
    array source returns :class:`ArraySplit`; set ``cache = True`` when reading it is slow.
    """

    info: ClassVar[DatasetInfo]
    cache: ClassVar[bool] = False

    @abstractmethod
    def locate(self, root: Path) -> Located | None:
        """The data under ``root``, or None when it is not there (raise UserError if malformed)."""

    @abstractmethod
    def read(self, located: Located, *, image_size: int | None) -> RawData:
        """Read what :meth:`locate` found."""


DATASETS: Registry[DatasetInfo] = Registry(
    "dataset",
    plural="datasets",
    group=ENTRY_POINT_GROUP,
    decorator="register_dataset",
    builtins=("podbench.tasks.sources",),
)

S = TypeVar("S", bound=type[DatasetSource])


def register_dataset(name: str | DatasetInfo, /, **facts: Any) -> Callable[[S], S]:
    """Class decorator that registers a :class:`DatasetSource` under ``name``.

    ``facts`` are the fields of :class:`DatasetInfo`; passing a whole ``DatasetInfo`` instead of
    the name also works.

    Example:
        >>> @register_dataset("my-data", num_classes=2, channels=1, image_size=8, mean=(0.5,),
        ...                   std=(0.25,), train_size=None, test_size=None)
        ... class MyData(DatasetSource):
        ...     ...
    """
    if isinstance(name, DatasetInfo):
        if facts:
            raise TypeError(
                "register_dataset takes a DatasetInfo or a name with its facts, not both"
            )
        info = name
    else:
        info = DatasetInfo(name=name, **facts)

    def decorator(cls: S) -> S:
        if not (isinstance(cls, type) and issubclass(cls, DatasetSource)):
            raise TypeError(f"register_dataset expects a DatasetSource subclass, got {cls!r}")
        if len(info.mean) != info.channels or len(info.std) != info.channels:
            raise ValueError(f"dataset {info.name!r}: mean and std need {info.channels} values")
        cls.info = DATASETS.add(info, owner=cls)
        return cls

    return decorator


def list_datasets(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered datasets (built-ins and entry-point plugins).

    Args:
        pattern: keep only the names matching this glob (e.g. ``"cifar*"``).
    """
    return DATASETS.names(pattern)


def dataset_source(name: str) -> type[DatasetSource]:
    """The registered source class of ``name`` (or of one of its aliases)."""
    return cast(type[DatasetSource], DATASETS.owner(name))


def dataset_info(name: str) -> DatasetInfo:
    """Facts about dataset ``name`` (or one of its aliases)."""
    return DATASETS.get(name)


def _data_env_roots() -> list[Path]:
    env = os.environ.get("PODBENCH_DATA", "")
    return [Path(p).expanduser() for p in env.split(os.pathsep) if p]


def candidate_roots(name: str, root: str | Path | None = None) -> list[Path]:
    """The folders looked in, in order: ``root`` (or $PODBENCH_DATA) and its ``<name>`` subfolder,
    then the dataset's default places (only when no ``root`` is given)."""
    info = dataset_info(name)
    # folders are often spelled with underscores (fashion_mnist) where names have dashes
    names = dict.fromkeys(n for k in (info.name, *info.aliases) for n in (k, k.replace("-", "_")))
    bases = [Path(root).expanduser()] if root is not None else _data_env_roots()
    out: list[Path] = []
    for base in bases:
        out.append(base)
        out.extend(base / n for n in names)
    if root is None:
        out.extend(Path(p).expanduser() for p in info.default_roots)
    return list(dict.fromkeys(out))  # first occurrence of each, in order


def locate_dataset(name: str, root: str | Path | None = None) -> tuple[Located | None, list[Path]]:
    """Where ``name`` is found (or None) and the folders looked in."""
    src = dataset_source(name)()
    info = src.info
    if not info.needs_files:
        return src.locate(Path(".")), []
    looked = candidate_roots(name, root)
    for path in looked:
        if path.is_dir() or path.is_file():  # a file: an archive of an image-folder tree
            found = src.locate(path)
            if found is not None:
                return found, looked
    return None, looked


def _not_found_message(info: DatasetInfo, looked: Sequence[Path]) -> str:
    where = ", ".join(str(p) for p in looked) or "(no folder: pass a data root)"
    return (
        f"dataset '{info.name}' was not found: looked in {where} for {info.expected}; "
        f"{info.how_to_get.rstrip('.')}, or pass its folder as data_root (suite file), "
        f"--data-root, or the PODBENCH_DATA environment variable."
    )


def _subset(split: ArraySplit | FileSplit, idx: np.ndarray) -> ArraySplit | FileSplit:
    t = torch.as_tensor(idx, dtype=torch.long)
    if isinstance(split, ArraySplit):
        return ArraySplit(split.images.index_select(0, t), split.labels.index_select(0, t))
    return FileSplit([split.paths[i] for i in idx.tolist()], split.labels.index_select(0, t))


def stream_threshold() -> int:
    """Decoded bytes above which image folders are streamed: $PODBENCH_STREAM_BYTES or 4 GiB."""
    raw = os.environ.get("PODBENCH_STREAM_BYTES")
    if raw is None:
        return DEFAULT_STREAM_BYTES
    try:
        return int(float(raw))
    except ValueError as err:
        raise UserError(f"PODBENCH_STREAM_BYTES must be a number of bytes, got '{raw}'.") from err


def load_task(
    name: str,
    root: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    val_fraction: float = 0.1,
    split_seed: int = 0,
    use_val: bool = False,
    augment: bool = True,
    limit: int | Mapping[str, int | None] | None = None,
    image_size: int | None = None,
    stream: bool | None = None,
    workers: int | None = None,
    known_classes: Sequence[int] | None = None,
    label_noise: LabelNoise | None = None,
    stream_bytes: int | None = None,
    channels_last: bool = False,
    augmentation: str = "dataset",
) -> Task:
    """Load dataset ``name`` as a :class:`~podbench.tasks.Task` on ``device``.

    Args:
        name: registered dataset name.
        root: data root (None: $PODBENCH_DATA, then the dataset's default places).
        device: "cpu", "cuda", "cuda:1" or "auto".
        val_fraction: share of the training set carved out as validation when ``use_val``.
        split_seed: seed of the stratified validation split.
        use_val: train on the training set minus the validation split, and offer split "val".
        augment: random crop with padding and flip (per the dataset) on training batches.
        limit: keep the first ``limit`` samples (class-balanced) of each split; a mapping
            limits each split it names ({"train": 400, "test": None}; ``test-unknown`` follows
            ``test``), the others are whole.
        image_size: size of the batches' images (default: the dataset's); image folders are
            decoded at this size.
        stream: True: read image files through DataLoader workers every epoch; False: decode once
            and hold in memory; None: stream only when the decoded data would exceed
            ``stream_bytes``. Both give the same protocol (augmentation, evaluation resize).
        workers: DataLoader workers when streaming (default: CPU count, at most 8).
        known_classes: an open-set split: train and evaluate on these classes only, relabelled
            0..k-1 in this order; each evaluation split also has ``<split>-unknown``, the other
            classes' samples (labelled -1), for open-set detection.
        label_noise: redraw the training split's labels by this noise model (validation and
            test labels stay clean); ``Task.label_noise_rate`` is the share actually changed.
        stream_bytes: the threshold of ``stream=None`` (default :func:`stream_threshold`).
        channels_last: batches in the channels-last layout (no copy per batch to get there).
        augmentation: ``"dataset"`` (the dataset's crop and flip) or ``"airbench"``
            (airbench94's alternating flips and 2-pixel reflect translations).

    Returns:
        A Task whose batches are normalised float images on ``device`` with int64 labels.
    """
    from podbench.tasks.task import TensorTask

    _check_load_arguments(limit, image_size, use_val, val_fraction)
    dev = resolve_device(device)
    raw, located, info = _read_source(name, root, image_size)
    plan = _split_plan(
        raw,
        limit,
        use_val=use_val,
        val_fraction=val_fraction,
        split_seed=split_seed,
        known_classes=known_classes,
    )
    source_splits, classes, info = _known_classes_only(raw, info, known_classes)
    if not any(isinstance(s, FileSplit) for s in source_splits.values()):
        if stream:
            raise UserError(
                f"stream=True needs image files in folders, but dataset '{name}' at "
                f"{located.path} is read as arrays (or from an archive) and always "
                "held in memory; leave stream unset."
            )
        splits = _materialise(plan, source_splits)
    elif _streamed(raw, info, plan, stream, stream_bytes):
        from podbench.tasks.streaming import StreamingTask

        streamed, noise_rate = _with_noise(_materialise(plan, source_splits), classes, label_noise)
        files = cast(dict[str, FileSplit], streamed)  # a folder's splits are all files
        task: Task = StreamingTask(
            info,
            classes,
            files,
            device=dev,
            augment=augment,
            image_size=image_size or _native_size(info),
            workers=workers,
            channels_last=channels_last,
            policy=augmentation,
        )
        task.label_noise_rate = noise_rate
        return task
    else:
        splits = _decoded(info, plan, source_splits, limit)
    splits, noise_rate = _with_noise(splits, classes, label_noise)
    tensors = {k: (v.images, v.labels) for k, v in splits.items() if isinstance(v, ArraySplit)}
    task = TensorTask(
        info,
        classes,
        tensors,
        device=dev,
        augment=augment,
        image_size=image_size,
        channels_last=channels_last,
        policy=augmentation,
    )
    task.label_noise_rate = noise_rate
    return task


SplitPlan = dict[str, tuple[str, np.ndarray | None]]


def _materialise(
    plan: SplitPlan, source_splits: Mapping[str, ArraySplit | FileSplit]
) -> dict[str, ArraySplit | FileSplit]:
    """Each planned split: its source split, or the planned samples of it."""
    return {
        key: source_splits[source] if idx is None else _subset(source_splits[source], idx)
        for key, (source, idx) in plan.items()
    }


def _known_classes_only(
    raw: RawData, info: DatasetInfo, known_classes: Sequence[int] | None
) -> tuple[dict[str, ArraySplit | FileSplit], tuple[str, ...], DatasetInfo]:
    """(source splits, classes, info): in an open-set split the known classes relabelled
    0..k-1 and the others -1; else the data as read."""
    source_splits: dict[str, ArraySplit | FileSplit] = {"train": raw.train, "test": raw.test}
    if known_classes is None:
        return source_splits, tuple(raw.classes), info
    relabel = torch.full((len(raw.classes),), -1, dtype=torch.long)
    relabel[list(known_classes)] = torch.arange(len(known_classes))
    relabelled = {k: _relabelled(v, relabel[v.labels]) for k, v in source_splits.items()}
    classes = tuple(raw.classes[c] for c in known_classes)
    return relabelled, classes, dataclasses.replace(info, num_classes=len(classes))


def _native_size(info: DatasetInfo) -> int:
    """The image size of files as read (:func:`_read_source` sets it from the data)."""
    assert info.image_size is not None
    return info.image_size


def _streamed(
    raw: RawData, info: DatasetInfo, plan: SplitPlan, stream: bool | None, stream_bytes: int | None
) -> bool:
    """Whether image files are streamed: as asked, else when decoded they would pass the
    threshold."""
    if stream is not None:
        return stream
    native = _native_size(info)
    sizes = [
        len(getattr(raw, src).labels) if idx is None else len(idx) for src, idx in plan.values()
    ]
    decoded_bytes = sum(sizes) * info.channels * native * native
    return decoded_bytes > (stream_threshold() if stream_bytes is None else stream_bytes)


def _decoded(
    info: DatasetInfo,
    plan: SplitPlan,
    source_splits: dict[str, ArraySplit | FileSplit],
    limit: int | Mapping[str, int | None] | None,
) -> dict[str, ArraySplit | FileSplit]:
    """The planned splits of image files decoded into memory (through the decode cache)."""
    from podbench.tasks import cache

    native = _native_size(info)

    def decoded(split: ArraySplit | FileSplit) -> ArraySplit | FileSplit:
        return (
            cache.cached_decode(info.name, split, native) if isinstance(split, FileSplit) else split
        )

    if all(_split_limit(limit, key) is None for key in plan):
        # decode (or load from the cache) whole splits, then carve
        return _materialise(plan, {k: decoded(v) for k, v in source_splits.items()})
    # a few samples: decode only those
    return {k: decoded(v) for k, v in _materialise(plan, source_splits).items()}


def _check_load_arguments(
    limit: int | Mapping[str, int | None] | None,
    image_size: int | None,
    use_val: bool,
    val_fraction: float,
) -> None:
    """One sentence for a limit, image size or validation share that cannot be used."""
    for value in limit.values() if isinstance(limit, Mapping) else [limit]:
        if value is not None and int(value) < 1:
            raise UserError(f"limit must be a positive number of samples or null, got {value}.")
    if image_size is not None and int(image_size) < 1:
        raise UserError(f"image_size must be a positive number of pixels, got {image_size}.")
    if use_val and not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}.")


def _read_source(
    name: str, root: str | Path | None, image_size: int | None
) -> tuple[Any, Any, DatasetInfo]:
    """The dataset's splits as read (through the cache where it has one), where they were found,
    and its info with the facts from the data itself (classes, channels, native size, sizes)."""
    from podbench.tasks import cache, formats

    src_cls = dataset_source(name)
    info = src_cls.info
    located, looked = locate_dataset(name, root)
    if located is None:
        raise UserError(_not_found_message(info, looked))
    src = src_cls()
    if (src.cache or located.cache) and located.files:
        raw = cache.cached_arrays(
            info.name, located, image_size, lambda: src.read(located, image_size=image_size)
        )
    else:
        raw = src.read(located, image_size=image_size)
    # image folders know their classes only once read
    first = raw.train
    if isinstance(first, ArraySplit):
        channels, native = int(first.images.shape[1]), int(first.images.shape[-1])
    else:
        channels, native = (
            info.channels,
            formats.folder_image_size(first.paths, image_size, info.image_size),
        )
    info = dataclasses.replace(
        info,
        num_classes=len(raw.classes),
        channels=channels,
        image_size=native,
        train_size=len(first.labels),
        test_size=len(raw.test.labels),
    )
    if len(info.mean) != channels:  # e.g. grayscale image folders: one constant per channel
        info = dataclasses.replace(info, mean=info.mean[:1] * channels, std=info.std[:1] * channels)
    return raw, located, info


def _split_plan(
    raw: Any,
    limit: int | Mapping[str, int | None] | None,
    *,
    use_val: bool,
    val_fraction: float,
    split_seed: int,
    known_classes: Sequence[int] | None,
) -> dict[str, tuple[str, np.ndarray | None]]:
    """Which samples of which source split each task split takes (None: all of them)."""
    plan: dict[str, tuple[str, np.ndarray | None]] = {}
    if use_val:
        from podbench.tasks.splits import stratified_split

        kept, held = stratified_split(raw.train.labels.numpy(), val_fraction, split_seed)
        plan["train"], plan["val"] = ("train", kept), ("train", held)
    else:
        plan["train"] = ("train", None)
    plan["test"] = ("test", None)
    if known_classes is not None:
        plan = _open_set_plan(plan, raw, known_classes)
    for key, (source, idx) in plan.items():
        kept_head = _split_limit(limit, key)
        if kept_head is not None:
            from podbench.tasks.splits import balanced_head

            labels = getattr(raw, source).labels.numpy()
            base = np.arange(len(labels)) if idx is None else idx
            plan[key] = (source, base[balanced_head(labels[base], int(kept_head))])
    return plan


def _split_limit(limit: int | Mapping[str, int | None] | None, split: str) -> int | None:
    """The limit of ``split``: ``limit`` itself, or its entry (``<split>-unknown``: ``<split>``'s)."""
    if not isinstance(limit, Mapping):
        return limit
    return limit.get(split, limit.get(split.partition("-")[0]))


def _relabelled(split: ArraySplit | FileSplit, labels: torch.Tensor) -> ArraySplit | FileSplit:
    return dataclasses.replace(split, labels=labels)


def _open_set_plan(
    plan: dict[str, tuple[str, np.ndarray | None]], raw: RawData, known: Sequence[int]
) -> dict[str, tuple[str, np.ndarray | None]]:
    """Each split's samples of the ``known`` classes, and a ``<split>-unknown`` of the others."""
    if len(set(known)) != len(known) or not all(0 <= c < len(raw.classes) for c in known):
        raise UserError(
            f"open-set classes {list(known)} must be distinct class indices below "
            f"{len(raw.classes)}."
        )
    out: dict[str, tuple[str, np.ndarray | None]] = {}
    for key, (source, idx) in plan.items():
        labels = getattr(raw, source).labels.numpy()
        base = np.arange(len(labels)) if idx is None else idx
        inside = np.isin(labels[base], np.asarray(known))
        out[key] = (source, base[inside])
        if key != "train":  # the unknown classes' training images are never shown
            out[f"{key}-unknown"] = (source, base[~inside])
    return out


def _with_noise(
    splits: dict[str, ArraySplit | FileSplit], classes: Sequence[str], noise: LabelNoise | None
) -> tuple[dict[str, ArraySplit | FileSplit], float | None]:
    """The splits with the training labels redrawn, and the share of them that changed."""
    if noise is None:
        return splits, None
    from podbench.tasks.label_noise import noisy_labels, transition_matrix

    matrix = transition_matrix(noise.kind, noise.rate, classes)
    train = splits["train"]
    noisy = torch.from_numpy(noisy_labels(train.labels.numpy(), matrix, noise.seed))
    changed = float((noisy != train.labels).float().mean()) if len(noisy) else 0.0
    return {**splits, "train": _relabelled(train, noisy)}, changed
