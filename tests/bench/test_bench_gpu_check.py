"""benchmarks/gpu_check.py: its CPU smoke mode runs end to end; failures make it exit 1."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def test_smoke_mode_prints_every_figure_and_passes() -> None:
    cpu_before = _children_cpu_seconds()
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    cpu_seconds = _children_cpu_seconds() - cpu_before
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    heads = [line.split(":")[0] for line in lines]
    assert heads == [
        "env",
        "conformance on cpu",
        "data path on cpu",
        "engine overhead on cpu",
        "suite fast-cifar10 on cpu (bf16, channels_last)",
        "packing",
        "time to 30% (softmax)",
        "time to 30% (pod)",
        "compile",
        "result",
    ]
    text = done.stdout
    assert "conformance on cpu: 2/2 losses pass" in text
    assert float(re.search(r"data path on cpu: ([\d,]+) images/s", text)[1].replace(",", "")) > 0
    assert float(re.search(r"engine/bare = ([\d.]+)", text)[1]) > 0
    assert "1/1 runs completed" in text and re.search(r"speed-up [\d.]+x", text)
    assert lines[-1].startswith("result: every check passed")
    # the smoke mode's cost, whatever the load of the machine: CPU seconds, not wall seconds
    assert cpu_seconds < 50, f"the smoke mode took {cpu_seconds:.0f} CPU seconds"


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check as module
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


def test_a_failing_or_skipped_check_is_one_line_and_counts(
    gpu_check: ModuleType, capsys: pytest.CaptureFixture
) -> None:
    report = gpu_check.Report(deadline_s=100.0)
    with report.check("broken") as go:
        assert go
        raise ValueError("deliberate")
    with report.check("too long", needs=1000.0) as go:
        assert not go
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "FAIL broken: ValueError: deliberate"
    assert out[1].startswith("SKIP too long: ") and "needs about 1000 s" in out[1]
    assert len(report.failures) == 2


def test_an_unreached_target_is_a_miss(
    gpu_check: ModuleType, capsys: pytest.CaptureFixture
) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = gpu_check.argparse.Namespace(target=1.01, budgets=[1], deadline=None, ray=False)
        plan = gpu_check.smoke_plan(args)
        plan.target_losses = ["softmax"]
        plan.target_set = [*plan.target_set, "max_steps=1"]
        report = gpu_check.Report(plan.deadline_s)
        gpu_check.check_time_to_target(report, plan)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert out.startswith("MISS time to 101% (softmax): not reached with budgets [1] epochs")
    assert len(report.failures) == 1
    assert gpu_check.main(["--data", "/nonexistent/cifar.tar.gz"]) == 1  # no data: exit 1


# ---------------------------------------------------- a planted failure of each step: exit 1


@pytest.fixture
def smoke(gpu_check: ModuleType, capsys: pytest.CaptureFixture):  # type: ignore[no-untyped-def]
    """Run ``--smoke --only STEP`` in this process; return (exit status, printed lines)."""
    threads = torch.get_num_threads()

    def run(step: str, *extra: str) -> tuple[int, list[str]]:
        capsys.readouterr()
        code = gpu_check.main(["--smoke", "--only", step, *extra])
        return code, capsys.readouterr().out.splitlines()

    yield run
    torch.set_num_threads(threads)


def test_a_loss_raising_any_error_fails_conformance_and_the_summary_is_printed(
    smoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    import podbench.losses.testing as kit

    def planted_check(loss, device="cpu"):  # type: ignore[no-untyped-def]
        raise RuntimeError("planted")  # not an AssertionError

    monkeypatch.setattr(kit, "CHECKS", (planted_check,))
    code, lines = smoke("conformance")
    assert code == 1
    assert "FAIL conformance on cpu, softmax, planted_check: RuntimeError: planted" in lines
    assert any(line.startswith("conformance on cpu: 0/2 losses pass") for line in lines)


def test_host_syncs_of_pml_losses_are_reported_as_the_librarys(
    gpu_check: ModuleType, smoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    import podbench.losses.testing as kit

    def check_no_host_sync(loss, device="cpu"):  # type: ignore[no-untyped-def]
        raise AssertionError(f"{loss} makes the host wait for the device")

    monkeypatch.setattr(kit, "CHECKS", (check_no_host_sync,))
    monkeypatch.setattr(kit, "check_no_host_sync", check_no_host_sync)
    real_plan = gpu_check.smoke_plan

    def plan(args):  # type: ignore[no-untyped-def]
        p = real_plan(args)
        p.losses = ["pml:ArcFaceLoss", "softmax"]
        return p

    monkeypatch.setattr(gpu_check, "smoke_plan", plan)
    code, lines = smoke("conformance")
    assert code == 1  # softmax's sync is a failure; the pml: one is not
    assert [line for line in lines if line.startswith("FAIL")] == [
        "FAIL conformance on cpu, softmax, check_no_host_sync: AssertionError: softmax makes the "
        "host wait for the device"
    ]
    summary = next(line for line in lines if line.startswith("conformance on cpu:"))
    assert "1/2 losses pass" in summary and "host syncs in 1 pml: losses, the library's" in summary


def test_batches_not_in_channels_last_fail_the_data_path(
    smoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    import podbench.tasks as tasks

    real = tasks.load_task
    monkeypatch.setattr(
        tasks, "load_task", lambda *a, **kw: real(*a, **{**kw, "channels_last": False})
    )
    code, lines = smoke("data")
    assert code == 1 and any(
        line.startswith("FAIL data path: RuntimeError: batches are not channels_last")
        for line in lines
    ), lines


def test_a_slow_engine_fails_the_overhead_bound(smoke, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from podbench.loop import Trainer

    real = Trainer.train_epoch

    def slow(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        # CPU work (on a CPU the check times CPU seconds): 2 steps take ~0.2 s, engine/bare > 3
        end = time.process_time() + 1.0
        while time.process_time() < end:
            pass
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", slow)
    code, lines = smoke("overhead")
    assert code == 1 and any(
        line.startswith("FAIL engine overhead on cpu: engine/bare = ") and "(bound 3;" in line
        for line in lines
    ), lines


def test_a_run_that_does_not_complete_fails_the_suite(
    smoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    import podbench.engine as engine

    real = engine.train_run
    monkeypatch.setattr(
        engine, "train_run", lambda run, **kw: {**real(run, **kw), "status": "diverged"}
    )
    code, lines = smoke("suite")
    assert code == 1 and any(
        line.startswith("FAIL suite: RuntimeError: not every run completed") for line in lines
    ), lines


def test_time_outside_the_runs_fails_the_packing_overlap(
    smoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    import podbench.engine as engine

    real = engine.train_run

    def then_wait(run, **kw):  # type: ignore[no-untyped-def]
        record = real(run, **kw)
        time.sleep(3.0)  # not the runs' own time: under 0.5 runs in flight
        return record

    monkeypatch.setattr(engine, "train_run", then_wait)
    code, lines = smoke("packing")
    assert code == 1 and any(
        line.startswith("FAIL packing: ") and "(bound 0.5)" in line for line in lines
    ), lines


def test_an_unreached_target_makes_smoke_exit_1(smoke) -> None:
    code, lines = smoke("target", "--target", "1.01", "--budgets", "1")
    assert code == 1 and sum(line.startswith("MISS time to 101%") for line in lines) == 2


def test_a_second_run_that_compiles_again_fails_compile(
    gpu_check: ModuleType, smoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = gpu_check._train

    def forget(overrides):  # type: ignore[no-untyped-def]
        record = real(overrides)
        torch._dynamo.reset()  # the compiled code is dropped: the next run compiles again
        return record

    monkeypatch.setattr(gpu_check, "_train", forget)
    code, lines = smoke("compile")
    assert code == 1 and any(
        line.startswith("FAIL compile: ") and "the second run compiled again" in line
        for line in lines
    ), lines
