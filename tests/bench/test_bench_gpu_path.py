"""The engine's GPU path, checked without a GPU: host syncs per step, float32 features under AMP,
bf16 and TF32 choices, data loaded once, channels-last batches without a copy."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

import podbench.engine as engine
import podbench.layout as layout
import podbench.tasks
from podbench import factory, runtime
from podbench.errors import UserError
from podbench.loop import Trainer
from podbench.losses import loss_info
from podbench.losses.testing import count_host_syncs
from podbench.runs import RunSettings, RunSpec, resolve_run
from podbench.tasks import dataset_info
from podbench.tasks.datasets import stream_threshold

BUILT_IN_LOSSES = [
    "arcface",
    "center",
    "cosface",
    "cot",
    "l-softmax",
    "label-smoothing",
    "pedcc",
    "pod",
    "softmax",
    "sphereface",
]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(
    loss: str = "softmax", dataset: str = "digits", arch: str = "mlp", **settings: Any
) -> RunSpec:
    base = dict(
        epochs=2,
        lr=0.05,
        batch_size=8,
        schedule="constant",
        device="cpu",
        limit_train=400,
        limit_eval=40,
    )
    base.update(settings)
    return resolve_run(
        RunSettings(**base), suite="t", loss=loss, dataset=dataset, arch=arch, seed=0, feat_dim=16
    )


def _syncs_per_phase(run: RunSpec, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """Host syncs of each training epoch and each evaluation of a run."""
    counts: dict[str, list[int]] = {"train": [], "eval": []}
    calls: list[str] = []
    for phase, name in (("train", "train_epoch"), ("eval", "evaluate")):
        original = getattr(Trainer, name)

        def counted(
            self: Any, *args: Any, _orig: Any = original, _phase: str = phase, **kwargs: Any
        ) -> Any:
            with count_host_syncs() as syncs:
                out = _orig(self, *args, **kwargs)
            counts[_phase].append(syncs.count)
            calls.extend(syncs.calls)
            return out

        monkeypatch.setattr(Trainer, name, counted)
    record = engine.train_run(run)
    assert record["status"] == "completed", record["error"]
    monkeypatch.undo()
    counts["calls"] = calls  # type: ignore[assignment]
    return counts


# The budget: no host sync per training step. Per training epoch at most 3 (the engine's one
# read of the epoch's sums; the plugin's epoch hooks: POD reads its delta statistic, 2), plus,
# in the run's first epoch, the plugin's input checks of the first batch (one read per update
# and one for the accuracy's predict). Per evaluation one read, three at the last epoch (the
# features and labels for the geometry).
EPOCH_BUDGET = 3
EVAL_BUDGET = [1, 3]


@pytest.mark.parametrize("loss", BUILT_IN_LOSSES)
def test_no_host_sync_per_training_step(loss: str, monkeypatch: pytest.MonkeyPatch) -> None:
    many = _syncs_per_phase(_run(loss, max_steps=50), monkeypatch)
    few = _syncs_per_phase(_run(loss, max_steps=10), monkeypatch)
    # 50 steps an epoch cost what 10 do: nothing per step
    assert many["train"] == few["train"] and many["eval"] == few["eval"], many["calls"]
    first_batch = loss_info(loss).updates_per_batch + 1
    first, second = many["train"]
    assert first - second == first_batch, many["calls"]
    assert second <= EPOCH_BUDGET, many["calls"]
    assert many["eval"] == EVAL_BUDGET, many["calls"]


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
@pytest.mark.parametrize("loss", ["softmax", "cot"])
def test_no_host_sync_per_step_under_amp(
    loss: str, amp: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fp16: the loss scaler's inf check stays on the device (a fused optimiser skips the step)
    many = _syncs_per_phase(_run(loss, amp=amp, max_steps=30, epochs=1), monkeypatch)
    few = _syncs_per_phase(_run(loss, amp=amp, max_steps=5, epochs=1), monkeypatch)
    assert many["train"] == few["train"] and many["train"][0] <= EPOCH_BUDGET + 3, many["calls"]


def test_a_nan_loss_is_caught_within_the_epoch_without_waiting() -> None:
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        importlib.import_module("engine_test_plugins")
    finally:
        sys.path.pop(0)
    record = engine.train_run(_run("test-nan", max_steps=50, epochs=1))
    assert record["status"] == "diverged"
    # the first check folds batches 0..24 in; on the CPU its copy has arrived at once
    assert "by batch 24 of epoch 0" in record["error"]["message"]


def test_latent_features_are_float32_under_autocast() -> None:
    torch.manual_seed(0)
    run = _run(
        "pod",
        dataset="synthetic",
        arch="small-cnn",
        amp="bf16",
        limit_train=16,
        limit_eval=16,
        batch_size=16,
    )
    trainer = Trainer.of_run(run)
    x, _ = next(trainer.parts.task.train_batches(16, seed=0, epoch=0))
    model = trainer.parts.model
    with trainer.policy.autocast():
        features = trainer.forward(x)
        hidden = torch.flatten(model.backbone(x), 1)  # the backbone still runs in bf16
    assert hidden.dtype == torch.bfloat16 and features.dtype == torch.float32
    # the projection by hand, in float64, of the bf16 backbone output
    expected = hidden.double() @ model.proj.weight.double().T + model.proj.bias.double()
    error = (features.double() - expected).abs().max()
    rounding = (expected.to(torch.bfloat16).double() - expected).abs().max()
    assert error < 1e-5 * expected.abs().max()
    assert rounding > 100 * error  # what the features lost when autocast rounded them to bf16


def test_bf16_on_a_gpu_without_it_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda")
    supported = {"value": False}
    asked: list[bool] = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return supported["value"]

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    with pytest.raises(UserError) as err:
        runtime.check_amp("bf16", cuda)
    message = str(err.value)
    assert message.startswith("amp: bf16") and "Tesla V100" in message
    assert "amp: fp16" in message and message.count(".") == 2  # one sentence (and "8.0")
    assert asked == [False]  # emulated bf16 does not count as support
    runtime.check_amp("fp16", cuda)
    runtime.check_amp("off", cuda)
    runtime.check_amp("bf16", torch.device("cpu"))  # CPU autocast has bf16
    supported["value"] = True
    runtime.check_amp("bf16", cuda)


def test_bf16_refusal_is_the_runs_failed_record(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(podbench.tasks, "resolve_device", lambda requested: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    record = engine.train_run(_run(amp="bf16", device="auto"))
    assert record["status"] == "failed" and record["error"]["type"] == "UserError"
    assert "Tesla T4 has none; set amp: fp16 or amp: off" in record["error"]["message"]


@pytest.fixture
def _restore_precision() -> Iterator[None]:
    saved = (
        torch.get_float32_matmul_precision(),
        torch.backends.cudnn.allow_tf32,
        torch.are_deterministic_algorithms_enabled(),
    )
    yield
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cudnn.allow_tf32 = saved[1]
    torch.use_deterministic_algorithms(saved[2])


def _torch_settings() -> tuple[Any, ...]:
    return (
        torch.get_num_threads(),
        torch.get_float32_matmul_precision(),
        torch.backends.cudnn.allow_tf32,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )


@pytest.mark.usefixtures("_restore_precision")
@pytest.mark.parametrize(
    ("device", "amp", "deterministic", "tf32"),
    [
        ("cuda", "off", False, True),
        ("cuda", "bf16", False, False),
        ("cuda", "fp16", False, False),
        ("cpu", "off", False, False),
        ("cuda", "off", True, False),
    ],
)
def test_tf32_for_float32_runs_on_cuda_unless_deterministic(
    monkeypatch: pytest.MonkeyPatch, device: str, amp: str, deterministic: bool, tf32: bool
) -> None:
    monkeypatch.setattr(podbench.tasks, "resolve_device", lambda requested: torch.device(device))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    torch.set_float32_matmul_precision("medium")
    torch.use_deterministic_algorithms(not deterministic)
    before = _torch_settings()
    run = _run(amp=amp, deterministic=deterministic, device="auto")
    with runtime.runtime_policy(run) as policy:
        assert policy.tf32 is tf32
        assert torch.get_float32_matmul_precision() == ("high" if tf32 else "highest")
        assert torch.backends.cudnn.allow_tf32 is tf32
        assert torch.are_deterministic_algorithms_enabled() is deterministic
        assert torch.backends.cudnn.benchmark is not deterministic
        torch.set_num_threads(before[0] + 1)  # what a plugin might change as well
    assert _torch_settings() == before


def test_a_trainer_built_for_a_test_changes_no_torch_setting() -> None:
    before = _torch_settings()
    trainer = Trainer.of_run(_run(deterministic=True, epochs=1, max_steps=2))
    trainer.train_epoch(0)
    assert _torch_settings() == before


@pytest.mark.usefixtures("_restore_precision")
def test_tf32_is_recorded_and_does_not_outlive_the_run() -> None:
    torch.set_float32_matmul_precision("medium")
    record = engine.train_run(_run(epochs=1, max_steps=2))
    assert record["env"]["tf32"] is False  # the CPU has no TF32
    assert torch.get_float32_matmul_precision() == "medium"


def test_stream_budget_is_the_runs_share_of_a_gpu() -> None:
    cuda = torch.device("cuda")
    assert factory.stream_budget(0.25, cuda) == stream_threshold() // 4
    assert factory.stream_budget(1.0, cuda) is None
    assert factory.stream_budget(0.5, torch.device("cpu")) is None


@pytest.mark.parametrize(("limit_eval", "tested"), [(40, 40), (None, 360)])
def test_each_split_is_loaded_once(limit_eval: int | None, tested: int) -> None:
    info = dataset_info("digits")
    assert info.test_size == 360
    trainer = Trainer.of_run(_run(limit_train=400, limit_eval=limit_eval))
    assert not hasattr(trainer, "eval_task")
    assert trainer.parts.task.num_samples("train") == 400
    assert trainer.parts.task.num_samples("test") == tested
    per_sample = info.channels * info.image_size**2 + 8  # uint8 pixels and an int64 label
    assert trainer.parts.task.data_bytes == (400 + tested) * per_sample


def test_channels_last_batches_reach_the_network_without_a_copy() -> None:
    trainer = Trainer.of_run(
        _run(dataset="synthetic", arch="small-cnn", channels_last=True, limit_train=32, max_steps=3)
    )
    yielded: list[int] = []
    seen: list[tuple[int, bool]] = []
    batches = trainer.parts.task.train_batches

    def recording(*args: Any, **kwargs: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in batches(*args, **kwargs):
            yielded.append(x.data_ptr())
            yield x, y

    trainer.parts.task.train_batches = recording  # type: ignore[method-assign]
    trainer.parts.model.register_forward_pre_hook(
        lambda module, args: seen.append(
            (args[0].data_ptr(), args[0].is_contiguous(memory_format=torch.channels_last))
        )
    )
    trainer.train_epoch(0)
    assert len(yielded) == 3 and [ptr for ptr, _ in seen] == yielded  # the task's own tensors
    assert all(last for _, last in seen)


@pytest.mark.parametrize(
    ("setting", "device", "used"),
    [("auto", "cuda", True), (True, "cpu", True), (False, "cuda", False), (False, "cpu", False)],
)
def test_channels_last_as_set_and_auto_on_cuda_need_no_probe(
    setting: Any, device: str, used: bool
) -> None:
    run = _run(dataset="synthetic", arch="small-cnn", channels_last=setting)
    choice = layout.layout_of_run(run, torch.device(device), None)
    assert choice.channels_last is used and choice.probe_record() is None


def test_channels_last_default_is_auto_recorded_and_not_in_the_run_id() -> None:
    run = _run(dataset="synthetic", arch="small-cnn", limit_train=32, max_steps=1, epochs=1)
    assert run.channels_last == "auto"
    ids = {run.model_copy(update={"channels_last": v}).run_id for v in ("auto", True, False)}
    assert ids == {run.run_id}  # a layout, not a result: finished runs keep their ids
    record = engine.train_run(run)
    assert record["status"] == "completed", record["error"]
    probe = record["env"]["channels_last_probe"]  # auto on the CPU: the probe decided
    faster = probe["channels_last_s"] < (1 - layout.PROBE_MARGIN) * probe["contiguous_s"]
    assert record["env"]["channels_last"] is faster
    record = engine.train_run(run.model_copy(update={"channels_last": True}))
    assert record["env"]["channels_last"] is True and record["env"]["channels_last_probe"] is None
