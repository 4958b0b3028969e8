"""Promises the probes' runs rest on that no other test held: failed runs are tried again on a
rerun, validation and test labels stay clean under label noise, ``label_noise.seed`` is the
seed of the draws."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from podbench.factory import _data_conditions
from podbench.record import RunRecord
from podbench.results import ResultsStore
from podbench.runs import RunSpec
from podbench.tasks import LabelNoise, load_task
from podbench.tasks.label_noise import transition_matrix

BASE = dict(
    loss="softmax",
    dataset="digits",
    arch="mlp",
    feat_dim=16,
    epochs=1,
    batch_size=64,
    lr=0.05,
    milestones=[],
    device="cpu",
    limit_train=200,
    limit_eval=100,
)


def _record(run: RunSpec, status: str) -> dict[str, Any]:
    error = (
        None
        if status != "failed"
        else {"type": "RuntimeError", "message": "boom", "traceback": "", "epoch": 0}
    )
    return RunRecord.of_run(
        run,
        status=status,
        error=error,
        history=[],
        final_test_acc=None if status == "failed" else 0.5,
    ).to_json_dict()


def test_failed_runs_are_tried_again_and_final_ones_are_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray import tune

    from podbench import executor

    store = ResultsStore(tmp_path)
    runs = [RunSpec(**BASE, seed=s) for s in range(4)]
    for run, status in zip(runs, ("completed", "diverged", "failed"), strict=False):
        store.write_record(_record(run, status))
    # the driver's list: the failed run and the one without a record
    assert [r.seed for r in executor.pending_runs(runs, store)] == [2, 3]
    # the worker's own check: a failed record is trained again and overwritten
    trained: list[int] = []

    def fake_train(run: RunSpec, **_: Any) -> dict[str, Any]:
        trained.append(run.seed)
        return _record(run, "completed")

    monkeypatch.setattr(executor, "train_in_worker", fake_train)
    monkeypatch.setattr(tune, "report", lambda *a, **k: None)
    for run in runs[:3]:
        executor._trial({"run": run.model_dump(mode="json"), "results_dir": str(tmp_path)})
    assert trained == [2]
    assert store.read_record(runs[2].run_id)["status"] == "completed"


def test_label_noise_seed_is_the_seed_of_the_draws() -> None:
    noise = {"kind": "symmetric", "rate": 0.4}
    assert _data_conditions(RunSpec(**BASE, seed=5, label_noise={**noise, "seed": 3}))[1].seed == 3
    assert _data_conditions(RunSpec(**BASE, seed=6, label_noise={**noise, "seed": 3}))[1].seed == 3
    assert _data_conditions(RunSpec(**BASE, seed=5, label_noise=noise))[1].seed == 5  # default
    assert _data_conditions(RunSpec(**BASE, seed=5))[1] is None


def _labels(task: Any, split: str) -> np.ndarray:
    return np.concatenate([y.cpu().numpy() for _, y in task.eval_batches(split, 512)])


def test_validation_and_test_labels_stay_clean_under_label_noise() -> None:
    kwargs = dict(use_val=True, val_fraction=0.2, augment=False)
    clean = load_task("digits", **kwargs)
    noisy = load_task("digits", label_noise=LabelNoise("symmetric", 0.6, 11), **kwargs)
    for split in ("val", "test"):
        assert np.array_equal(_labels(clean, split), _labels(noisy, split)), split
    # the training labels are redrawn: each from its row of the matrix, by inverse CDF of one
    # uniform draw per sample (numpy's default_rng(seed), written out here)
    train_clean, train_noisy = _labels(clean, "train"), _labels(noisy, "train")
    matrix = transition_matrix("symmetric", 0.6, clean.classes)
    draws = np.random.default_rng(11).random(len(train_clean))
    expected = np.array(
        [
            np.searchsorted(np.cumsum(matrix[y]), u, side="right")
            for y, u in zip(train_clean, draws, strict=True)
        ]
    )
    assert np.array_equal(train_noisy, np.minimum(expected, len(clean.classes) - 1))
    assert noisy.label_noise_rate == pytest.approx(np.mean(train_noisy != train_clean))
    assert 0.45 < noisy.label_noise_rate < 0.65
