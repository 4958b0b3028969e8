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
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    cpu_seconds = _children_cpu_seconds() - cpu_before
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    heads = [line.split(":")[0] for line in lines]
    assert heads == ["env", "conformance on cpu", "data path on cpu", "engine overhead on cpu",
                     "suite fast-cifar10 on cpu (bf16, channels_last)", "packing",
                     "time to 30% (softmax)", "time to 30% (pod)", "compile", "result"]
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


def test_a_failing_or_skipped_check_is_one_line_and_counts(gpu_check: ModuleType,
                                                           capsys: pytest.CaptureFixture) -> None:
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


def test_an_unreached_target_is_a_miss(gpu_check: ModuleType, capsys: pytest.CaptureFixture
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
