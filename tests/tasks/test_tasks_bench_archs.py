"""benchmarks/bench_archs.py runs end to end (tiny sizes) and prints one ratio per network."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_archs.py"


def test_bench_archs_prints_images_per_second_and_ratios() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--archs", "fastnet,mlp", "--baseline", "mlp",
         "--rounds", "2", "--batch", "4"],
        check=True, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
    rows = {m[1]: (float(m[2]), float(m[3]))
            for m in re.finditer(r"^(\S+)\s+([\d.]+) images/s .*x([\d.]+) the speed", out, re.M)}
    assert set(rows) == {"fastnet", "mlp"}
    assert rows["mlp"][1] == 1.0  # the baseline against itself
    # the printed speed ratio is the ratio of the printed images/s (within their rounding)
    fastnet_rate, fastnet_ratio = rows["fastnet"]
    assert abs(fastnet_ratio - fastnet_rate / rows["mlp"][0]) <= 0.01 + 0.01 * fastnet_ratio
