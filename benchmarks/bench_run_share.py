"""Where a real run's time goes on the CPU: the training step (forward, loss, backward,
optimiser) against everything else (setup and data loading, batches, evaluation, probes,
checkpoints, the record), measured with torch's profiler.

Run: ``.venv/bin/python benchmarks/bench_run_share.py [--dataset cifar10] [--data PATH]
[--arch small-cnn] [--amp bf16] [--channels-last auto] [--batch 128] [--limit-train 5000]
[--limit-eval 2000] [--epochs 3] [--checkpoint] [--evaluate calibration] [--threads 1]``

One ``train_run`` under ``torch.profiler``, its phases labelled with ``record_function`` (the
engine itself is not changed: the labels wrap its functions for this process only); the CPU
seconds of each phase are counted too (on a shared machine wall time is mostly waiting). Printed: each
phase's wall seconds and share of the run, the share outside forward/backward (the issue's
target: under 10 %), and the run's images/s (the record's, data included) against a bare
training step of the same network, precision and layout on one synthetic batch in the same
process (bench_archs' step).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import podbench.engine as engine
from podbench.runs import RunSettings, resolve_run

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts
from bench_archs import Step  # noqa: E402
from bench_data import DEFAULT_DATA  # noqa: E402

STEP_PHASES = ("train.forward", "train.loss", "train.backward", "train.optimizer")
PHASES = ("setup", "train.data", *STEP_PHASES, "evaluate", "probes", "checkpoint")


CPU_SECONDS: dict[str, float] = {}  # per phase, outermost regions only (this process)
EPOCHS: dict[str, float] = {}  # wall and CPU seconds inside Trainer.train_epoch
_ACTIVE: list[str] = []


@contextlib.contextmanager
def _phase(label: str) -> Iterator[None]:
    """A profiler region, and its CPU seconds unless it runs inside another phase."""
    start = time.process_time()
    _ACTIVE.append(label)
    try:
        with record_function(label):
            yield
    finally:
        _ACTIVE.pop()
        if not _ACTIVE:
            CPU_SECONDS[label] = CPU_SECONDS.get(label, 0.0) + time.process_time() - start


def _labelled(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _phase(label):
            return fn(*args, **kwargs)

    return wrapper


def _labelled_batches(fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """Each ``next`` of the training batches (decode, augmentation, normalisation) as train.data."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        it = iter(fn(*args, **kwargs))
        while True:
            with _phase("train.data"):
                batch = next(it, None)
            if batch is None:
                return
            yield batch

    return wrapper


def _install(monkeypatch: list[tuple[Any, str, Any]]) -> None:
    """Label the engine's phases (undone by :func:`_restore`): setup is the run's policy (the
    channels-last probe) and its parts (data, network, plugin, optimiser)."""
    import podbench.loop as loop
    from podbench.runtime import RunPolicy

    def build_parts(run: Any, policy: Any) -> Any:
        parts = build(run, policy)
        forward = parts.forward
        labelled_forward = _labelled("train.forward", forward)
        parts.forward = lambda x: labelled_forward(x) if parts.model.training else forward(x)
        parts.plugin.update_loss = _labelled("train.loss", parts.plugin.update_loss)
        parts.optimizer.step = _labelled("train.optimizer", parts.optimizer.step)
        parts.task.train_batches = _labelled_batches(parts.task.train_batches)
        return parts

    build = engine.build_parts
    of = RunPolicy.of.__func__  # type: ignore[attr-defined]
    trainer = loop.Trainer
    train_epoch = trainer.train_epoch

    def timed_epoch(self: Any, epoch: int) -> Any:  # a plain timer: its phases count inside
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return train_epoch(self, epoch)
        finally:
            EPOCHS["wall"] = EPOCHS.get("wall", 0.0) + time.perf_counter() - wall
            EPOCHS["cpu"] = EPOCHS.get("cpu", 0.0) + time.process_time() - cpu

    for obj, name, new in (
        (trainer, "train_epoch", timed_epoch),
        (engine, "build_parts", _labelled("setup", build_parts)),
        (RunPolicy, "of", classmethod(_labelled("setup", of))),
        (trainer, "evaluate", _labelled("evaluate", trainer.evaluate)),
        (trainer, "probe", _labelled("probes", trainer.probe)),
        (loop, "save_checkpoint", _labelled("checkpoint", loop.save_checkpoint)),
        (torch.Tensor, "backward", _labelled("train.backward", torch.Tensor.backward)),
    ):
        monkeypatch.append(
            (obj, name, obj.__dict__[name] if isinstance(obj, type) else getattr(obj, name))
        )
        setattr(obj, name, new)


def _restore(monkeypatch: list[tuple[Any, str, Any]]) -> None:
    for obj, name, old in reversed(monkeypatch):
        setattr(obj, name, old)


def profiled_run(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, float], float]:
    """(the record, wall seconds per phase, the run's CPU seconds) of one profiled run; the CPU
    seconds per phase are in :data:`CPU_SECONDS`."""
    settings = RunSettings(
        epochs=args.epochs,
        batch_size=args.batch,
        lr=0.05,
        schedule="onecycle",
        device="cpu",
        limit_train=args.limit_train,
        limit_eval=args.limit_eval,
        amp=args.amp,
        channels_last={"auto": "auto", "true": True, "false": False}[args.channels_last],
        data_root=str(args.data) if args.dataset == "cifar10" else None,
        evaluate=args.evaluate or [],
    )
    run = resolve_run(
        settings,
        suite="bench-share",
        loss="pod",
        dataset=args.dataset,
        arch=args.arch,
        seed=0,
        feat_dim=32,
    )
    patches: list[tuple[Any, str, Any]] = []
    _install(patches)
    CPU_SECONDS.clear()
    EPOCHS.clear()
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            profile(activities=[ProfilerActivity.CPU]) as prof,
        ):
            cpu = time.process_time()
            record = engine.train_run(run, checkpoint_dir=Path(tmp) if args.checkpoint else None)
            cpu_total = time.process_time() - cpu
    finally:
        _restore(patches)
    return record, outermost_seconds(prof.events()), cpu_total


def outermost_seconds(events: Any) -> dict[str, float]:
    """Wall seconds per phase from the profiler's events, a region inside another phase's
    (the channels-last probe's backward passes inside setup) counted only once, in the outer."""
    spans = sorted(
        ((e.time_range.start, e.time_range.end, e.name) for e in events if e.name in PHASES),
        key=lambda s: (s[0], -s[1]),
    )
    seconds: dict[str, float] = {}
    end_of_outer = -1.0
    for start, end, name in spans:
        if start >= end_of_outer:  # not inside the previous outermost region
            seconds[name] = seconds.get(name, 0.0) + (end - start) / 1e6
            end_of_outer = end
    return seconds


def bare_rates(record: dict[str, Any], args: argparse.Namespace) -> tuple[float, float]:
    """Images/s (per wall second, per CPU second) of a bare step of the run's network,
    precision and layout on a synthetic batch (median of 5 steps)."""
    spec = record["spec"]
    size = spec["image_size"] or (32 if args.dataset == "cifar10" else 28)
    channels = 3 if args.dataset == "cifar10" else 1
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, channels, size, size, generator=gen)
    y = torch.randint(0, 10, (args.batch,), generator=gen)
    step = Step(
        args.arch,
        "bf16" if args.amp == "bf16" else "fp32",
        bool(record["env"]["channels_last"]),
        x,
        y,
    )
    step()
    walls, cpus = [], []
    for _ in range(5):
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return args.batch / statistics.median(walls), args.batch / statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--arch", default="small-cnn")
    parser.add_argument("--amp", default="bf16", choices=["off", "bf16"])
    parser.add_argument("--channels-last", default="auto", choices=["auto", "true", "false"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--limit-train", type=int, default=5000)
    parser.add_argument("--limit-eval", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--checkpoint", action="store_true")
    parser.add_argument("--evaluate", action="append", help="a probe to run (repeatable)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record, wall, cpu_total = profiled_run(args)
    assert record["status"] == "completed", record["error"]
    wall_total = record["wall_time_s"]
    print(
        f"{args.arch} on {args.dataset}, amp {args.amp}, channels_last "
        f"{record['env']['channels_last']} ({args.channels_last}), batch {args.batch}, "
        f"{args.limit_train} images x {args.epochs} epochs, {args.threads} thread(s), under "
        f"the profiler: {wall_total:.1f} s wall, {cpu_total:.1f} CPU s"
    )
    outside = ("setup", "train.data", "evaluate", "probes", "checkpoint")
    rows = [(n, wall.get(n, 0.0), CPU_SECONDS.get(n, 0.0)) for n in PHASES]
    step_wall = sum(wall.get(n, 0.0) for n in STEP_PHASES)
    step_cpu = sum(CPU_SECONDS.get(n, 0.0) for n in STEP_PHASES)
    data_wall, data_cpu = wall.get("train.data", 0.0), CPU_SECONDS.get("train.data", 0.0)
    # the loop's own work around the step: accuracy of the batch, finite checks, the epoch's read
    rows.append(
        (
            "train.bookkeeping",
            EPOCHS["wall"] - step_wall - data_wall,
            EPOCHS["cpu"] - step_cpu - data_cpu,
        )
    )
    rows.append(
        (
            "rest (record...)",
            wall_total - sum(w for _, w, _ in rows),
            cpu_total - sum(c for _, _, c in rows),
        )
    )
    for name, w, c in rows:
        print(
            f"  {name:18s} {w:8.2f} s wall {100 * w / wall_total:5.1f} %   "
            f"{c:8.2f} CPU s {100 * c / cpu_total:5.1f} %"
        )
    out_wall = sum(w for n, w, _ in rows if n in outside or n.startswith("rest"))
    out_cpu = sum(c for n, _, c in rows if n in outside or n.startswith("rest"))
    print(
        f"outside the training loop's compute (setup, data, evaluation, probes, checkpoints, "
        f"record): {100 * out_wall / wall_total:.1f} % of the wall time, "
        f"{100 * out_cpu / cpu_total:.1f} % of the CPU time (target < 10 %); outside the "
        f"step (forward, loss, backward, optimiser) at all: "
        f"{100 * (1 - step_cpu / cpu_total):.1f} % of the CPU time"
    )
    bare_wall, bare_cpu = bare_rates(record, args)
    print(
        f"images/s: the run's record {record['images_per_s']:.1f} (wall, data included, under "
        f"the profiler); bare step {bare_wall:.1f} per wall s, {bare_cpu:.1f} per CPU s: "
        f"the run at x{record['images_per_s'] / bare_wall:.2f} of the bare step's wall rate"
    )


if __name__ == "__main__":
    main()
