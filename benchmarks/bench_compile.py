"""torch.compile on the CPU: compile time against the time it saves per training step.

Run: ``.venv/bin/python benchmarks/bench_compile.py [--archs small-cnn,fastnet,resnet18]
[--amp off,bf16] [--batch 128] [--rounds 5] [--run-images 500000]``

Per network and precision (channels_last, as ``auto`` picks on this CPU for these networks):
the eager training step (forward, softmax loss, backward, SGD step; bench_archs' ``Step``), then
the same network through ``prepare_model(compile=True)`` (Inductor, one compile thread): the
first compiled step's CPU seconds (compilation included; this process's, so Inductor's
subprocess workers are not counted: the wall seconds are printed too) and the median compiled
step after it. Break-even: the steps after which the compile's wall time is paid back; "pays
back" compares it with the steps of a run of ``--run-images`` training images.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from podbench.tasks import prepare_model

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts
from bench_archs import Step  # noqa: E402


def _median_seconds(step: Step, rounds: int) -> float:
    return statistics.median(step.seconds() for _ in range(rounds))


def measure(
    arch: str, precision: str, x: torch.Tensor, y: torch.Tensor, rounds: int
) -> dict[str, float]:
    eager = Step(arch, precision, True, x, y)
    eager()  # first-call costs
    eager_s = _median_seconds(eager, rounds)
    compiled = Step(arch, precision, True, x, y)
    compiled.model = prepare_model(compiled.model, "cpu", compile=True, compile_threads=1)
    wall, cpu = time.perf_counter(), time.process_time()
    compiled()
    first_cpu, first_wall = time.process_time() - cpu, time.perf_counter() - wall
    compiled_s = _median_seconds(compiled, rounds)
    return {
        "eager": eager_s,
        "compiled": compiled_s,
        "compile_cpu": first_cpu - compiled_s,
        "compile_wall": first_wall - compiled_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="small-cnn,fastnet,resnet18")
    parser.add_argument("--amp", default="off,bf16")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--run-images",
        type=int,
        default=500_000,
        help="training images of the run the break-even is compared with",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=gen)
    y = torch.randint(0, 10, (args.batch,), generator=gen)
    run_steps = args.run_images / args.batch
    print(
        f"torch {torch.__version__}, 1 thread, batch {args.batch}, {args.size} px, "
        f"channels_last; CPU seconds of this process; a run of {args.run_images:,} images = "
        f"{run_steps:,.0f} steps"
    )
    for arch in args.archs.split(","):
        for precision in args.amp.split(","):
            precision = "fp32" if precision == "off" else precision
            try:
                r = measure(arch, precision, x, y, args.rounds)
            except Exception as err:  # noqa: BLE001  a diverged or failed compiled step is a result
                print(
                    f"{arch:10s} {precision}: failed: {type(err).__name__}: "
                    f"{str(err).splitlines()[0]}",
                    flush=True,
                )
                continue
            saved = r["eager"] - r["compiled"]
            # the wall time: Inductor's C++ compiler runs in subprocesses this process's CPU
            # time does not count (on a shared machine the wall time overstates it instead)
            even = r["compile_wall"] / saved if saved > 0 else float("inf")
            verdict = "pays back" if even < run_steps else "does not pay back"
            print(
                f"{arch:10s} {precision}: eager {args.batch / r['eager']:8.1f} img/s, compiled "
                f"{args.batch / r['compiled']:8.1f} img/s (x{r['eager'] / r['compiled']:.2f}); "
                f"compile {r['compile_cpu']:.1f} CPU s ({r['compile_wall']:.1f} s wall); "
                f"break-even after {even:,.0f} steps: {verdict} in the run",
                flush=True,
            )


if __name__ == "__main__":
    main()
