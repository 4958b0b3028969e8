"""Forward + backward time of every registered loss, as a ratio to softmax, in one process.

Usage: python benchmarks/bench_losses.py [--batch 256] [--dim 512] [--classes 100]
           [--rounds 15] [--reps 5] [--threads 1] [--device cpu]

Each round times ``reps`` batches of every loss, in a shuffled order, so that a busy machine
slows all of them alike; a loss's ratio is the median over rounds of its time divided by
softmax's time in the same round, and its time the median over rounds (all of its updates per
batch included: COT two). On CPU the clock is the thread's CPU time (torch set to one thread),
so other processes on a shared machine do not count; on CUDA it is wall time. ``pod[dxd-sc]`` is POD with the SC term through the d x d matrix
and plain autograd (the authors' way), to show what the Gram trick and the written-out backward save.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from podbench.losses import create_loss, list_losses
from podbench.losses.base import LossOutput, LossPlugin
from podbench.losses.pod import PODLoss


class _PODSquareSC(PODLoss):
    """POD with S = Z^T Z / (B - 1) formed explicitly (the authors' way)."""

    def compute_loss(self, features: torch.Tensor, targets: torch.Tensor) -> LossOutput:
        out = super().compute_loss(features, targets)
        z = torch.nn.functional.normalize(features, dim=1) - self.centroids[targets]
        s = z.T @ z / max(features.shape[0] - 1, 1)
        sc = (s.square().sum() - torch.diagonal(s).square().sum()) / (self.feat_dim - 1)
        return LossOutput(self.nac_weight * out.parts["nac"] + self.sc_weight * sc, out.parts)


def _step_fn(plugin: LossPlugin, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        for update in range(plugin.updates_per_batch):
            feats = x.detach().requires_grad_(True)
            plugin.update_loss(feats, y, update).total.backward()

    return step


def run(
    batch: int = 256,
    dim: int = 512,
    classes: int = 100,
    rounds: int = 15,
    reps: int = 5,
    device: str = "cpu",
) -> dict[str, tuple[float, float]]:
    """{loss: (median seconds per batch, median ratio to softmax in the same round)}."""
    torch.manual_seed(0)
    x = torch.randn(batch, dim, device=device) * 3.0
    y = torch.randint(0, classes, (batch,), device=device)
    steps: dict[str, Callable[[], None]] = {}
    for name in list_losses():
        seeded = {"centroid_seed": 0} if name in ("pod", "pedcc") else {}
        plugin = create_loss(name, num_classes=classes, feat_dim=dim, **seeded)
        steps[name] = _step_fn(plugin.to(device).train(), x, y)
    square = _PODSquareSC(classes, dim, centroid_seed=0).to(device).train()
    steps["pod[dxd-sc]"] = _step_fn(square, x, y)
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    # CPU: this thread's CPU time, so that other processes on a shared machine do not count.
    clock = time.perf_counter if cuda else time.thread_time
    for step in steps.values():  # warm-up
        step()
    order = list(steps)
    shuffler = random.Random(0)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        shuffler.shuffle(order)
        for name in order:
            step = steps[name]
            sync()
            start = clock()
            for _ in range(reps):
                step()
            sync()
            times[name].append((clock() - start) / reps)
    base = times["softmax"]
    return {
        name: (statistics.median(t), statistics.median(a / b for a, b in zip(t, base, strict=True)))
        for name, t in times.items()
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = run(args.batch, args.dim, args.classes, args.rounds, args.reps, args.device)
    print(
        f"forward+backward per batch, B={args.batch} d={args.dim} K={args.classes}, "
        f"{args.device}, {torch.get_num_threads()} thread(s), medians of {args.rounds} rounds"
    )
    print(f"{'loss':<18}{'ms/batch':>10}{'x softmax':>11}")
    for name, (seconds, ratio) in sorted(results.items(), key=lambda kv: kv[1][1]):
        print(f"{name:<18}{seconds * 1e3:>10.3f}{ratio:>11.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
