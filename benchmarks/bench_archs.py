"""Training speed of the networks on 32 px images on this CPU, as ratios to a baseline network.

Run: ``.venv/bin/python benchmarks/bench_archs.py [--archs fastnet,small-cnn,resnet18]
[--baseline resnet18] [--batch 128] [--rounds 5] [--threads 1]``

Speed: one training step (forward, softmax loss, backward, SGD step) on a batch of 32 px RGB
images, every network in turn, several rounds (the order rotates, so no network always goes
first); images per second from the median CPU seconds of this process per step
(``time.process_time``: other work on a shared machine does not count), and the ratio to the
baseline network measured in the same process.

``--accuracy SECONDS`` adds CIFAR-10 (JPEG q75, ``--data``) test accuracy after the same CPU
seconds of training for each network, with the engine's own loop (``Trainer.train_epoch`` in
chunks of ``--chunk`` batches, a constant learning rate) and the first ``--eval`` test images
(class-balanced). Settings per network: fastnet the fast-cifar10 preset scaled to the batch size
(airbench's learning rate is per 1024 images), the others the quickstart's SGD settings.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from podbench.loop import Trainer
from podbench.losses import create_loss
from podbench.runs import RunSettings, resolve_run
from podbench.tasks import create_arch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts
from bench_data import DEFAULT_DATA  # noqa: E402

PRESET_BATCH = 1024  # fast-cifar10's batch size, for which its learning rate is set


def optimiser_settings(arch: str, batch: int) -> dict[str, object]:
    """fastnet: the fast-cifar10 preset with lr scaled to ``batch``; others: the quickstart's."""
    if arch == "fastnet":
        return {"lr": 1.5 * batch / PRESET_BATCH, "momentum": 0.85, "nesterov": True,
                "weight_decay": 1.33e-3}
    return {"lr": 0.05, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4}


def step_seconds(archs: list[str], batch: int, rounds: int) -> dict[str, list[float]]:
    """CPU seconds of one training step per network and round (after one warm-up step each)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    nets = {}
    for name in archs:
        model = create_arch(name, in_channels=3, image_size=32, feat_dim=128)
        plugin = create_loss("softmax", num_classes=10, feat_dim=128)
        params = [p for p in [*model.parameters(), *plugin.parameters()] if p.requires_grad]
        nets[name] = (model.train(), plugin, torch.optim.SGD(params, lr=0.01, momentum=0.9))

    def step(name: str) -> float:
        model, plugin, optimizer = nets[name]
        start = time.process_time()
        out = plugin(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        optimizer.step()
        return time.process_time() - start

    for name in archs:
        step(name)  # warm-up: allocator, first-call costs
    seconds: dict[str, list[float]] = {name: [] for name in archs}
    for r in range(rounds):
        for name in archs[r % len(archs):] + archs[:r % len(archs)]:
            seconds[name].append(step(name))
    return seconds


def accuracy_after(arch: str, cpu_seconds: float, args: argparse.Namespace) -> tuple[float, int, float]:
    """(test accuracy, training images seen, wall seconds) after ``cpu_seconds`` of training."""
    settings = RunSettings(epochs=1, batch_size=args.batch, schedule="constant", device="cpu",
                           limit_eval=args.eval, max_steps=args.chunk, data_root=str(args.data),
                           **optimiser_settings(arch, args.batch))
    run = resolve_run(settings, suite="bench-archs", loss="softmax", dataset="cifar10",
                      arch=arch, seed=0, feat_dim=128)
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
    parser.add_argument("--archs", default="fastnet,small-cnn,resnet18")
    parser.add_argument("--baseline", default="resnet18")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--accuracy", type=float, default=0.0, metavar="SECONDS",
                        help="also train each network this many CPU seconds on CIFAR-10")
    parser.add_argument("--chunk", type=int, default=10, help="batches per engine call")
    parser.add_argument("--eval", type=int, default=2000, help="test images evaluated")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    archs = args.archs.split(",")
    if args.baseline not in archs:
        archs.append(args.baseline)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch}, "
          f"32 px RGB, {args.rounds} rounds; CPU seconds of this process per step")
    seconds = step_seconds(archs, args.batch, args.rounds)
    base = statistics.median(seconds[args.baseline])
    for name in archs:
        med = statistics.median(seconds[name])
        print(f"{name:12s} {args.batch / med:9.1f} images/s  ({med:.3f} s per step; "
              f"x{base / med:.2f} the speed of {args.baseline})")
    if args.accuracy > 0:
        print(f"CIFAR-10 (JPEG q75) test accuracy on the first {args.eval} test images after "
              f"{args.accuracy:.0f} CPU seconds of training each (constant lr):")
        for name in archs:
            acc, seen, wall = accuracy_after(name, args.accuracy, args)
            print(f"{name:12s} test accuracy {acc:.2%} after {seen:,} training images "
                  f"({wall:.0f} s wall with evaluation)")


if __name__ == "__main__":
    main()
