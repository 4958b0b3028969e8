"""The data path: augmentation against a numpy reference, seeding, splits, limits, streaming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from podbench.errors import UserError
from podbench.tasks import DatasetInfo, load_task
from podbench.tasks.augment import random_crop_flip
from podbench.tasks.splits import balanced_head, stratified_split
from podbench.tasks.task import TensorTask


def _numpy_crop_flip(img: np.ndarray, top: int, left: int, flip: bool, pad: int) -> np.ndarray:
    padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad)))
    h, w = img.shape[1:]
    out = padded[:, top : top + h, left : left + w]
    return out[:, :, ::-1] if flip else out


def test_random_crop_flip_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(16, 3, 9, 7), dtype=np.uint8)
    offsets = rng.integers(0, 9, size=(16, 2))
    flips = rng.random(16) < 0.5
    got = random_crop_flip(
        torch.from_numpy(images), torch.from_numpy(offsets), torch.from_numpy(flips), padding=4
    ).numpy()
    for i in range(16):
        expected = _numpy_crop_flip(images[i], offsets[i, 0], offsets[i, 1], flips[i], 4)
        np.testing.assert_array_equal(got[i], expected)


def _index_task(n: int = 40, size: int = 10, pad: int = 2, hflip: bool = True) -> TensorTask:
    """Images whose channel 0 holds the sample index and channels 1-2 a position code."""
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    images = np.zeros((n, 3, size, size), dtype=np.uint8)
    images[:, 0] = (np.arange(n) + 1)[:, None, None]
    images[:, 1] = 1 + yy
    images[:, 2] = 1 + xx
    labels = np.arange(n) % 4
    info = DatasetInfo(
        name="index",
        num_classes=4,
        channels=3,
        image_size=size,
        mean=(0.0, 0.0, 0.0),
        std=(1 / 255, 1 / 255, 1 / 255),
        train_size=n,
        test_size=n,
        crop_padding=pad,
        hflip=hflip,
    )
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    return TensorTask(
        info,
        ("a", "b", "c", "d"),
        {"train": (x, y), "test": (x, y)},
        device=torch.device("cpu"),
        augment=True,
    )


def test_every_training_image_is_a_padded_crop_or_mirror_of_its_source() -> None:
    task = _index_task()
    originals = np.asarray(task._data["train"][0])
    seen = []
    flipped = 0
    for x, y in task.train_batches(7, seed=3, epoch=0):
        x = np.rint(x.numpy()).astype(np.int64)  # mean 0, std 1/255: the raw 0..255 values
        for img, label in zip(x, y.numpy(), strict=True):
            index = int(img[0].max()) - 1  # the interior always survives a 2-px shift
            seen.append(index)
            assert label == index % 4
            candidates = [
                (t, left, f)
                for t in range(5)
                for left in range(5)
                for f in (False, True)
                if np.array_equal(img, _numpy_crop_flip(originals[index], t, left, f, 2))
            ]
            assert candidates, f"sample {index} is not a crop/flip of its source"
            flipped += any(f for *_, f in candidates) and not any(not f for *_, f in candidates)
    assert sorted(seen) == list(range(40))  # each sample exactly once per epoch
    assert 5 <= flipped <= 35  # about half mirrored


def test_epochs_replay_and_differ() -> None:
    task = _index_task()
    a = torch.cat([x for x, _ in task.train_batches(8, seed=1, epoch=2)])
    b = torch.cat([x for x, _ in task.train_batches(8, seed=1, epoch=2)])
    c = torch.cat([x for x, _ in task.train_batches(8, seed=1, epoch=3)])
    d = torch.cat([x for x, _ in task.train_batches(8, seed=2, epoch=2)])
    assert torch.equal(a, b)
    assert not torch.equal(a, c) and not torch.equal(a, d)
    # random choices are per sample: the epoch is the same for any batch size
    e = torch.cat([x for x, _ in task.train_batches(13, seed=1, epoch=2)])
    assert torch.equal(a, e)


def test_drop_last_and_batch_sizes() -> None:
    task = _index_task(n=40)
    sizes = [len(y) for _, y in task.train_batches(12, seed=0, epoch=0, drop_last=True)]
    assert sizes == [12, 12, 12]
    sizes = [len(y) for _, y in task.train_batches(12, seed=0, epoch=0)]
    assert sizes == [12, 12, 12, 4]
    with pytest.raises(UserError, match="batch_size"):
        next(task.train_batches(0, seed=0, epoch=0))


def test_no_augmentation_gives_the_normalised_originals() -> None:
    task = load_task("synthetic", augment=False)
    raw = task._data["train"][0].numpy().astype(np.float64)
    mean = np.array(task.info.mean).reshape(1, 3, 1, 1)
    std = np.array(task.info.std).reshape(1, 3, 1, 1)
    xs, ys = zip(*task.train_batches(100, seed=0, epoch=0), strict=True)
    x = torch.cat(xs).numpy()
    # shuffled but not altered: sort both by their contents and compare
    expected = (raw / 255.0 - mean) / std
    key = lambda arr: np.lexsort(arr.reshape(len(arr), -1).T[:8])  # noqa: E731
    np.testing.assert_allclose(x[key(x)], expected[key(expected)], rtol=1e-5, atol=1e-5)
    ev = torch.cat([b for b, _ in task.eval_batches("test", 64)]).numpy()
    raw_test = task._data["test"][0].numpy().astype(np.float64)
    np.testing.assert_allclose(ev, (raw_test / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)


def test_image_size_resizes_batches() -> None:
    task = load_task("digits", image_size=16, augment=False)
    x, _ = next(task.eval_batches("test", 10))
    assert x.shape == (10, 1, 16, 16) and task.image_size == 16
    small = next(load_task("digits", augment=False).eval_batches("test", 10))[0]
    # an antialiased 2x upsample keeps each image's mean within a few percent
    torch.testing.assert_close(x.mean((1, 2, 3)), small.mean((1, 2, 3)), atol=0.05, rtol=0.05)


def test_stratified_split_by_hand() -> None:
    labels = np.repeat(np.arange(5), [100, 50, 30, 20, 10])
    kept, held = stratified_split(labels, 0.1, seed=4)
    assert len(np.intersect1d(kept, held)) == 0
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(210))
    assert np.bincount(labels[held]).tolist() == [10, 5, 3, 2, 1]
    again, _ = stratified_split(labels, 0.1, seed=4)
    other, _ = stratified_split(labels, 0.1, seed=5)
    assert np.array_equal(kept, again) and not np.array_equal(kept, other)
    with pytest.raises(UserError, match="val_fraction"):
        stratified_split(labels, 1.5, seed=0)


def test_balanced_head_by_hand() -> None:
    labels = np.array([2, 0, 0, 1, 0, 2, 1, 0])
    # round 1: first of each class (indices 0, 1, 3); round 2: second of each (2, 5, 6)
    assert balanced_head(labels, 3).tolist() == [0, 1, 3]
    assert balanced_head(labels, 5).tolist() == [0, 1, 2, 3, 5]
    assert balanced_head(labels, 100).tolist() == list(range(8))


def test_use_val_carves_a_reproducible_stratified_split() -> None:
    full = load_task("digits", augment=False)
    task = load_task("digits", augment=False, use_val=True, val_fraction=0.2, split_seed=7)
    assert task.splits == ("train", "val", "test")
    assert task.num_train + task.num_samples("val") == full.num_train
    assert task.num_samples("test") == full.num_samples("test")
    y_val = torch.cat([y for _, y in task.eval_batches("val", 500)]).numpy()
    y_full = torch.cat([y for _, y in full.eval_batches("train", 5000)]).numpy()
    assert np.all(np.abs(np.bincount(y_val) - 0.2 * np.bincount(y_full)) <= 1)
    # train and val images are disjoint and together the full training set
    flat = lambda t, s: torch.cat([x for x, _ in t.eval_batches(s, 5000)]).flatten(1)  # noqa: E731
    rows = {tuple(r.tolist()) for r in flat(task, "train")} | {
        tuple(r.tolist()) for r in flat(task, "val")
    }
    assert rows == {tuple(r.tolist()) for r in flat(full, "train")}
    again = load_task("digits", augment=False, use_val=True, val_fraction=0.2, split_seed=7)
    assert torch.equal(flat(task, "val"), flat(again, "val"))
    other = load_task("digits", augment=False, use_val=True, val_fraction=0.2, split_seed=8)
    assert not torch.equal(flat(task, "val"), flat(other, "val"))
    with pytest.raises(UserError, match="split 'val' does not exist"):
        full.eval_batches("val", 10).__next__()


def test_limit_keeps_class_balanced_heads() -> None:
    task = load_task("digits", limit=25, use_val=True)
    for split in ("train", "val", "test"):
        y = torch.cat([y for _, y in task.eval_batches(split, 100)]).numpy()
        assert len(y) == 25
        assert np.bincount(y, minlength=10).max() - np.bincount(y, minlength=10).min() <= 1


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_equals_in_memory(cifar_tiny: Path, workers: int) -> None:
    memory = load_task("cifar10", cifar_tiny, use_val=True, val_fraction=0.25, stream=False)
    stream = load_task(
        "cifar10", cifar_tiny, use_val=True, val_fraction=0.25, stream=True, workers=workers
    )
    assert type(stream).__name__ == "StreamingTask" and type(memory).__name__ == "TensorTask"
    for epoch in (0, 1):  # a persistent worker pool must see the new epoch's plan
        pairs = zip(
            memory.train_batches(32, seed=5, epoch=epoch),
            stream.train_batches(32, seed=5, epoch=epoch),
            strict=True,
        )
        for (xa, ya), (xb, yb) in pairs:
            assert torch.equal(ya, yb) and torch.equal(xa, xb)
    for split in ("train", "val", "test"):
        pairs = zip(memory.eval_batches(split, 50), stream.eval_batches(split, 50), strict=True)
        for (xa, ya), (xb, yb) in pairs:
            assert torch.equal(ya, yb) and torch.equal(xa, xb)
    stream.close()


def test_streaming_large_images_random_resized_crop(cifar_tiny: Path) -> None:
    task = load_task("imagefolder", cifar_tiny, stream=True, image_size=72, workers=0, limit=20)
    a = [x for x, _ in task.train_batches(8, seed=0, epoch=0)]
    b = [x for x, _ in task.train_batches(8, seed=0, epoch=0)]
    c = [x for x, _ in task.train_batches(8, seed=0, epoch=1)]
    assert a[0].shape == (8, 3, 72, 72) and a[0].dtype == torch.float32
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, c, strict=True))
    x, y = next(task.eval_batches("test", 20))
    assert x.shape == (20, 3, 72, 72) and len(torch.unique(y)) == 10


def test_stream_threshold_from_environment(cifar_tiny: Path, monkeypatch) -> None:
    monkeypatch.setenv("PODBENCH_STREAM_BYTES", "1000")
    task = load_task("cifar10", cifar_tiny, workers=0, limit=20)
    assert type(task).__name__ == "StreamingTask"
    with pytest.raises(UserError, match="stream=True needs image files in folders"):
        load_task("digits", stream=True)


def test_argument_errors() -> None:
    with pytest.raises(UserError, match=r"unknown dataset 'cifar11' \(did you mean 'cifar10'\?\)"):
        load_task("cifar11")
    with pytest.raises(UserError, match="limit"):
        load_task("digits", limit=0)
    with pytest.raises(UserError, match="val_fraction"):
        load_task("digits", use_val=True, val_fraction=0.0)
    with pytest.raises(UserError, match="device 'tpu7'"):
        load_task("digits", device="tpu7")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            load_task("digits", device="cuda")


@pytest.mark.parametrize(
    ("dataset", "arch", "epochs", "floor"),
    [
        ("synthetic", "small-cnn", 3, 0.9),
        ("digits", "mlp", 8, 0.9),
    ],
)
def test_batches_are_learnable(dataset: str, arch: str, epochs: int, floor: float) -> None:
    # labels that did not match their images (or broken augmentation) would keep accuracy at chance
    from podbench.tasks import create_arch

    torch.manual_seed(0)
    task = load_task(dataset)
    model = create_arch(
        arch, in_channels=task.info.channels, image_size=task.image_size, feat_dim=32
    )
    head = torch.nn.Linear(32, len(task.classes))
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=3e-3)
    for epoch in range(epochs):
        model.train()
        for x, y in task.train_batches(64, seed=0, epoch=epoch):
            loss = torch.nn.functional.cross_entropy(head(model(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        correct = sum(
            int((head(model(x)).argmax(1) == y).sum()) for x, y in task.eval_batches("test", 256)
        )
    assert correct / task.num_samples("test") >= floor


def _png_folder(root: Path, size: int, per_class: int = 5) -> Path:
    """An image folder of square PNGs (lossless): in memory and streamed decode the same pixels."""
    from PIL import Image

    gen = np.random.default_rng(size)
    for split, n in (("train", per_class), ("test", 3)):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = gen.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("size", [40, 80])
def test_protocol_depends_on_the_data_not_on_the_data_path(tmp_path: Path, size: int) -> None:
    # The memory threshold picks the path; it must not pick the augmentation or the evaluation.
    root = _png_folder(tmp_path, size)
    memory = load_task("imagefolder", root, stream_bytes=10**12)
    stream = load_task("imagefolder", root, stream_bytes=1, workers=0)
    assert type(memory).__name__ == "TensorTask" and type(stream).__name__ == "StreamingTask"
    assert memory.protocol == stream.protocol
    large = size > 64
    assert memory.protocol.train == ("random-resized-crop" if large else "pad-crop")
    assert memory.protocol.eval == ("resize-centre-crop" if large else "resize")
    for epoch in (0, 1):
        pairs = zip(
            memory.train_batches(4, seed=3, epoch=epoch),
            stream.train_batches(4, seed=3, epoch=epoch),
            strict=True,
        )
        for (xa, ya), (xb, yb) in pairs:
            assert torch.equal(ya, yb) and torch.equal(xa, xb)
    pairs = zip(memory.eval_batches("test", 4), stream.eval_batches("test", 4), strict=True)
    for (xa, ya), (xb, yb) in pairs:
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    stream.close()


def test_large_image_evaluation_is_resize_then_centre_crop(tmp_path: Path) -> None:
    from PIL import Image

    rows, cols = np.mgrid[0:80, 0:80]
    smooth = np.stack([rows * 3, cols * 3, (rows + cols) * 1.5], axis=-1).astype(np.uint8)
    for split in ("train", "test"):
        for label in ("a", "b"):
            (tmp_path / split / label).mkdir(parents=True)
            Image.fromarray(smooth if label == "a" else 255 - smooth).save(
                tmp_path / split / label / "0.png"
            )
    task = load_task("imagefolder", tmp_path, augment=False, stream_bytes=10**12)
    x, y = next(task.eval_batches("test", 2))
    # by hand with Pillow: shorter side to round(80 * 256 / 224) = 91, then the centre 80 x 80
    # from offset round(11 / 2) = 6 (torchvision's rounding)
    big = np.asarray(Image.fromarray(smooth).resize((91, 91), Image.BILINEAR), np.float64)
    expected = big[6:86, 6:86]
    mean, std = np.array(task.info.mean), np.array(task.info.std)
    got = (x[int(torch.nonzero(y == 0)[0])].permute(1, 2, 0).numpy() * std + mean) * 255
    assert np.abs(got - expected).max() <= 1.01  # Pillow's and torch's bilinear, rounded to uint8


def test_channels_last_batches_come_from_the_float_conversion() -> None:
    plain = load_task("synthetic", limit=20)
    last = load_task("synthetic", limit=20, channels_last=True)
    for batches in (
        lambda t: t.train_batches(8, seed=0, epoch=0),
        lambda t: t.eval_batches("test", 8),
    ):
        for (xa, ya), (xb, yb) in zip(batches(plain), batches(last), strict=True):
            assert xa.shape[1] == 3 and xa.is_contiguous()
            assert xb.is_contiguous(memory_format=torch.channels_last) and not xb.is_contiguous()
            assert torch.equal(xa, xb) and torch.equal(ya, yb)  # the same values, laid out NHWC


def test_per_split_limits_and_the_bytes_held() -> None:
    task = load_task("digits", use_val=True, limit={"train": 100, "val": 30, "test": None})
    info = task.info
    assert [task.num_samples(s) for s in ("train", "val", "test")] == [100, 30, info.test_size]
    per_image = info.channels * info.image_size**2  # uint8
    expected = sum(n * (per_image + 8) for n in (100, 30, info.test_size))  # + int64 labels
    assert task.data_bytes == expected
