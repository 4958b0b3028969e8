"""Runs get what Ray gives them: the device, packed GPUs, memory freed after a run, a CPU share.

No GPU is needed: the embedded Ray is given declared GPUs (``num_gpus``), and
``torch.cuda.is_available`` is patched inside the trials that must believe one is there.
"""

from __future__ import annotations

import gc
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from podbench import checkpoints, engine, executor, ray_cluster, worker
from podbench.errors import UserError
from podbench.loop import Trainer
from podbench.runs import RunSettings, RunSpec, resolve_run
from podbench.suite_spec import load_suite

HERE = Path(__file__).resolve().parent


pytestmark = pytest.mark.usefixtures("one_thread_and_test_plugins")


def _run(loss: str = "softmax", seed: int = 0, **settings: Any) -> RunSpec:
    base = dict(
        epochs=1,
        lr=0.05,
        batch_size=64,
        schedule="constant",
        limit_train=256,
        limit_eval=128,
        imports=["engine_test_plugins"],
    )
    base.update(settings)
    return resolve_run(
        RunSettings(**base),
        suite="sched",
        loss=loss,
        dataset="digits",
        arch="mlp",
        seed=seed,
        feat_dim=16,
    )


# ---------------------------------------------------------------------------- suite fields

SUITE = {
    "name": "gpus",
    "losses": ["softmax"],
    "datasets": ["digits"],
    "archs": ["mlp"],
    "feat_dim": 16,
    "epochs": 1,
}


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (
            ["gpus=1.5"],
            "field 'gpus': a run trains on one GPU, so 1.5 GPUs would leave the rest idle",
        ),
        (["gpus=2"], "so 2 GPUs would leave the rest idle; use 1, or a fraction such as 0.25"),
        (["device=cpu", "gpus=1"], "gpus: 1 with device: cpu reserves a GPU the run never uses"),
        (["device=cuda"], "device: cuda needs gpus > 0"),
    ],
)
def test_gpu_values_a_run_cannot_use_are_refused(
    tmp_path: Path, overrides: list[str], says: str
) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(SUITE))
    with pytest.raises(UserError) as err:
        load_suite(path, overrides)
    assert says in str(err.value) and str(err.value).count(". ") == 0  # one sentence


@pytest.mark.parametrize(
    "overrides",
    [[], ["gpus=0.25"], ["gpus=0.5"], ["gpus=1"], ["device=cuda", "gpus=0.3"], ["device=cpu"]],
)
def test_gpu_values_a_run_uses_are_accepted(tmp_path: Path, overrides: list[str]) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(SUITE))
    (run,) = load_suite(path, overrides).expand()
    assert run.gpus == float(next((o.split("=")[1] for o in overrides if o.startswith("gpus")), 0))


# ---------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("deterministic", [True, False])
def test_deterministic_setting_is_applied_and_recorded(deterministic: bool) -> None:
    from engine_test_plugins import FlagsLoss

    FlagsLoss.seen.clear()
    before = (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
    )
    record = engine.train_run(_run("test-flags", device="cpu", deterministic=deterministic))
    assert record["status"] == "completed", record["error"]
    # (cudnn.benchmark, cudnn.deterministic, deterministic algorithms) while it trained
    expected = (False, True, True) if deterministic else (True, False, False)
    assert FlagsLoss.seen and set(FlagsLoss.seen) == {expected}
    assert record["spec"]["deterministic"] is deterministic
    assert record["env"]["deterministic"] is deterministic
    after = (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
    )
    assert after == before  # the next run in this process starts from the same flags


@pytest.mark.parametrize("deterministic", [True, False])
def test_ops_without_a_deterministic_kernel_are_recorded(deterministic: bool) -> None:
    # torch only warns for them (a deterministic ResNet run on CUDA would otherwise fail in
    # adaptive pooling's backward); the warning sits in a Ray worker's log, so the record says it
    with pytest.warns(UserWarning, match="a plugin's own warning"):  # other warnings pass through
        record = engine.train_run(
            _run("test-nondeterministic", device="cpu", deterministic=deterministic)
        )
    assert record["status"] == "completed", record["error"]
    assert record["env"]["nondeterministic_ops"] == (["put_"] if deterministic else None)
    record = engine.train_run(_run("test-flags", device="cpu", deterministic=True))
    assert record["env"]["nondeterministic_ops"] == []  # softmax alone has none


def test_checkpoints_keep_the_gpu_random_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu_state = torch.arange(16, dtype=torch.uint8)
    restored: list[tuple[torch.Tensor, torch.device]] = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": gpu_state.clone())
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append((state, device))
    )
    cuda = torch.device("cuda")
    states = checkpoints.rng_states(cuda)
    assert torch.equal(states["cuda"], gpu_state) and torch.equal(
        states["cpu"], torch.get_rng_state()
    )
    checkpoints.restore_rng_states(states, cuda)
    assert len(restored) == 1 and torch.equal(restored[0][0], gpu_state) and restored[0][1] == cuda
    checkpoints.restore_rng_states(states, torch.device("cpu"))  # a CPU run leaves the GPU's alone
    assert len(restored) == 1
    assert "cuda" not in checkpoints.rng_states(torch.device("cpu"))

    # what a checkpoint holds, and that a run resumes from the one after its first epoch
    run = _run(device="cpu", epochs=2, checkpoint=True)
    engine.train_run(run, checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / checkpoints.CHECKPOINT_NAME, weights_only=True)
    assert set(state["rng"]) == {"cpu"} and state["epoch"] == 1
    state["epoch"], state["history"] = 0, state["history"][:1]
    torch.save(state, tmp_path / checkpoints.CHECKPOINT_NAME)
    resumed = engine.train_run(run, checkpoint_dir=tmp_path)
    assert resumed["status"] == "completed" and resumed["epochs_completed"] == 2


# ---------------------------------------------------------------------------- the CPU share


def _image_folder(root: Path) -> Path:
    from PIL import Image

    for split, count in (("train", 6), ("test", 3)):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                shade = 40 + 150 * (label == "b") + i
                Image.new("RGB", (8, 8), (shade, shade, shade)).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize(("cpus", "workers"), [(0.5, 0), (1, 1), (2, 2), (16, 8)])
def test_streamed_data_loader_workers_stay_within_the_cpu_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpus: float, workers: int
) -> None:
    monkeypatch.setenv("PODBENCH_STREAM_BYTES", "1")  # stream even these few images
    root = _image_folder(tmp_path / "images")
    run = resolve_run(
        RunSettings(
            epochs=1, batch_size=4, device="cpu", cpus=cpus, limit_eval=4, data_root=str(root)
        ),
        suite="s",
        loss="softmax",
        dataset="imagefolder",
        arch="mlp",
        seed=0,
        feat_dim=8,
    )
    trainer = Trainer.of_run(run)
    try:
        task = trainer.parts.task
        assert type(task).__name__ == "StreamingTask" and task.workers == workers
    finally:
        trainer.parts.task.close()


# ---------------------------------------------------------------------------- after a run


def test_a_finished_run_is_freed_before_the_next() -> None:
    from engine_test_plugins import TrackedLoss

    TrackedLoss.instances.clear()
    gc.collect()
    gc.disable()  # only an explicit collection may free what a reference cycle holds
    try:
        # a plugin in a reference cycle outlives its run ...
        assert engine.train_run(_run("test-tracked", device="cpu"))["status"] == "completed"
        assert TrackedLoss.instances[-1]() is not None
        gc.collect()
        assert TrackedLoss.instances[-1]() is None
        # ... unless the worker frees it before it takes the next run
        record = worker.train_in_worker(_run("test-tracked", device="cpu"))
        assert record["status"] == "completed" and len(TrackedLoss.instances) == 2
        assert TrackedLoss.instances[-1]() is None
    finally:
        gc.enable()


def test_release_empties_the_gpu_cache_when_cuda_was_used(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append("collect") or 0)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    worker._release_memory()
    assert calls == ["collect"]  # a CPU-only worker never touches CUDA
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    worker._release_memory()
    assert calls == ["collect", "collect", "empty_cache"]


def test_out_of_gpu_memory_is_a_failed_run_with_that_reason() -> None:
    record = worker.train_in_worker(_run("test-oom", device="cpu"))
    assert record["status"] == "failed"
    assert record["error"]["type"] == "OutOfMemoryError"
    assert "CUDA out of memory" in record["error"]["message"] and record["error"]["epoch"] == 0
    assert record["env"]["gpu_ids"] == [] and record["env"]["device"] == "cpu"


@pytest.mark.parametrize(("gpus", "fraction"), [(0.25, 0.25), (0.5, 0.5), (1.0, None)])
def test_fractional_runs_may_fill_only_their_share_of_gpu_memory(
    monkeypatch: pytest.MonkeyPatch, gpus: float, fraction: float | None
) -> None:
    fractions: list[float] = []
    trained: list[RunSpec] = []
    monkeypatch.setattr(worker, "trial_device", lambda: ("cuda", ["3"]))
    monkeypatch.setattr(
        torch.cuda, "set_per_process_memory_fraction", lambda f, device=None: fractions.append(f)
    )

    def fake_train_run(run: RunSpec, **_: Any) -> dict[str, Any]:
        trained.append(run)  # the engine is not what is tested here
        return {"status": "completed", "env": {"device": "cuda:fake"}}

    monkeypatch.setattr(engine, "train_run", fake_train_run)
    record = worker.train_in_worker(_run(gpus=gpus))
    assert fractions == ([] if fraction is None else [fraction])
    assert trained[0].device == "cuda" and record["env"]["gpu_ids"] == ["3"]


# ---------------------------------------------------------------------------- declared GPUs


@pytest.fixture
def ray_with_gpus(request: pytest.FixtureRequest) -> Any:
    """An embedded Ray of 4 CPUs with ``request.param`` declared (not real) GPUs."""
    import ray

    ray.init(
        address="local",
        num_cpus=4,
        num_gpus=request.param,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "env_vars": {
                **ray_cluster.TRIAL_ENV,
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(HERE), os.environ.get("PYTHONPATH")])
                ),
                "OMP_NUM_THREADS": "1",
            }
        },
    )
    yield request.param
    ray.shutdown()


def _probe(tmp_path: Path, gpus: list[float]) -> list[dict[str, Any]]:
    """What trials of these ``gpus`` resolve to when all run at once (else a trial times out)."""
    from engine_test_plugins import device_probe_trial
    from ray import tune

    runs = [
        _run(gpus=g, cpus=0.5).model_copy(update={"label": str(i)}).model_dump(mode="json")
        for i, g in enumerate(gpus)
    ]
    tuner = tune.Tuner(
        tune.with_resources(device_probe_trial, executor.trial_resources),
        param_space={"run": tune.grid_search(runs), "folder": str(tmp_path), "together": len(gpus)},
        run_config=tune.RunConfig(
            storage_path=str(tmp_path / "tune"),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    results = tuner.fit()
    assert not results.errors, results.errors
    return [json.loads((tmp_path / f"probe-{i}.json").read_text()) for i in range(len(gpus))]


@pytest.mark.slow
@pytest.mark.parametrize("ray_with_gpus", [2], indirect=True)
def test_declared_gpus_resolve_to_the_device_ray_gave(ray_with_gpus: int, tmp_path: Path) -> None:
    zero, half_a, half_b, whole = _probe(tmp_path, [0, 0.5, 0.5, 1])
    # no GPU from Ray: the CPU, and no GPU visible to the trial at all
    assert zero["device"] == "cpu" and zero["ids"] == [] and zero["visible"] == ""
    # two half GPUs share one id; the whole GPU is the other one
    assert half_a["device"] == half_b["device"] == whole["device"] == "cuda"
    assert half_a["ids"] == half_b["ids"] and len(half_a["ids"]) == 1 and len(whole["ids"]) == 1
    assert {half_a["ids"][0], whole["ids"][0]} == {"0", "1"}
    for probe in (half_a, half_b, whole):
        assert probe["visible"] == ",".join(probe["ids"])  # each trial sees only its own GPU


@pytest.mark.slow
@pytest.mark.parametrize("ray_with_gpus", [1], indirect=True)
def test_quarter_gpus_pack_four_runs_on_one_gpu(ray_with_gpus: int, tmp_path: Path) -> None:
    probes = _probe(tmp_path, [0.25, 0.25, 0.25, 0.25])  # the barrier: all four at once
    for probe in probes:
        assert probe["device"] == "cuda" and probe["ids"] == ["0"] and probe["visible"] == "0"


@pytest.mark.slow
@pytest.mark.parametrize("ray_with_gpus", [1], indirect=True)
def test_suite_on_declared_gpus_without_cuda(ray_with_gpus: int, tmp_path: Path) -> None:
    from podbench.results import ResultsStore

    runs = [_run("softmax"), _run("softmax", seed=1, gpus=1), _run("test-oom")]
    shown = io.StringIO()  # pytest's captured stdout would not pickle into Tune's callbacks
    outcome = executor.run_suite(
        runs, tmp_path / "results", max_failures=0, progress_stream=shown, rich_display=False
    )
    assert (outcome.completed, outcome.failed) == (1, 2)  # the suite went on
    store = ResultsStore(tmp_path / "results")
    cpu, gpu, oom = (store.read_record(r.run_id) for r in runs)
    # gpus 0 on a Ray that has GPUs: the CPU, recorded as such
    assert cpu["status"] == "completed" and cpu["env"]["device"] == "cpu"
    assert cpu["env"]["gpu_ids"] == [] and cpu["spec"]["device"] == "cpu"
    # a GPU from Ray that torch cannot see: failed, saying so, not trained on the CPU instead
    assert gpu["status"] == "failed" and gpu["error"]["type"] == "GPUNotVisible"
    assert gpu["env"]["gpu_ids"] == ["0"] and gpu["history"] == []
    assert gpu["error"]["message"].startswith(
        "Ray gave this run GPU 0 but torch sees no CUDA device"
    )
    assert oom["status"] == "failed" and oom["error"]["type"] == "OutOfMemoryError"
