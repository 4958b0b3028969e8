"""benchmarks/bench_archs.py runs end to end (tiny sizes) and prints, per network, images/s in
fp32/bf16 x contiguous/channels_last, the ratios to fp32 and the share of the measured limit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_archs.py"
BATCH = 4
CELL = r"\s+([\d.]+) img/s x\s*([\d.]+)\s+([\d.]+)%"


def test_bench_archs_prints_the_table_with_ratios_and_limit_shares() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--archs",
            "fastnet,mlp",
            "--rounds",
            "1",
            "--batch",
            str(BATCH),
            "--matmul",
            "256",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    ).stdout
    limits = {
        p: max(float(a), float(b))
        for p, a, b in re.findall(
            r"^(fp32|bf16) limit: matrix product 256x256 ([\d.]+) GFLOP/s, 3x3 convolution "
            r"([\d.]+) GFLOP/s",
            out,
            re.M,
        )
    }
    assert set(limits) == {"fp32", "bf16"}, out
    rows = {
        m[1]: m.groups()[1:]
        for m in re.finditer(r"^(\S+)\s+([\d.]+)" + CELL * 4 + r"\s+([\d.]+)%$", out, re.M)
    }
    assert set(rows) == {"fastnet", "mlp"}, out
    # mlp: Linear 3072-256, 256-256, 256-128 and the softmax head 128-10; a step is the forward
    # (2 FLOPs per multiply-add), the weight gradients (as many) and the input gradients of all
    # but the first layer (the images need none)
    macs = 3072 * 256 + 256 * 256 + 256 * 128 + 128 * 10
    assert float(rows["mlp"][0]) == pytest.approx(2 * (3 * macs - 3072 * 256) / 1e6, abs=0.01)
    for values in rows.values():
        mflop, cells, best = float(values[0]), values[1:13], float(values[13])
        rates = [float(cells[3 * i]) for i in range(4)]
        assert float(cells[1]) == 1.0  # fp32 contiguous against itself
        shares = []
        for i, precision in enumerate(["fp32", "fp32", "bf16", "bf16"]):
            ratio, share = float(cells[3 * i + 1]), float(cells[3 * i + 2])
            assert ratio == pytest.approx(rates[i] / rates[0], rel=0.01, abs=0.01)
            gflops = mflop * 1e6 * rates[i] / 1e9
            assert share == pytest.approx(100 * gflops / limits[precision], rel=0.02, abs=0.1)
            shares.append(100 * gflops / limits["bf16"])
        assert best == pytest.approx(max(shares), rel=0.02, abs=0.1)
