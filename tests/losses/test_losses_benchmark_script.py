"""The loss benchmark script runs end to end (tiny sizes; the figures come from a real run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_losses.py"


def test_losses_benchmark_script_prints_a_ratio_per_loss():
    # A fresh interpreter, as a user runs it: only built-in and installed plugins are registered,
    # not the misbehaving plugins other tests register in this process.
    argv = ["--batch", "8", "--dim", "16", "--classes", "4", "--rounds", "2", "--reps", "1"]
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *argv], check=True, capture_output=True, text=True
    ).stdout
    registered = json.loads(
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import json; from podbench.losses import list_losses; print(json.dumps(list_losses()))",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    lines = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert set(lines) == {*registered, "pod[dxd-sc]"}
    assert float(lines["softmax"][2]) == 1.0
