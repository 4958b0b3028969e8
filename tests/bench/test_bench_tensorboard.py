"""TensorBoard curves of a run, read back with TensorBoard's own reader and compared to the record."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

from podbench.engine import train_run
from podbench.runs import RunSettings, RunSpec, resolve_run
from podbench.tensorboard import RunCurves, run_log_dir

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
plugin_data_pb2 = pytest.importorskip("tensorboard.plugins.hparams.plugin_data_pb2")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(
    loss: str = "pod", epochs: int = 3, params: dict | None = None, **settings: Any
) -> RunSpec:
    base = dict(
        epochs=epochs,
        lr=0.05,
        batch_size=64,
        schedule="multistep",
        milestones=[1],
        gamma=0.5,
        device="cpu",
        limit_train=300,
        limit_eval=100,
    )
    base.update(settings)
    return resolve_run(
        RunSettings(**base),
        suite="t",
        loss=loss,
        dataset="digits",
        arch="mlp",
        seed=0,
        feat_dim=16,
        loss_params=params,
    )


def _read(folder: Path) -> Any:
    acc = event_accumulator.EventAccumulator(str(folder))
    acc.Reload()
    return acc


def _series(acc: Any, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _hparams(acc: Any) -> dict[str, Any]:
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {
        k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
        for k, v in info.hparams.items()
    }


def test_curves_equal_the_record(tmp_path: Path) -> None:
    run = _run("pod", params={"alpha": 0.02})
    folder = run_log_dir(tmp_path, run)
    record = train_run(run, tensorboard_dir=folder)
    assert record["status"] == "completed"
    assert folder == tmp_path / "tensorboard" / "pod" / f"digits-mlp-d16-seed0-{run.run_id}"
    acc = _read(folder)
    history = record["history"]
    steps = list(range(3))
    for tag, key in [
        ("train/loss", "train_loss"),
        ("accuracy/train", "train_acc"),
        ("accuracy/test", "test_acc"),
        ("lr", "lr"),
        ("seconds/epoch", "seconds"),
    ]:
        assert _series(acc, tag) == [(e, pytest.approx(history[e][key], rel=1e-6)) for e in steps]
    for part in ("nac", "sc"):
        assert _series(acc, f"train/{part}") == [
            (e, pytest.approx(history[e]["parts"][part], rel=1e-6)) for e in steps
        ]
    assert [v for _, v in _series(acc, "lr")] == pytest.approx([0.05, 0.025, 0.025])
    assert "accuracy/val" not in acc.Tags()["scalars"]
    # delta used in each epoch: delta_init first, then alpha (e + 1) x mean norm, growing
    delta = [v for _, v in _series(acc, "loss_state/delta")]
    assert delta[0] == pytest.approx(0.05) and delta[1] > 0 and delta[2] > delta[1]
    for key, value in record["geometry"].items():
        if value is None:  # not defined for this loss: no point
            continue
        assert _series(acc, f"geometry/{key}") == [(2, pytest.approx(value, rel=1e-6))]
        assert _series(acc, f"final/geometry/{key}") == [(2, pytest.approx(value, rel=1e-6))]
    assert _series(acc, "final/test_acc") == [(2, pytest.approx(record["final_test_acc"]))]
    assert _series(acc, "final/best_test_acc") == [(2, pytest.approx(record["best_test_acc"]))]
    params = _hparams(acc)
    assert params["loss"] == "pod" and params["label"] == "pod" and params["arch"] == "mlp"
    assert params["lr"] == pytest.approx(0.05) and params["feat_dim"] == 16
    assert params["loss.alpha"] == pytest.approx(0.02) and params["status"] == "completed"


def test_val_runs_and_failed_runs_write_what_they_have(tmp_path: Path) -> None:
    run = _run("softmax", epochs=1, eval_split="val")
    record = train_run(run, tensorboard_dir=run_log_dir(tmp_path, run))
    acc = _read(run_log_dir(tmp_path, run))
    assert _series(acc, "accuracy/val") == [(0, pytest.approx(record["history"][0]["val_acc"]))]
    assert "accuracy/test" not in acc.Tags()["scalars"]
    assert _series(acc, "final/val_acc") == [(0, pytest.approx(record["history"][0]["val_acc"]))]
    diverged = _run("softmax", epochs=2, lr=1e6, momentum=0.0, weight_decay=0.0)
    record = train_run(diverged, tensorboard_dir=run_log_dir(tmp_path, diverged))
    assert record["status"] == "diverged"
    assert _hparams(_read(run_log_dir(tmp_path, diverged)))["status"] == "diverged"


def test_resumed_run_has_each_epoch_once(tmp_path: Path) -> None:
    run = _run("pod", epochs=3)
    folder = run_log_dir(tmp_path, run)

    def interrupt(entry: dict[str, Any]) -> None:
        if entry["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(run, on_epoch=interrupt, checkpoint_dir=tmp_path / "ckpt", tensorboard_dir=folder)
    resumed = train_run(run, checkpoint_dir=tmp_path / "ckpt", tensorboard_dir=folder)
    assert resumed["epochs_completed"] == 3
    acc = _read(folder)  # epoch 1 was written before the interruption, and again after it
    assert _series(acc, "accuracy/test") == [
        (e, pytest.approx(resumed["history"][e]["test_acc"])) for e in range(3)
    ]


def test_a_rerun_from_an_earlier_epoch_replaces_the_later_points(tmp_path: Path) -> None:
    run = _run("softmax")
    first = RunCurves(tmp_path, run)
    for epoch in range(3):
        first.epoch({"epoch": epoch, "test_acc": 0.1 * epoch})
    first.finish({"status": "failed", "history": []})
    again = RunCurves(tmp_path, run, first_epoch=1)  # resumed from the checkpoint of epoch 0
    for epoch in (1, 2):
        again.epoch({"epoch": epoch, "test_acc": 0.5 + epoch})
    again.finish({"status": "completed", "history": []})
    assert _series(_read(tmp_path), "accuracy/test") == [
        (0, pytest.approx(0.0)),
        (1, pytest.approx(1.5)),
        (2, pytest.approx(2.5)),
    ]


def test_curves_that_cannot_be_written_never_fail_the_run(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the run's folder would be")
    run = _run("softmax", epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = train_run(run, tensorboard_dir=blocker)
    assert record["status"] == "completed"
    assert any("TensorBoard" in str(w.message) for w in caught)


def test_probe_values_are_curves_and_final_metrics(tmp_path: Path) -> None:
    run = _run("softmax", epochs=2, evaluate=["calibration"])
    record = train_run(run, tensorboard_dir=run_log_dir(tmp_path, run))
    assert record["status"] == "completed", record["error"]
    acc = _read(run_log_dir(tmp_path, run))
    calibration = record["evaluation"]["calibration"]
    for metric in ("ece", "acc", "nll"):
        assert _series(acc, f"evaluation/calibration/{metric}") == [
            (1, pytest.approx(calibration[metric], rel=1e-6))
        ]
        assert _series(acc, f"final/evaluation/calibration/{metric}") == [
            (1, pytest.approx(calibration[metric], rel=1e-6))
        ]
