"""On-disk formats written here by their published specifications, read back by the loaders."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from podbench.cli import main as podbench_main
from podbench.errors import UserError
from podbench.tasks import dataset_info, list_datasets, load_task, locate_dataset


def _raw(task, split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images and labels of a split, undoing the normalisation."""
    xs, ys = zip(*task.eval_batches(split, 10_000), strict=True)
    m = torch.tensor(task.info.mean).view(1, -1, 1, 1)
    s = torch.tensor(task.info.std).view(1, -1, 1, 1)
    x = torch.cat(xs) * s + m
    return np.rint(x.mul(255).numpy()).astype(np.int64), torch.cat(ys).numpy()


def _write_cifar_batch(path: Path, data: np.ndarray, labels: list[int], key: bytes) -> None:
    # the python-version layout: a dict with bytes keys, data (N, 3072) uint8 row-major RGB planes
    with open(path, "wb") as fh:
        pickle.dump(
            {b"batch_label": b"x", key: labels, b"data": data, b"filenames": []}, fh, protocol=2
        )


def test_cifar10_python_batches(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = []
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = rng.integers(0, 256, size=(20, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=20).tolist()
        _write_cifar_batch(folder / name, data, labels, b"labels")
        batches.append((data, labels))
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, fh, protocol=2)
    task = load_task("cifar10", tmp_path, augment=False)
    assert task.classes == tuple(f"c{i}" for i in range(10))
    x, y = _raw(task, "train")
    assert x.shape == (100, 3, 32, 32)
    expected = np.concatenate([d for d, _ in batches[:5]])
    # pixel (c, h, w) of an image is byte c*1024 + h*32 + w of its row
    assert x[7, 2, 5, 9] == expected[7, 2 * 1024 + 5 * 32 + 9]
    np.testing.assert_array_equal(x.reshape(100, -1), expected)
    assert y.tolist() == sum((lab for _, lab in batches[:5]), [])
    xt, yt = _raw(task, "test")
    np.testing.assert_array_equal(xt.reshape(20, -1), batches[5][0])
    assert yt.tolist() == batches[5][1]


def test_cifar100_python_files_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar100" / "cifar-100-python"  # found through root/<name>/
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n in (("train", 30), ("test", 10)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as fh:
            pickle.dump(
                {b"fine_labels": list(range(n)), b"coarse_labels": [0] * n, b"data": data},
                fh,
                protocol=2,
            )
    task = load_task("cifar100", tmp_path, augment=False)
    assert task.num_samples("train") == 30 and len(task.classes) == 100
    assert _raw(task, "test")[1].tolist() == list(range(10))


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for name in ("train", "test"):
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": Evil()}, fh)
    with pytest.raises(UserError, match="CIFAR batch file .*train could not be read"):
        load_task("cifar100", tmp_path)
    assert not marker.exists()


def test_partial_cifar_extraction_names_the_missing_files(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"")
    with pytest.raises(UserError, match="missing data_batch_2, data_batch_3"):
        load_task("cifar10", tmp_path)


def test_svhn_mat_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    expected = {}
    for split, n in (("train", 12), ("test", 8)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)  # 10 stands for the digit 0
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        expected[split] = (x, y)
    task = load_task("svhn", tmp_path, augment=False)
    x, y = _raw(task, "train")
    xs, ys = expected["train"]
    # image i, channel c, row r, column k is X[r, k, c, i]
    assert x[3, 1, 4, 30] == xs[4, 30, 1, 3]
    np.testing.assert_array_equal(x, xs.transpose(3, 2, 0, 1))
    assert y.tolist() == [0 if v == 10 else int(v) for v in ys[:, 0]]
    assert _raw(task, "test")[0].shape == (8, 3, 32, 32)


def _png(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)


def test_tinyimagenet_layout(tmp_path: Path) -> None:
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01", "n03"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    colours = {"n01": (250, 0, 0), "n02": (0, 250, 0), "n03": (0, 0, 250)}
    for w in wnids:
        for i in range(3):
            _png(root / "train" / w / "images" / f"{w}_{i}.JPEG", colours[w])
    lines = []
    for i, w in enumerate(["n03", "n01", "n03", "n02"]):
        _png(root / "val" / "images" / f"val_{i}.JPEG", colours[w])
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    task = load_task("tinyimagenet", tmp_path, augment=False)
    assert task.classes == ("n01", "n02", "n03")  # sorted wnids, as ImageFolder orders them
    x, y = _raw(task, "test")
    assert y.tolist() == [2, 0, 2, 1]
    # each validation image's colour is its class's: labels come from val_annotations.txt
    assert [int(np.argmax(img[:, 32, 32])) for img in x] == [2, 0, 2, 1]
    assert x.shape == (4, 3, 64, 64) and task.num_samples("train") == 9
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(UserError, match="line 1 does not name"):
        load_task("tinyimagenet", tmp_path)


def test_imagefolder_resizes_mixed_sizes_and_formats(tmp_path: Path) -> None:
    _png(tmp_path / "train" / "cats" / "a.png", (200, 10, 10), (40, 30))
    _png(tmp_path / "train" / "cats" / "b.bmp", (210, 10, 10), (30, 30))
    _png(tmp_path / "train" / "dogs" / "c.png", (10, 10, 200), (50, 80))
    _png(tmp_path / "test" / "cats" / "d.png", (200, 10, 10), (30, 30))
    _png(tmp_path / "test" / "dogs" / "e.gif", (10, 10, 200), (30, 30))
    (tmp_path / "train" / "dogs" / "notes.txt").write_text("not an image")
    task = load_task("imagefolder", tmp_path, image_size=24, augment=False)
    assert task.classes == ("cats", "dogs") and task.info.num_classes == 2
    x, y = _raw(task, "train")
    assert x.shape == (3, 3, 24, 24) and y.tolist() == [0, 0, 1]
    # a flat colour stays that colour through resize and centre crop
    np.testing.assert_allclose(x[0, :, 12, 12], [200, 10, 10], atol=2)
    np.testing.assert_allclose(x[2, :, 12, 12], [10, 10, 200], atol=2)
    # without image_size: the first image's shorter side
    assert load_task("imagefolder", tmp_path, augment=False).image_size == 30


def test_imagefolder_missing_class_in_test(tmp_path: Path) -> None:
    _png(tmp_path / "train" / "a" / "1.png", (1, 2, 3))
    _png(tmp_path / "train" / "b" / "1.png", (1, 2, 3))
    _png(tmp_path / "test" / "a" / "1.png", (1, 2, 3))
    with pytest.raises(UserError, match=r"class folder .*test/b is missing"):
        load_task("imagefolder", tmp_path)


def test_missing_dataset_message_names_paths_expectation_and_remedy(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        load_task("svhn", tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and str(tmp_path / "svhn") in message
    assert "train_32x32.mat" in message and "ufldl.stanford.edu" in message
    assert message.count(". ") == 0 and message.endswith(".")  # one sentence


def test_default_places_and_environment(tmp_path: Path, monkeypatch) -> None:
    found, looked = locate_dataset("fashion-mnist")
    assert found is not None and found.path == Path("/usr/share/datasets/fashion-mnist")
    monkeypatch.setenv("PODBENCH_DATA", str(tmp_path))
    _, looked = locate_dataset("mnist")
    assert looked[:2] == [tmp_path, tmp_path / "mnist"]
    assert Path("/usr/share/datasets/mnist") in looked


def test_registry_facts() -> None:
    names = list_datasets()
    for expected in (
        "cifar10",
        "cifar100",
        "mnist",
        "fashion-mnist",
        "svhn",
        "tinyimagenet",
        "imagefolder",
        "digits",
        "synthetic",
    ):
        assert expected in names
    # the POD authors' settings (LOSSES.md)
    c10, c100, tin = dataset_info("cifar10"), dataset_info("cifar100"), dataset_info("tinyimagenet")
    assert (c10.latent_dim, c10.batch_size, c10.std) == (256, 200, (0.2023, 0.1994, 0.2010))
    assert (c100.latent_dim, c100.batch_size, c100.mean) == (512, 128, (0.507, 0.487, 0.441))
    assert (tin.image_size, tin.num_classes, tin.train_size) == (64, 200, 100000)
    assert dataset_info("cifar-10") is c10  # alias
    assert dataset_info("fashion-mnist").default_root == "/usr/share/datasets/fashion-mnist"


def test_tasks_command(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich folds long paths in narrow terminals
    assert podbench_main(["tasks", "--json", "--data-root", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in out["datasets"]}
    assert rows["cifar10"]["status"] == "missing"
    assert str(tmp_path / "cifar10") in rows["cifar10"]["looked"]
    assert rows["digits"]["status"] == "built-in"
    archs = {r["name"]: r for r in out["archs"]}
    assert archs["mlp"]["params"] == 3 * 32 * 32 * 256 + 256 + 256 * 256 + 256 + 256 * 128 + 128
    assert podbench_main(["tasks"]) == 0
    text = capsys.readouterr().out
    assert "fashion-mnist" in text and "found" in text and "resnet50" in text
    assert "/usr/share/datasets/fashion-mnist" in text
    assert podbench_main(["tasks", "--feat-dim", "0"]) == 2
    assert "--feat-dim must be a positive integer" in capsys.readouterr().err


def test_malformed_dataset_shows_in_listing(tmp_path: Path, capsys) -> None:
    (tmp_path / "svhn").mkdir()
    shutil.copy(__file__, tmp_path / "svhn" / "train_32x32.mat")  # one of two files
    assert podbench_main(["tasks", "--json", "--data-root", str(tmp_path)]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["datasets"]}
    assert rows["svhn"]["status"] == "malformed" and "test_32x32.mat" in rows["svhn"]["where"]
