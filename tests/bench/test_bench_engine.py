"""The training engine in-process: determinism, hooks, failures, divergence, options, checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from podbench.engine import train_run
from podbench.geometry import GEOMETRY_KEYS
from podbench.runs import RunSettings, RunSpec, resolve_run

pytestmark = pytest.mark.usefixtures("one_thread_and_test_plugins")


def _run(
    loss: str = "softmax",
    arch: str = "mlp",
    seed: int = 0,
    params: dict | None = None,
    **settings: Any,
) -> RunSpec:
    base = dict(
        epochs=2,
        lr=0.05,
        batch_size=64,
        schedule="constant",
        device="cpu",
        limit_train=400,
        limit_eval=200,
    )
    base.update(settings)
    return resolve_run(
        RunSettings(**base),
        suite="t",
        loss=loss,
        dataset="digits",
        arch=arch,
        seed=seed,
        feat_dim=16,
        loss_params=params,
    )


def test_record_schema_and_determinism() -> None:
    first = train_run(_run("pod"))
    again = train_run(_run("pod"))
    other = train_run(_run("pod", seed=1))
    assert first["status"] == "completed", first["error"]
    json.dumps(first, allow_nan=False)  # strict JSON
    assert first["epochs_completed"] == 2 and [h["epoch"] for h in first["history"]] == [0, 1]
    assert set(first["history"][0]["parts"]) == {"nac", "sc"}
    for key in ("train_loss", "train_acc", "test_acc"):
        assert [h[key] for h in first["history"]] == [h[key] for h in again["history"]]
    assert first["geometry"] == again["geometry"]
    assert first["history"][-1]["train_loss"] != other["history"][-1]["train_loss"]
    assert first["final_test_acc"] == first["history"][-1]["test_acc"]
    assert first["best_test_acc"] == max(h["test_acc"] for h in first["history"])
    assert 0.0 <= first["final_test_acc"] <= 1.0
    assert first["images_per_s"] > 0 and first["wall_time_s"] > 0
    assert first["env"]["torch"] == torch.__version__ and first["env"]["device"] == "cpu"
    assert len(first["env"]["git_commit"] or "0" * 40) == 40
    assert first["spec"]["seed"] == 0 and first["run_id"] == _run("pod").run_id
    assert not torch.are_deterministic_algorithms_enabled()  # the run's setting did not leak
    assert set(first["geometry"]) == set(GEOMETRY_KEYS)
    assert all(isinstance(v, float) for v in first["geometry"].values())


def test_plugin_exception_is_recorded_as_failed_with_traceback() -> None:
    record = train_run(_run("test-raising"))
    assert record["status"] == "failed"
    assert record["error"]["type"] == "RuntimeError"
    assert "deliberate plugin failure" in record["error"]["message"]
    assert "compute_loss" in record["error"]["traceback"]
    assert record["error"]["epoch"] == 0 and record["epochs_completed"] == 0


def test_nan_loss_is_recorded_as_diverged_with_its_epoch() -> None:
    record = train_run(_run("test-nan", params={"at_epoch": 1}, epochs=3))
    assert record["status"] == "diverged"
    assert record["error"]["epoch"] == 1
    assert record["epochs_completed"] == 1  # epoch 0 finished and is kept
    assert record["final_test_acc"] == record["history"][0]["test_acc"]
    json.dumps(record, allow_nan=False)


def test_absurd_learning_rate_diverges() -> None:
    record = train_run(_run(lr=1e6, momentum=0.0, weight_decay=0.0))
    assert record["status"] == "diverged" and record["error"]["epoch"] == 0


def test_updates_per_batch_calls_each_step(monkeypatch: pytest.MonkeyPatch) -> None:
    from podbench.losses import loss_info

    cls = loss_info("cot").cls
    assert cls.updates_per_batch == 2
    steps: list[int] = []
    original = cls.update_loss

    def spy(self, features, targets, step):  # type: ignore[no-untyped-def]
        steps.append(step)
        return original(self, features, targets, step)

    monkeypatch.setattr(cls, "update_loss", spy)
    record = train_run(_run("cot", epochs=1, batch_size=100))
    assert record["status"] == "completed", record["error"]
    assert steps == [0, 1] * 4  # 400 samples / 100 per batch = 4 batches, two updates each


def test_grad_clip_bounds_the_first_sgd_step(tmp_path: Path) -> None:
    from podbench.losses import create_loss
    from podbench.tasks import create_arch, dataset_info

    run = _run(
        epochs=1,
        max_steps=1,
        lr=1.0,
        momentum=0.0,
        weight_decay=0.0,
        grad_clip=1e-3,
        checkpoint=True,
    )
    record = train_run(run, checkpoint_dir=tmp_path)
    assert record["status"] == "completed", record["error"]
    info = dataset_info("digits")
    torch.manual_seed(0)  # the engine seeds the same way before building each part
    model = create_arch("mlp", in_channels=info.channels, image_size=info.image_size, feat_dim=16)
    torch.manual_seed(0)
    plugin = create_loss("softmax", num_classes=info.num_classes, feat_dim=16)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    moved = 0.0
    for before, after in (
        (model.state_dict(), state["model"]),
        (plugin.state_dict(), state["plugin"]),
    ):
        for key, value in before.items():
            if value.is_floating_point() and "running" not in key:
                moved += float((after[key] - value).pow(2).sum())
    # one SGD step of lr 1 moves the weights by exactly the clipped gradient norm
    assert math.sqrt(moved) == pytest.approx(1e-3, rel=1e-3)


def test_pedcc_batchnorm_statistics_move_once_per_training_batch(tmp_path: Path) -> None:
    """Training accuracy (predict on each batch) must not update PEDCC's BatchNorm statistics."""
    import numpy as np
    from engine_test_plugins import RecordingPEDCCLoss

    RecordingPEDCCLoss.recorded.clear()
    run = _run("test-pedcc-recording", epochs=2, checkpoint=True)  # 2 x 7 batches (last: 16)
    record = train_run(run, checkpoint_dir=tmp_path)
    assert record["status"] == "completed", record["error"]
    batches = [f.double().numpy() for f in RecordingPEDCCLoss.recorded]
    assert len(batches) == 14
    # BatchNorm1d(momentum 0.1) written out: one update per batch, unbiased batch variance
    mean, var = np.zeros(16), np.ones(16)
    for f in batches:
        mean = 0.9 * mean + 0.1 * f.mean(axis=0)
        var = 0.9 * var + 0.1 * f.var(axis=0, ddof=1)
    state = torch.load(tmp_path / "last.pt", weights_only=True)["plugin"]
    assert int(state["bn.num_batches_tracked"]) == len(batches)
    np.testing.assert_allclose(
        state["bn.running_mean"].double().numpy(), mean, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(state["bn.running_var"].double().numpy(), var, rtol=1e-5, atol=1e-6)


def test_multistep_schedule_lr_per_epoch() -> None:
    record = train_run(
        _run(epochs=4, schedule="multistep", milestones=[1, 3], lr=0.1, gamma=0.5, max_steps=1)
    )
    assert [h["lr"] for h in record["history"]] == pytest.approx([0.1, 0.05, 0.05, 0.025])


def test_checkpoint_resume_reproduces_uninterrupted_run(tmp_path: Path) -> None:
    run = _run("pod", epochs=3, schedule="cosine", checkpoint=True)
    straight = train_run(run)

    def interrupt(entry: dict) -> None:
        if entry["epoch"] == 1:
            raise KeyboardInterrupt  # as if the worker were stopped after epoch 1

    with pytest.raises(KeyboardInterrupt):
        train_run(run, on_epoch=interrupt, checkpoint_dir=tmp_path)
    resumed = train_run(run, checkpoint_dir=tmp_path)
    assert resumed["status"] == "completed"
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    for key in ("train_loss", "test_acc", "lr"):
        assert [h[key] for h in resumed["history"]] == pytest.approx(
            [h[key] for h in straight["history"]]
        )
    assert resumed["geometry"] == pytest.approx(straight["geometry"])


@pytest.mark.parametrize(
    "options",
    [{"amp": "bf16"}, {"amp": "fp16"}, {"channels_last": True, "amp": "bf16", "grad_clip": 1.0}],
)
def test_amp_and_channels_last_train_on_cpu(options: dict) -> None:
    record = train_run(_run("pod", arch="small-cnn", epochs=1, **options))
    assert record["status"] == "completed", record["error"]
    assert record["final_test_acc"] > 0.15  # above chance (0.1) after one epoch


def test_compile_option_compiles_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[Any] = []

    def fake_compile(module, *args, **kwargs):  # type: ignore[no-untyped-def]
        compiled.append(module)  # inductor takes ~80 s on this CPU; the wiring is what we test
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    record = train_run(_run(epochs=1, compile=True))
    assert record["status"] == "completed"
    assert len(compiled) == 1 and isinstance(compiled[0], torch.nn.Module)


def test_compiled_run_checkpoints_the_uncompiled_network(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from podbench.tasks import create_arch

    real_compile = torch.compile
    # a real dynamo wrapper (its state_dict keys gain "_orig_mod."), without inductor's ~80 s
    monkeypatch.setattr(
        torch, "compile", lambda module, **kw: real_compile(module, backend="eager")
    )
    record = train_run(
        _run(epochs=1, compile=True, channels_last=True, checkpoint=True), checkpoint_dir=tmp_path
    )
    assert record["status"] == "completed", record["error"]
    saved = torch.load(tmp_path / "last.pt", weights_only=True)["model"]
    fresh = create_arch("mlp", in_channels=1, image_size=8, feat_dim=16).state_dict()
    assert list(saved) == list(fresh)  # loadable into the plain network, e.g. on resume


def test_val_split_never_reports_test_accuracy() -> None:
    record = train_run(_run(eval_split="val", epochs=1))
    entry = record["history"][0]
    assert entry["test_acc"] is None and 0.0 <= entry["val_acc"] <= 1.0
    assert record["final_test_acc"] is None


def test_missing_data_is_a_failed_record_naming_the_fix(tmp_path: Path) -> None:
    spec = _run().model_copy(update={"dataset": "fashion-mnist", "data_root": str(tmp_path)})
    record = train_run(spec)
    assert record["status"] == "failed"
    assert record["error"]["type"] == "UserError"
