"""Threads per run on the CPU: N runs at once with one torch thread each, against the same runs
one after another with N threads each.

Run: ``.venv/bin/python benchmarks/bench_threads.py [--runs 2] [--rounds 2] [--amp off]
[--arch small-cnn] [--dataset fashion-mnist] [--limit-train 3000] [--epochs 1]``

Each configuration trains the same ``--runs`` runs (seeds 0..N-1) with the engine's
``train_run`` in fresh processes (spawned; imports are not timed): "N x 1" starts them together,
each with one intra-op thread; "1 x N" trains them in turn in one process with N threads. Both
use one inter-op thread. Printed per configuration and round: wall seconds from the first run's
start to the last one's end, training images per wall second, and the CPU seconds the runs'
processes used per 1,000 training images (more CPU per image with more threads is their
synchronisation cost). The rounds alternate the order of the configurations.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
from typing import Any


def _train(runs: list[dict[str, Any]], threads: int) -> list[dict[str, float]]:
    """Train ``runs`` in turn in this process with ``threads`` torch threads."""
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    from podbench.engine import train_run
    from podbench.runs import RunSettings, resolve_run

    out = []
    for spec in runs:
        settings = RunSettings(**spec["settings"])
        run = resolve_run(settings, suite="bench-threads", **spec["grid"])
        start, cpu = time.time(), time.process_time()
        record = train_run(run)
        assert record["status"] == "completed", record["error"]
        out.append(
            {
                "start": start,
                "end": time.time(),
                "cpu": time.process_time() - cpu,
                "images": float(run.limit_train or 0) * record["epochs_completed"],
                "train_images_per_s": record["images_per_s"],
            }
        )
    return out


def _specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    settings = {
        "epochs": args.epochs,
        "batch_size": 64,
        "lr": 0.05,
        "schedule": "onecycle",
        "device": "cpu",
        "limit_train": args.limit_train,
        "limit_eval": 1000,
        "amp": args.amp,
        "channels_last": False,
    }
    return [
        {
            "settings": settings,
            "grid": {
                "loss": "pod",
                "dataset": args.dataset,
                "arch": args.arch,
                "seed": seed,
                "feat_dim": 32,
            },
        }
        for seed in range(args.runs)
    ]


def measure(config: str, args: argparse.Namespace) -> dict[str, float]:
    """Wall seconds, images per wall second and CPU seconds per 1,000 images of ``config``."""
    specs = _specs(args)
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.runs if config == "parallel" else 1) as pool:
        if config == "parallel":
            parts = pool.starmap(_train, [([spec], 1) for spec in specs])
        else:
            parts = [pool.apply(_train, (specs, args.runs))]
    timings = [t for part in parts for t in part]
    wall = max(t["end"] for t in timings) - min(t["start"] for t in timings)
    images = sum(t["images"] for t in timings)
    return {
        "wall": wall,
        "images_per_s": images / wall,
        "cpu_per_1000": 1000 * sum(t["cpu"] for t in timings) / images,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--amp", default="off", choices=["off", "bf16"])
    parser.add_argument("--arch", default="small-cnn")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--limit-train", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    n = args.runs
    names = {"parallel": f"{n} x 1", "serial": f"1 x {n}"}
    results: dict[str, list[dict[str, float]]] = {"parallel": [], "serial": []}
    for r in range(args.rounds):
        for config in ("parallel", "serial") if r % 2 == 0 else ("serial", "parallel"):
            res = measure(config, args)
            results[config].append(res)
            print(
                f"round {r} {names[config]:6s}: {res['wall']:7.1f} s wall, "
                f"{res['images_per_s']:8.1f} images/s, {res['cpu_per_1000']:5.2f} CPU s "
                "per 1,000 images",
                flush=True,
            )
    med = {c: statistics.median(x["images_per_s"] for x in v) for c, v in results.items()}
    print(
        f"median images/s: {names['parallel']} {med['parallel']:.1f}, {names['serial']} "
        f"{med['serial']:.1f}: {names['parallel']} is x{med['parallel'] / med['serial']:.2f} "
        f"({args.arch} on {args.dataset}, {args.limit_train} images x {args.epochs} epochs, "
        f"amp {args.amp})"
    )


if __name__ == "__main__":
    main()
