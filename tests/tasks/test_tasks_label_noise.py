"""Label noise: transition matrices checked entry by entry, noisy labels counted; open-set splits."""

from __future__ import annotations

import numpy as np
import pytest

from podbench.errors import UserError
from podbench.tasks import LabelNoise, load_task, open_set_classes
from podbench.tasks.label_noise import noisy_labels, transition_matrix

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DIGITS = tuple(str(i) for i in range(10))


def _counted(labels: np.ndarray, noisy: np.ndarray, k: int) -> np.ndarray:
    """The empirical transition matrix: row i = where the labels of class i went."""
    counts = np.zeros((k, k))
    np.add.at(counts, (labels, noisy), 1)
    return counts / counts.sum(axis=1, keepdims=True)


def test_symmetric_matrix_and_counts() -> None:
    t = transition_matrix("symmetric", 0.4, DIGITS)
    assert t[3, 3] == pytest.approx(0.6) and t[3, 4] == pytest.approx(0.4 / 9)
    assert t.sum(axis=1) == pytest.approx(np.ones(10))
    labels = np.repeat(np.arange(10), 5000)
    noisy = noisy_labels(labels, t, seed=0)
    sigma = np.sqrt(t * (1 - t) / 5000)  # binomial spread of each counted entry
    assert (np.abs(_counted(labels, noisy, 10) - t) < 4.5 * sigma).all()
    assert np.mean(noisy != labels) == pytest.approx(0.4, abs=0.01)
    assert np.array_equal(noisy, noisy_labels(labels, t, seed=0))  # seeded
    assert not np.array_equal(noisy, noisy_labels(labels, t, seed=1))


def test_asymmetric_cifar10_flips() -> None:
    t = transition_matrix("asymmetric", 0.4, CIFAR10)
    expected = np.eye(10)
    for a, b in [
        ("truck", "automobile"),
        ("bird", "airplane"),
        ("deer", "horse"),
        ("cat", "dog"),
        ("dog", "cat"),
    ]:
        i, j = CIFAR10.index(a), CIFAR10.index(b)
        expected[i, i], expected[i, j] = 0.6, 0.4
    assert np.array_equal(t, expected)
    labels = np.repeat(np.arange(10), 4000)
    noisy = noisy_labels(labels, t, seed=3)
    counted = _counted(labels, noisy, 10)
    assert counted[CIFAR10.index("frog")].tolist() == np.eye(10)[CIFAR10.index("frog")].tolist()
    assert counted[9, 1] == pytest.approx(0.4, abs=0.02)  # truck -> automobile
    assert set(np.flatnonzero(counted[9])) == {1, 9}


def test_asymmetric_digits_and_pair_and_errors() -> None:
    t = transition_matrix("asymmetric", 0.3, DIGITS)
    flipped = {
        (i, int(np.flatnonzero((t[i] > 0) & (np.arange(10) != i))[0]))
        for i in range(10)
        if t[i, i] < 1
    }
    assert flipped == {(2, 7), (3, 8), (5, 6), (6, 5), (7, 1)}
    pair = transition_matrix("pair", 0.2, ("a", "b", "c"))
    assert np.allclose(pair, [[0.8, 0.2, 0], [0, 0.8, 0.2], [0.2, 0, 0.8]])
    with pytest.raises(UserError, match="kind: pair"):
        transition_matrix("asymmetric", 0.4, ("T-shirt/top", "Trouser", "Pullover"))
    with pytest.raises(UserError, match="label_noise.rate"):
        transition_matrix("symmetric", 1.0, DIGITS)
    with pytest.raises(UserError, match="label_noise.kind"):
        transition_matrix("uniform", 0.4, DIGITS)
    # an open-set subset keeps the flips among the classes it kept
    sub = transition_matrix("asymmetric", 0.4, ("2", "3", "7"))
    assert np.allclose(sub, [[0.6, 0, 0.4], [0, 1, 0], [0, 0, 1]])


def test_open_set_classes_are_seeded() -> None:
    known = open_set_classes(10, 6, seed=0)
    assert len(known) == 6 and list(known) == sorted(set(known))
    assert known == open_set_classes(10, 6, seed=0)
    assert any(open_set_classes(10, 6, seed=s) != known for s in range(1, 5))
    with pytest.raises(UserError, match="open_set.known"):
        open_set_classes(10, 10, seed=0)


def test_load_task_open_set_and_noise() -> None:
    full = load_task("digits")
    known = (1, 4, 5, 8)
    task = load_task("digits", known_classes=known, label_noise=LabelNoise("symmetric", 0.5, 0))
    assert task.classes == tuple(str(c) for c in known) and task.info.num_classes == 4
    assert set(task.splits) == {"train", "test", "test-unknown"}
    test_labels = [y for _, y in full.eval_batches("test", 1000)][0].numpy()
    assert task.num_samples("test") == int(np.isin(test_labels, known).sum())
    assert task.num_samples("test-unknown") == int((~np.isin(test_labels, known)).sum())
    _, y = next(task.eval_batches("test", 1000))
    assert set(y.tolist()) == {0, 1, 2, 3}  # clean labels, relabelled
    _, y_unknown = next(task.eval_batches("test-unknown", 1000))
    assert set(y_unknown.tolist()) == {-1}
    # the training labels carry the noise: compare with the same split without noise
    clean = load_task("digits", known_classes=known)
    assert clean.label_noise_rate is None
    noisy_y = task._data["train"][1]
    clean_y = clean._data["train"][1]
    assert float((noisy_y != clean_y).float().mean()) == pytest.approx(task.label_noise_rate)
    assert task.label_noise_rate == pytest.approx(0.5, abs=0.06)
    # with a validation split: val and val-unknown, both clean
    val = load_task(
        "digits",
        known_classes=known,
        use_val=True,
        val_fraction=0.2,
        label_noise=LabelNoise("pair", 0.4, 1),
    )
    assert {"val", "val-unknown", "test-unknown"} <= set(val.splits)
    assert set(next(val.eval_batches("val-unknown", 1000))[1].tolist()) == {-1}


def test_pixel_batches_give_the_normalised_input() -> None:
    task = load_task("digits", limit=50, image_size=12)
    (x, y), (p, y2) = next(task.eval_batches("test", 16)), next(task.pixel_batches("test", 16))
    assert p.shape == x.shape and float(p.min()) >= 0 and float(p.max()) <= 1
    assert np.array_equal(y.numpy(), y2.numpy())
    assert np.allclose(task.from_pixels(p).numpy(), x.numpy(), atol=1e-4)
