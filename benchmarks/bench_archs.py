"""Training speed of every network on this CPU: fp32/bf16 x contiguous/channels_last, against
the FLOP/s limit (matrix product, dense convolution) measured in the same process.

Run: ``.venv/bin/python benchmarks/bench_archs.py [--archs fastnet,small-cnn,resnet18|all]
[--batch 128] [--size 32] [--rounds 5] [--threads 1] [--matmul 2048]``

Speed: one training step (forward, softmax loss, backward, SGD step) on a batch of RGB images,
as the engine runs it: ``amp: bf16`` is CPU autocast with the latent projection and the loss in
float32, ``channels_last`` converts the network and the batch. Every (network, precision,
layout) in turn, several rounds (the order rotates, so none always goes first); images per
second from the median CPU seconds of this process per step (``time.process_time``: other work
on a shared machine does not count). Ratios are to fp32 contiguous of the same network.

The limit, per precision: the faster of a bare ``--matmul`` x ``--matmul`` matrix product and a
dense 3x3 convolution of ``--matmul // 8`` channels, timed the same way (both are printed:
torch's matrix product runs in MKL, which on AMD CPUs can reach only a fraction of what
oneDNN's convolutions reach). ``% limit``: the step's FLOPs (forward and backward, counted by
``torch.utils.flop_counter``) per second as a share of the limit in the same precision; the
last column puts the best cell against the bf16 limit.

``--accuracy SECONDS`` adds CIFAR-10 (JPEG q75, ``--data``) test accuracy after the same CPU
seconds of training for each network (fp32, contiguous), with the engine's own loop
(``Trainer.train_epoch`` in chunks of ``--chunk`` batches, a constant learning rate) and the
first ``--eval`` test images (class-balanced). Settings per network: fastnet the fast-cifar10
preset scaled to the batch size (airbench's learning rate is per 1024 images), the others the
quickstart's SGD settings.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from podbench.factory import latent_in_float32
from podbench.loop import Trainer
from podbench.losses import create_loss
from podbench.runs import RunSettings, resolve_run
from podbench.tasks import create_arch, list_archs

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts
from bench_data import DEFAULT_DATA  # noqa: E402

PRESET_BATCH = 1024  # fast-cifar10's batch size, for which its learning rate is set
DEFAULT_ARCHS = "fastnet,small-cnn,resnet18"
# (precision, channels_last) in the table's column order
CONFIGS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def optimiser_settings(arch: str, batch: int) -> dict[str, object]:
    """fastnet: the fast-cifar10 preset with lr scaled to ``batch``; others: the quickstart's."""
    if arch == "fastnet":
        return {
            "lr": 1.5 * batch / PRESET_BATCH,
            "momentum": 0.85,
            "nesterov": True,
            "weight_decay": 1.33e-3,
        }
    return {"lr": 0.05, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4}


def _fastest(fn: Any, repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``fn`` in CPU seconds of this process (after one)."""
    fn()  # first-call costs
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return max(best, 1e-9)


def limit_flops(precision: str, n: int, repeats: int = 3) -> dict[str, float]:
    """FLOP/s in ``precision`` of a bare ``n`` x ``n`` matrix product and of a dense 3x3
    convolution (64 images of 16 px, ``n // 8`` channels in and out, channels_last); the limit
    is the faster of the two (torch's matrix product goes to MKL, convolutions to oneDNN)."""
    gen = torch.Generator().manual_seed(1)
    dtype = DTYPES[precision]
    a, b = (torch.randn(n, n, generator=gen).to(dtype) for _ in range(2))
    out = {"matmul": 2 * n**3 / _fastest(functools.partial(torch.matmul, a, b), repeats)}
    c = max(8, n // 8)
    x = torch.randn(64, c, 16, 16, generator=gen).to(dtype, memory_format=torch.channels_last)
    w = torch.randn(c, c, 3, 3, generator=gen).to(dtype, memory_format=torch.channels_last)
    conv = functools.partial(torch.nn.functional.conv2d, x, w, padding=1)
    out["conv3x3"] = 2 * 64 * 16 * 16 * c * c * 9 / _fastest(conv, repeats)
    out["limit"] = max(out["matmul"], out["conv3x3"])
    return out


class Step:
    """One network's training step in one precision and layout (its own copy of the network)."""

    def __init__(
        self, arch: str, precision: str, channels_last: bool, x: torch.Tensor, y: torch.Tensor
    ) -> None:
        torch.manual_seed(0)
        self.model = create_arch(
            arch, in_channels=x.shape[1], image_size=x.shape[-1], feat_dim=128
        ).train()
        self.plugin = create_loss("softmax", num_classes=10, feat_dim=128)
        self.dtype = DTYPES[precision] if precision != "fp32" else None
        if self.dtype is not None:
            latent_in_float32(self.model)  # as the engine does under AMP
        layout = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=layout)
        self.x = x.contiguous(memory_format=layout)
        self.y = y
        params = [
            p for p in [*self.model.parameters(), *self.plugin.parameters()] if p.requires_grad
        ]
        self.optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)

    def __call__(self) -> None:
        autocast = (
            torch.autocast("cpu", dtype=self.dtype)
            if self.dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            features = self.model(self.x)
        out = self.plugin(features, self.y)  # the loss in float32, outside autocast
        self.optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        self.optimizer.step()

    def flops(self) -> int:
        """FLOPs of one step (forward and backward), as torch's flop counter counts them."""
        with FlopCounterMode(display=False) as counter:
            self()
        return int(counter.get_total_flops())

    def seconds(self) -> float:
        start = time.process_time()
        self()
        return time.process_time() - start


def measure(archs: list[str], batch: int, size: int, rounds: int) -> dict[tuple, dict[str, Any]]:
    """Per (arch, precision, channels_last): median CPU seconds per step and FLOPs per step."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    steps = {(a, p, cl): Step(a, p, cl, x, y) for a in archs for p, cl in CONFIGS}
    flops = {key: step.flops() for key, step in steps.items()}  # also the warm-up step
    keys = list(steps)
    seconds: dict[tuple, list[float]] = {key: [] for key in keys}
    for r in range(rounds):
        shift = r % len(keys)
        for key in keys[shift:] + keys[:shift]:
            seconds[key].append(steps[key].seconds())
    return {key: {"seconds": statistics.median(seconds[key]), "flops": flops[key]} for key in keys}


def table(
    results: dict[tuple, dict[str, Any]], archs: list[str], batch: int, limits: dict[str, float]
) -> list[str]:
    """The printed table: per network its FLOPs per image of a step, then per cell images/s,
    the ratio to fp32 contiguous and the % of the limit; last, the best cell's % of bf16's."""
    head = ["MFLOP/img", "fp32", "fp32+CL", "bf16", "bf16+CL", "best % bf16 limit"]
    widths = [11, 27, 27, 27, 27, 19]
    lines = [f"{'network':12s}" + "".join(f"{h:>{w}s}" for h, w in zip(head, widths, strict=True))]
    for arch in archs:
        base = results[(arch, "fp32", False)]["seconds"]
        flops = results[(arch, "fp32", False)]["flops"]  # the same graph in every cell
        cells, best = [f"{flops / batch / 1e6:11.2f}"], 0.0
        for precision, cl in CONFIGS:
            seconds = results[(arch, precision, cl)]["seconds"]
            best = max(best, flops / seconds)
            cells.append(
                f"{batch / seconds:10.1f} img/s x{base / seconds:5.2f}"
                f" {100 * flops / seconds / limits[precision]:5.1f}%".rjust(27)
            )
        lines.append(f"{arch:12s}" + "".join(cells) + f"{100 * best / limits['bf16']:18.1f}%")
    return lines


def accuracy_after(
    arch: str, cpu_seconds: float, args: argparse.Namespace
) -> tuple[float, int, float]:
    """(test accuracy, training images seen, wall seconds) after ``cpu_seconds`` of training."""
    settings = RunSettings(
        epochs=1,
        batch_size=args.batch,
        schedule="constant",
        device="cpu",
        limit_eval=args.eval,
        max_steps=args.chunk,
        data_root=str(args.data),
        channels_last=False,
        **optimiser_settings(arch, args.batch),
    )
    run = resolve_run(
        settings,
        suite="bench-archs",
        loss="softmax",
        dataset="cifar10",
        arch=arch,
        seed=0,
        feat_dim=128,
    )
    trainer = Trainer.of_run(run)
    wall = time.perf_counter()
    start = time.process_time()
    chunk = 0
    while time.process_time() - start < cpu_seconds:
        trainer.train_epoch(chunk)  # `chunk` batches of a fresh shuffle: a constant-lr stream
        chunk += 1
    accuracy, _, _ = trainer.evaluate("test", keep_features=False)
    return accuracy, trainer.progress.train_images, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=DEFAULT_ARCHS, help="comma-separated, or 'all'")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32, help="image size in pixels")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--matmul", type=int, default=2048, help="the limit's matrix size")
    parser.add_argument(
        "--accuracy",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="also train each network this many CPU seconds on CIFAR-10",
    )
    parser.add_argument("--chunk", type=int, default=10, help="batches per engine call")
    parser.add_argument("--eval", type=int, default=2000, help="test images evaluated")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    archs = list_archs() if args.archs == "all" else args.archs.split(",")
    torch.set_num_threads(args.threads)
    measured = {p: limit_flops(p, args.matmul) for p in DTYPES}
    limits = {p: measured[p]["limit"] for p in DTYPES}
    print(
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} thread(s), batch {args.batch}, {args.size} px RGB, "
        f"{args.rounds} rounds; CPU seconds of this process per step"
    )
    for p in DTYPES:
        print(
            f"{p} limit: matrix product {args.matmul}x{args.matmul} "
            f"{measured[p]['matmul'] / 1e9:.1f} GFLOP/s, 3x3 convolution "
            f"{measured[p]['conv3x3'] / 1e9:.1f} GFLOP/s"
        )
    print(f"limit bf16/fp32 x{limits['bf16'] / limits['fp32']:.2f}")
    results = measure(archs, args.batch, args.size, args.rounds)
    print("\n".join(table(results, archs, args.batch, limits)))
    print("cell: images/s, x speed of fp32 contiguous, % of the same precision's limit")
    if args.accuracy > 0:
        print(
            f"CIFAR-10 (JPEG q75) test accuracy on the first {args.eval} test images after "
            f"{args.accuracy:.0f} CPU seconds of training each (constant lr):"
        )
        for name in archs:
            acc, seen, wall = accuracy_after(name, args.accuracy, args)
            print(
                f"{name:12s} test accuracy {acc:.2%} after {seen:,} training images "
                f"({wall:.0f} s wall with evaluation)"
            )


if __name__ == "__main__":
    main()
