"""The engine's fast-path hooks: data-dependent initialisation, compile once per process, warm-up."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from podbench.compiled import warm_up
from podbench.engine import train_run
from podbench.factory import warm_up_shapes
from podbench.loop import Trainer
from podbench.runs import RunSettings, RunSpec, resolve_run
from podbench.suite_spec import load_suite
from podbench.tasks import load_task, register_arch
from podbench.tasks.archs import ARCHS
from podbench.tasks.fastnet import patch_covariance, whitening_filters


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(arch: str = "mlp", dataset: str = "digits", seed: int = 0, **settings: Any) -> RunSpec:
    base = dict(
        epochs=1,
        lr=0.05,
        batch_size=64,
        schedule="constant",
        device="cpu",
        limit_train=300,
        limit_eval=100,
    )
    base.update(settings)
    return resolve_run(
        RunSettings(**base),
        suite="t",
        loss="softmax",
        dataset=dataset,
        arch=arch,
        seed=seed,
        feat_dim=8,
    )


class _Recorder(nn.Module):
    """A backbone that records its data-init calls and forward calls, in order."""

    events: list[tuple[str, torch.Tensor | None]] = []
    init_samples = 50

    def __init__(self, inputs: int) -> None:
        super().__init__()
        self.lin = nn.Linear(inputs, 8)

    def init_from_data(self, images: torch.Tensor) -> None:
        _Recorder.events.append(("init", images.clone()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _Recorder.events.append(("forward", None))
        return self.lin(torch.flatten(x, 1))


@pytest.fixture
def recorder_arch() -> Iterator[str]:
    with ARCHS.scratch():

        @register_arch("test-recorder", description="records init_from_data")
        def _build(in_channels: int, image_size: int) -> tuple[nn.Module, int]:
            return _Recorder(in_channels * image_size * image_size), 8

        _Recorder.events = []
        yield "test-recorder"


def test_data_init_hook_runs_once_before_training_on_training_images_only(
    recorder_arch: str,
) -> None:
    run = _run(arch=recorder_arch, eval_split="val", limit_train=None, limit_eval=None, seed=3)
    record = train_run(run)
    assert record["status"] == "completed", record["error"]
    kinds = [kind for kind, _ in _Recorder.events]
    assert kinds[0] == "init" and kinds.count("init") == 1 and kinds[1] == "forward"
    images = _Recorder.events[0][1]
    assert images is not None and images.shape == (50, 1, 8, 8)
    # the first images of the training split without the validation images, unaugmented (as
    # airbench's whitening takes its first 5,000)
    task = load_task("digits", use_val=True, split_seed=run.split_seed, val_fraction=0.1)
    first, _ = next(task.eval_batches("train", 50))
    torch.testing.assert_close(images, first)
    val = torch.cat([x for x, _ in task.eval_batches("val", 500)])
    assert not any(torch.equal(img, v) for img in images for v in val)


def test_fastnet_whitening_comes_from_the_first_training_images() -> None:
    run = _run(arch="fastnet", dataset="synthetic", limit_train=None, limit_eval=None)
    trainer = Trainer.of_run(run)
    task = load_task("synthetic", augment=False)
    images = task._data["train"][0].double()  # the whole 512-image split, as stored
    images = (images / 255 - 0.5) / 0.25  # normalised by the dataset's mean and std
    expected = whitening_filters(patch_covariance(images.double(), 2), 3, 2)
    got = trainer.parts.model.backbone.whiten.weight
    torch.testing.assert_close(got, expected.float(), rtol=1e-4, atol=1e-4)


def test_fast_suite_preset_runs_each_loss_on_synthetic_data() -> None:
    smoke = [
        "epochs=1",
        "max_steps=2",
        "batch_size=32",
        "limit_eval=64",
        "seeds=[0]",
        "device=cpu",
        "gpus=0",
        "cpus=1",
        "datasets=[synthetic]",
        "amp='off'",
    ]
    runs = load_suite("fast-cifar10", smoke).expand()
    assert {r.arch for r in runs} == {"fastnet"} and len(runs) == 3
    assert all(r.nesterov and r.lr == 1.5 and r.schedule == "triangular" for r in runs)
    for run in runs:
        record = train_run(run)
        assert record["status"] == "completed", (run.label, record["error"])


def _counting_compile(monkeypatch: pytest.MonkeyPatch, delay: float = 0.0) -> list[int]:
    """torch.compile with a backend that counts (and optionally slows) compilations."""
    calls: list[int] = []
    real_compile = torch.compile

    def backend(gm: torch.fx.GraphModule, example_inputs: list) -> Any:
        calls.append(len(example_inputs))
        time.sleep(delay)
        return gm.forward

    def fake(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return real_compile(model, backend=backend)

    monkeypatch.setattr(torch, "compile", fake)
    torch._dynamo.reset()
    return calls


def test_compile_is_paid_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._inductor.config as inductor_config

    calls = _counting_compile(monkeypatch)
    monkeypatch.setattr(inductor_config, "compile_threads", 32)  # as if the host had 32 cores
    first = train_run(_run(compile=True, seed=0))
    assert inductor_config.compile_threads == 1  # the run's one CPU, not the host's cores
    compiled_first = len(calls)
    assert first["status"] == "completed", first["error"]
    assert compiled_first >= 2  # training and evaluation graphs
    second = train_run(_run(compile=True, seed=1))
    assert second["status"] == "completed" and len(calls) == compiled_first  # nothing recompiled
    # compiled with an eager backend, the run is the run without compile
    plain = train_run(_run(seed=1))
    assert [h["test_acc"] for h in second["history"]] == [h["test_acc"] for h in plain["history"]]
    assert second["history"][0]["train_loss"] == pytest.approx(
        plain["history"][0]["train_loss"], rel=1e-5
    )


def test_compile_time_is_not_training_time(monkeypatch: pytest.MonkeyPatch) -> None:
    delay = 1.0
    calls = _counting_compile(monkeypatch, delay=delay)
    record = train_run(_run(compile=True, epochs=2))
    assert record["status"] == "completed", record["error"]
    compile_seconds = delay * len(calls)
    assert len(calls) >= 2 and record["wall_time_s"] >= compile_seconds
    train_images = 300 * 2
    train_seconds = train_images / record["images_per_s"]
    assert train_seconds < delay  # every compilation happened in the warm-up, before the clock


def test_warm_up_leaves_weights_statistics_and_random_state_alone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 8, 8))  # materialise the lazy layer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    seen: list[tuple[bool, tuple[int, ...], bool]] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen.append(
            (model.training, tuple(x.shape), x.is_contiguous(memory_format=torch.channels_last))
        )
        return model(x + 1.0)  # non-zero input: BN statistics would move if not restored

    warm_up(
        model,
        forward,
        [(True, (5, 3, 8, 8)), (False, (3, 3, 8, 8))],
        lambda: torch.autocast("cpu", dtype=torch.bfloat16),
        memory_format=torch.channels_last,
    )
    assert seen == [(True, (5, 3, 8, 8), True), (False, (3, 3, 8, 8), True)]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in model.parameters()) and model.training


def test_warm_up_shapes_cover_every_batch_of_the_run() -> None:
    run = _run(limit_train=300, limit_eval=100, batch_size=64)
    task = Trainer.of_run(run).parts.task
    # 300 = 4 x 64 + 44 training images; 100 = 64 + 36 test images
    assert warm_up_shapes(run, task) == [
        (True, (44, 1, 8, 8)),
        (True, (64, 1, 8, 8)),
        (False, (36, 1, 8, 8)),
        (False, (64, 1, 8, 8)),
    ]
