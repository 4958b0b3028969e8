"""``podbench doctor``: what this machine offers a run: the CPU's bfloat16 instructions (AMX,
AVX-512 BF16), torch's kernel level and threads, CUDA devices, and what bf16 gains here
(measured: a matrix product and a small network's training step, fp32 against bf16)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
from typing import Any

import torch

from podbench.tasks.devices import CPUINFO, CpuFeatures, cpu_features

__all__ = ["add_doctor_arguments", "bf16_gain", "cpu_line", "run_doctor"]


def add_doctor_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``podbench doctor``."""
    parser.add_argument(
        "--no-measure",
        action="store_true",
        help="report the flags only; skip the few seconds of fp32/bf16 timing",
    )
    parser.add_argument(
        "--cpuinfo",
        default=str(CPUINFO),
        metavar="PATH",
        help=f"read the CPU's flags from this file (default {CPUINFO})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _cpu_seconds(fn: Any, repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``fn`` in CPU seconds of this process (after one)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return max(best, 1e-9)


def _small_cnn_step(dtype: torch.dtype | None) -> Any:
    from podbench.tasks.archs import create_arch

    torch.manual_seed(0)
    model = create_arch("small-cnn", in_channels=3, image_size=32, feat_dim=32).train()
    x = torch.randn(64, 3, 32, 32)
    y = torch.randint(0, 32, (64,))

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext():
            features = model(x)
        torch.nn.functional.cross_entropy(features.float(), y).backward()

    return step


def bf16_gain(n: int = 1024, repeats: int = 3) -> dict[str, float]:
    """fp32 and bf16 speed on this CPU, one thread: an ``n`` x ``n`` matrix product (GFLOP/s)
    and a small-cnn training step on 64 images of 32 px (images/s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out: dict[str, float] = {}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            pair = torch.randn(2, n, n).to(dtype)
            product = functools.partial(torch.matmul, pair[0], pair[1])
            out[f"matmul_{name}_gflops"] = 2 * n**3 / _cpu_seconds(product, repeats) / 1e9
            step = _small_cnn_step(dtype if name == "bf16" else None)
            out[f"small_cnn_{name}_images_per_s"] = 64 / _cpu_seconds(step, repeats)
    finally:
        torch.set_num_threads(threads)
    return out


def cpu_line(cpu: CpuFeatures) -> str:
    """One line: the CPU, its bf16 instructions and what ``amp: bf16`` does on it."""

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    kernels = cpu.bf16_kernels
    verdict = (
        f"amp: bf16 runs on {kernels}"
        if kernels
        else "no native bf16: amp: bf16 is emulated, expect it slower than fp32 (use amp: off)"
    )
    return (
        f"CPU: {cpu.model or 'unknown'}, {cpu.cores} logical CPUs, torch kernels "
        f"{cpu.capability}; AMX-BF16 {yes(cpu.amx_bf16)}, AVX-512 BF16 "
        f"{yes(cpu.avx512_bf16)}, AVX-512 {yes(cpu.avx512)}, AVX2 {yes(cpu.avx2)}; {verdict}"
    )


def _cuda() -> list[dict[str, Any]]:
    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        with torch.cuda.device(i):
            out.append(
                {
                    "index": i,
                    "name": torch.cuda.get_device_name(i),
                    "bf16": torch.cuda.is_bf16_supported(including_emulation=False),
                }
            )
    return out


def run_doctor(args: argparse.Namespace) -> int:
    """Print the report; exit status 0."""
    cpu = cpu_features(args.cpuinfo)
    gain = None if args.no_measure else bf16_gain()
    report: dict[str, Any] = {
        "cpu": cpu.as_dict(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": _cuda(),
        "bf16_gain": gain,
    }
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(cpu_line(cpu))
    print(
        f"torch {torch.__version__}: {torch.get_num_threads()} intra-op threads by default; "
        "a run uses as many as its cpus setting"
    )
    if gain is not None:
        mm = gain["matmul_bf16_gflops"] / gain["matmul_fp32_gflops"]
        net = gain["small_cnn_bf16_images_per_s"] / gain["small_cnn_fp32_images_per_s"]
        print(
            f"measured, one thread: 1024x1024 matrix product fp32 "
            f"{gain['matmul_fp32_gflops']:.0f} GFLOP/s, bf16 {gain['matmul_bf16_gflops']:.0f} "
            f"(x{mm:.2f}); small-cnn training step fp32 "
            f"{gain['small_cnn_fp32_images_per_s']:.0f} images/s, bf16 "
            f"{gain['small_cnn_bf16_images_per_s']:.0f} (x{net:.2f})"
        )
        print(
            f"amp: bf16 {'would speed training up' if net > 1 else 'would slow training down'} "
            "here; it rounds the network's activations, so it is a protocol setting a suite "
            "states (benchmarks/bench_archs.py measures every network)"
        )
    for dev in report["cuda"]:
        print(f"cuda:{dev['index']}: {dev['name']}, native bf16 {'yes' if dev['bf16'] else 'no'}")
    if not report["cuda"]:
        print("CUDA: no GPU visible to torch")
    return 0
