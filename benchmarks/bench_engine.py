"""The engine's training loop against a bare PyTorch loop: same model, data, loss and steps.

Run: ``.venv/bin/python benchmarks/bench_engine.py [--rounds 5] [--threads 1] [--amp bf16]``

Both loops train copies of the same freshly built network and loss plugin, with the same SGD
settings, on the same batches (``Task.train_batches``), alternately, several rounds; the median
and the fastest seconds per epoch of each and their ratios (engine / bare; target <= 1.03) are
printed. Times are CPU seconds of this process (``time.process_time``), so that other work on a
shared machine does not distort them; with one torch thread this equals the epoch's compute. On a
GPU (``compare`` with a CUDA run, as ``gpu_check.py`` does) they are synchronised wall seconds. The
engine's loop also tracks train loss/accuracy and loss parts, checks for NaN, and calls the
plugin's hooks; evaluation is not timed in either.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from podbench.loop import Trainer
from podbench.runs import RunSettings, RunSpec, resolve_run

CASES = {
    # the quickstart's network and data (a real, small convolutional workload)
    "fashion-mnist/small-cnn/pod": dict(
        dataset="fashion-mnist", arch="small-cnn", loss="pod", feat_dim=32, limit_train=3072
    ),
    # a tiny MLP: per-step overhead is most visible here (worst case)
    "digits/mlp/softmax": dict(
        dataset="digits", arch="mlp", loss="softmax", feat_dim=16, limit_train=None
    ),
}


class Clock:
    """Seconds of work: this process's CPU time on a CPU, synchronised wall time on a GPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # GPU work is asynchronous: wait for it
            return time.perf_counter()
        return time.process_time()


def bare_epoch(
    model: torch.nn.Module,
    plugin: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer: Trainer,
    epoch: int,
    clock: Clock,
) -> float:
    """The loop a user would write by hand (same autocast and memory format); its seconds."""
    run = trainer.parts.run
    model.train()
    plugin.train()
    start = clock()
    batches = trainer.parts.task.train_batches(run.batch_size, seed=run.seed, epoch=epoch)
    for index, (x, y) in enumerate(batches):
        if index >= trainer.parts.steps_per_epoch:
            break
        with trainer.policy.autocast():
            features = model(trainer.policy.prepare(x))
        out = plugin(features, y)
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        optimizer.step()
    return clock() - start


def compare(run: RunSpec, rounds: int) -> tuple[list[float], list[float], int]:
    """Seconds per epoch of the engine's loop and of a bare loop, alternately; steps per epoch.

    Both train copies of the same freshly built network and plugin, with the same optimiser
    settings, on the same batches; the first epoch of each is a warm-up and not returned.
    """
    trainer = Trainer.of_run(run)
    clock = Clock(trainer.device)
    model = copy.deepcopy(trainer.parts.model)
    plugin = copy.deepcopy(trainer.parts.plugin)
    params = [p for p in [*model.parameters(), *plugin.parameters()] if p.requires_grad]
    optimizer = torch.optim.SGD(
        params,
        lr=run.lr,
        momentum=run.momentum,
        weight_decay=run.weight_decay,
        nesterov=run.nesterov,
    )
    # warm-up: allocator, caches, first-call costs (cuDNN's algorithm choice on a GPU)
    trainer.train_epoch(0)
    bare_epoch(model, plugin, optimizer, trainer, 0, clock)
    engine_s: list[float] = []
    bare_s: list[float] = []
    for epoch in range(1, rounds + 1):
        order = ["engine", "bare"] if epoch % 2 else ["bare", "engine"]  # no first-mover bias
        for which in order:
            if which == "engine":
                before = clock()
                trainer.train_epoch(epoch)
                engine_s.append(clock() - before)
            else:
                bare_s.append(bare_epoch(model, plugin, optimizer, trainer, epoch, clock))
    return engine_s, bare_s, trainer.parts.steps_per_epoch


def run_case(name: str, case: dict, rounds: int, amp: str = "off") -> float:
    settings = RunSettings(
        amp=amp,
        epochs=rounds,
        batch_size=128,
        lr=0.05,
        schedule="constant",
        device="cpu",
        limit_train=case["limit_train"],
        limit_eval=256,
    )
    run = resolve_run(
        settings,
        suite="bench",
        loss=case["loss"],
        dataset=case["dataset"],
        arch=case["arch"],
        seed=0,
        feat_dim=case["feat_dim"],
    )
    engine_s, bare_s, steps = compare(run, rounds)
    ratio_median = statistics.median(engine_s) / statistics.median(bare_s)
    ratio_min = min(engine_s) / min(bare_s)  # the least disturbed epoch of each
    print(
        f"{name:30s} steps/epoch={steps:3d}  engine median {statistics.median(engine_s):.3f} s "
        f"min {min(engine_s):.3f} s | bare median {statistics.median(bare_s):.3f} s "
        f"min {min(bare_s):.3f} s | ratio median {ratio_median:.3f}, min {ratio_min:.3f} "
        "(target <= 1.03)"
    )
    return ratio_min


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--amp",
        default="off",
        choices=["off", "bf16"],
        help="both loops under this autocast (channels_last: auto either way)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} epochs each, "
        f"alternating, amp {args.amp}; CPU seconds per epoch"
    )
    for name, case in CASES.items():
        run_case(name, case, args.rounds, args.amp)


if __name__ == "__main__":
    main()
