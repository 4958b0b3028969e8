"""The engine's training loop against a bare PyTorch loop: same model, data, loss and steps.

Run: ``.venv/bin/python benchmarks/bench_engine.py [--rounds 5] [--threads 1]``

Both loops train copies of the same freshly built network and loss plugin, with the same SGD
settings, on the same batches (``Task.train_batches``), alternately, several rounds; the median
and the fastest seconds per epoch of each and their ratios (engine / bare; target <= 1.03) are
printed. Times are CPU seconds of this process (``time.process_time``), so that other work on a
shared machine does not distort them; with one torch thread this equals the epoch's compute. The
engine's loop also tracks train loss/accuracy and loss parts, checks for NaN, and calls the
plugin's hooks; evaluation is not timed in either.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from podbench.engine import _Trainer
from podbench.runs import RunSettings, resolve_run

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


def bare_epoch(
    model: torch.nn.Module,
    plugin: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    task: object,
    batch_size: int,
    seed: int,
    epoch: int,
    steps: int,
) -> float:
    """The loop a user would write by hand; returns its CPU seconds."""
    model.train()
    plugin.train()
    start = time.process_time()
    for index, (x, y) in enumerate(task.train_batches(batch_size, seed=seed, epoch=epoch)):  # type: ignore[attr-defined]
        if index >= steps:
            break
        out = plugin(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        optimizer.step()
    return time.process_time() - start


def run_case(name: str, case: dict, rounds: int) -> float:
    settings = RunSettings(
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
    trainer = _Trainer(run, checkpoint_dir=None)
    model = copy.deepcopy(trainer.model)
    plugin = copy.deepcopy(trainer.plugin)
    params = [*model.parameters(), *plugin.parameters()]
    optimizer = torch.optim.SGD(
        params, lr=run.lr, momentum=run.momentum, weight_decay=run.weight_decay
    )
    steps = trainer.steps_per_epoch
    # warm-up: allocator, caches, first-call costs
    trainer.train_epoch(0)
    bare_epoch(model, plugin, optimizer, trainer.task, run.batch_size, run.seed, 0, steps)
    engine_s: list[float] = []
    bare_s: list[float] = []
    for epoch in range(1, rounds + 1):
        order = ["engine", "bare"] if epoch % 2 else ["bare", "engine"]  # no first-mover bias
        for which in order:
            if which == "engine":
                before = time.process_time()
                trainer.train_epoch(epoch)
                engine_s.append(time.process_time() - before)
            else:
                bare_s.append(
                    bare_epoch(
                        model,
                        plugin,
                        optimizer,
                        trainer.task,
                        run.batch_size,
                        run.seed,
                        epoch,
                        steps,
                    )
                )
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} epochs each, "
        "alternating; CPU seconds per epoch"
    )
    for name, case in CASES.items():
        run_case(name, case, args.rounds)


if __name__ == "__main__":
    main()
