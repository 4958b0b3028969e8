"""The loss benchmark script runs end to end (tiny sizes; the figures come from a real run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_losses.py"


def test_losses_benchmark_script_prints_a_ratio_per_loss(capsys):
    spec = importlib.util.spec_from_file_location("bench_losses", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--batch", "8", "--dim", "16", "--classes", "4", "--rounds", "2", "--reps", "1"]
    assert module.main(argv) == 0
    out = capsys.readouterr().out
    from podbench.losses import list_losses

    lines = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert set(lines) == {*list_losses(), "pod[dxd-sc]"}
    assert float(lines["softmax"][2]) == 1.0
