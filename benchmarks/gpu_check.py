"""One command that proves podbench's GPU path on a CUDA machine; ``--smoke`` runs it on a CPU.

Usage:
    python benchmarks/gpu_check.py                  # one CUDA GPU; under 8 minutes
    python benchmarks/gpu_check.py --smoke          # CPU, tiny data, a few steps (CI)

What it proves, one printed line per figure:

- the loss conformance kit on the device (every registered loss; any error of a loss is a FAIL
  naming it, and the summary is printed whatever happened); the host-sync step of
  pytorch-metric-learning's losses (``pml:``) is reported as the library's, apart, not as a
  failure: those losses read values back by design;
- the data path on the device: images/s of ``Task.train_batches``, checked: the stored images are
  uint8 on the device, the batches float32 on the device, in channels_last; and the first
  (decoding) load;
- the engine's training loop against a bare PyTorch loop on the device: the ratio of seconds per
  epoch (same network, data, autocast and memory format) must be at most 1.03 (smoke: 3.0);
- a real suite (``fast-cifar10``) through Ray on the device with bf16 autocast and channels_last;
- packing: 8 runs at ``gpus: 0.25`` against the same 8 one at a time: the speed-up must be at
  least 1.5x and the packed runs' own wall times must add up to at least twice the wall time of
  them all, i.e. at least 2 runs in flight on average (smoke: no speed-up bound, 0.5 in flight);
- time to 94% CIFAR-10 test accuracy with ``fastnet`` and softmax, and with POD: the smallest
  epoch budget (of ``--budgets``) whose run ends at or above ``--target``, and its seconds;
- ``torch.compile``: the first run compiles, the second (a new network of the same architecture,
  as in a reused worker) must compile no new graph (TorchDynamo's count of unique graphs). On a
  GPU it needs about 180 s: with less left it is a SKIP, which fails the check.

Every run uses ``deterministic: false`` (cudnn.benchmark on, the fastest kernels, as airbench
times itself), printed with the figures; ``CUBLAS_WORKSPACE_CONFIG`` is set when this script is
imported, before torch's first CUDA matrix product, so runs recorded deterministic are.

Data: CIFAR-10 JPEG q75 from ``../shared/data/cifar10-jpeg-q75.tar.gz`` relative to the repository
(``--data``); its accuracies are a little below those on the original pixels. The smoke mode uses
the built-in synthetic dataset and shrinks every check (2 runs for packing, 1-2 epoch budgets);
it runs the suite and packing checks in its own process (``--ray`` to go through Ray: starting
Ray and its workers alone takes about a minute on 2 CPUs) and compiles with the eager backend.

A check that fails prints a line starting with ``FAIL`` (``MISS`` for a target not reached,
``SKIP`` for a check the time limit left out); the script then exits 1, else 0.
"""

from __future__ import annotations

import os

# before torch's first CUDA matrix product (torch reads it once); see the module docstring
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark scripts

from bench_data import DEFAULT_DATA, fast_rate  # noqa: E402
from bench_engine import compare  # noqa: E402


@dataclass
class Plan:
    """Sizes of one check run: the GPU check or its CPU smoke version."""

    device: str
    dataset: str
    data_root: str | None
    losses: list[str] | None  # conformance: None = every registered loss
    suite_set: list[str]  # --set overrides of fast-cifar10 for the suite check
    packing_runs: int
    packing_set: list[str]
    packed: dict[str, float]  # resources of a packed run
    overhead_set: list[str]
    overhead_rounds: int
    data_batch: int
    data_epochs: int
    target: float
    budgets: list[int]
    target_losses: list[str]
    target_set: list[str]
    deadline_s: float
    compile_backend: str | None  # None: inductor (the default); "eager" in the smoke mode
    ray_cpus: int | None
    ray: bool  # suite and packing through Ray (False: in this process, one run after another)
    overhead_max: float  # engine/bare seconds per epoch at most
    packing_min_speedup: float  # one-at-a-time wall / packed wall at least
    packing_min_overlap: float  # packed runs in flight on average (their walls / the wall)
    compile_needs_s: float  # time a compile check needs (less left: SKIP)


# fast-cifar10's own entries: airbench's bias-free head for softmax, a projection for POD
FAST_CIFAR10_ENTRY = {
    "softmax": "{name: softmax, params: {bias: false}}",
    "pod": "{name: pod, settings: {proj: linear}}",
}


def gpu_plan(args: argparse.Namespace) -> Plan:
    data = str(args.data)
    # cudnn.benchmark on, as airbench times itself: the preset's time to 94% is comparable
    common = [f"data_root={data}", "device=cuda", "deterministic=false"]
    return Plan(
        device="cuda",
        dataset="cifar10",
        data_root=data,
        losses=None,
        suite_set=[*common, "seeds=[0]", "epochs=3"],
        packing_runs=8,
        packing_set=[*common, f"losses=[{FAST_CIFAR10_ENTRY['softmax']}]", "epochs=2", "cpus=1"],
        packed={"gpus": 0.25},
        overhead_set=[*common, f"losses=[{FAST_CIFAR10_ENTRY['softmax']}]", "seeds=[0]"],
        overhead_rounds=5,
        data_batch=1024,
        data_epochs=3,
        target=args.target or 0.94,
        budgets=args.budgets or [10, 20, 40],
        target_losses=["softmax", "pod"],
        target_set=common,
        deadline_s=args.deadline or 460.0,
        compile_backend=None,
        ray_cpus=None,
        ray=True,
        overhead_max=1.03,
        packing_min_speedup=1.5,
        packing_min_overlap=2,
        compile_needs_s=180,
    )


def smoke_plan(args: argparse.Namespace) -> Plan:
    tiny = [
        "datasets=[synthetic]",
        "device=cpu",
        "gpus=0",
        "cpus=1",
        "batch_size=64",
        "feat_dim=16",
        "proj=linear",
        "limit_eval=128",
        "deterministic=false",
    ]
    return Plan(
        device="cpu",
        dataset="synthetic",
        data_root=None,
        losses=["softmax", "pod"],
        suite_set=[
            *tiny,
            f"losses=[{FAST_CIFAR10_ENTRY['softmax']}]",
            "seeds=[0]",
            "epochs=1",
            "max_steps=2",
        ],
        packing_runs=2,
        packing_set=[*tiny, f"losses=[{FAST_CIFAR10_ENTRY['softmax']}]", "epochs=1", "max_steps=2"],
        packed={"gpus": 0.0, "cpus": 1.0},
        overhead_set=[
            *tiny,
            f"losses=[{FAST_CIFAR10_ENTRY['softmax']}]",
            "seeds=[0]",
            "max_steps=2",
            "amp='off'",
            "channels_last=false",
        ],
        overhead_rounds=2,
        data_batch=64,
        data_epochs=1,
        target=args.target or 0.3,
        budgets=args.budgets or [1, 2],
        target_losses=["softmax", "pod"],
        target_set=[*tiny, "amp='off'", "channels_last=false"],
        deadline_s=args.deadline or 300.0,
        compile_backend="eager",
        ray_cpus=2,
        ray=args.ray,
        # 2 steps on shared CPU cores: ratios of tiny times, bounded loosely; no packing bound
        overhead_max=3.0,
        packing_min_speedup=0.0,
        packing_min_overlap=0.5,
        compile_needs_s=5,
    )


class Report:
    """Prints one line per figure; remembers failures for the exit code."""

    def __init__(self, deadline_s: float) -> None:
        self.start = time.perf_counter()
        self.deadline_s = deadline_s
        self.failures: list[str] = []

    def line(self, text: str) -> None:
        print(text, flush=True)

    def fail(self, kind: str, text: str) -> None:
        self.failures.append(text)
        self.line(f"{kind} {text}")

    def left(self) -> float:
        return self.deadline_s - (time.perf_counter() - self.start)

    @contextlib.contextmanager
    def check(self, name: str, *, needs: float = 0.0) -> Iterator[bool]:
        """Run a check's body unless the time left is below ``needs``; any exception is a FAIL."""
        if self.left() < needs:
            self.fail(
                "SKIP",
                f"{name}: {self.left():.0f} s left, it needs about {needs:.0f} s "
                "(raise --deadline)",
            )
            yield False
            return
        try:
            yield True
        except Exception as err:  # noqa: BLE001  every failure becomes one line, the rest goes on
            self.fail("FAIL", f"{name}: {type(err).__name__}: {err}")
            traceback.print_exc(file=sys.stderr)


def _load(overrides: list[str]) -> list[Any]:
    from podbench.suite_spec import load_suite

    return load_suite("fast-cifar10", overrides).expand()


def check_environment(report: Report, plan: Plan) -> None:
    line = f"env: torch {torch.__version__}, python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    if plan.device == "cuda":
        if not torch.cuda.is_available():
            report.fail("FAIL", "env: no CUDA GPU is visible (run with --smoke on a CPU)")
            return
        props = torch.cuda.get_device_properties(0)
        line += (
            f", {props.name} ({props.total_memory / 1024**3:.0f} GiB, capability "
            f"{props.major}.{props.minor}), CUDA {torch.version.cuda}, "
            f"bf16 native: {'yes' if torch.cuda.is_bf16_supported() else 'no'}"
        )
    else:
        line += ", device cpu (smoke mode)"
    report.line(line)


def check_conformance(report: Report, plan: Plan) -> None:
    from podbench.losses import list_losses
    from podbench.losses.testing import CHECKS as KIT
    from podbench.losses.testing import check_no_host_sync

    with report.check("conformance", needs=5) as go:
        if not go:
            return
        names = plan.losses or list_losses()
        start = time.perf_counter()
        failed, library_syncs = [], []
        for name in names:
            for kit_check in KIT:
                try:
                    kit_check(name, plan.device)
                except Exception as err:  # noqa: BLE001  any error of a loss fails that loss
                    if kit_check is check_no_host_sync and name.startswith("pml:"):
                        library_syncs.append(name)  # the library reads values back by design
                        continue
                    failed.append(name)
                    report.fail(
                        "FAIL",
                        f"conformance on {plan.device}, {name}, "
                        f"{kit_check.__name__}: {type(err).__name__}: {err}",
                    )
                    break
        library = (
            f"; host syncs in {len(library_syncs)} pml: losses, the library's "
            "(pytorch-metric-learning reads values back), not counted"
            if library_syncs
            else ""
        )
        report.line(
            f"conformance on {plan.device}: {len(names) - len(failed)}/{len(names)} "
            f"losses pass ({time.perf_counter() - start:.1f} s){library}"
        )


def check_data_path(report: Report, plan: Plan) -> None:
    from podbench.tasks import load_task

    with report.check("data path", needs=5) as go:
        if not go:
            return
        start = time.perf_counter()
        load_task(plan.dataset, plan.data_root)  # decodes once into the cache (every later load)
        first = time.perf_counter() - start
        task = load_task(plan.dataset, plan.data_root, device=plan.device, channels_last=True)
        x, _ = next(task.train_batches(plan.data_batch, seed=0, epoch=99))  # warm-up
        _check_layout(task, x, plan.device)
        rate = fast_rate(task, plan.data_batch, plan.data_epochs, torch.device(plan.device))
        report.line(
            f"data path on {plan.device}: {rate:,.0f} images/s ({plan.dataset}, "
            f"{task.num_train} training images, batch {plan.data_batch}; checked: uint8 "
            f"on the device, float32 batches there, channels_last); first load "
            f"{first:.1f} s"
        )


def _check_layout(task: Any, x: torch.Tensor, device: str) -> None:
    """What the data path promises, checked on a real batch and the stored images."""
    stored = task._data["train"][0]
    if stored.dtype != torch.uint8 or stored.device.type != device:
        raise RuntimeError(
            f"stored training images are {stored.dtype} on {stored.device}, not uint8 on {device}"
        )
    if x.dtype != torch.float32 or x.device.type != device:
        raise RuntimeError(f"batches are {x.dtype} on {x.device}, not float32 on {device}")
    if not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous():
        raise RuntimeError(f"batches are not channels_last (strides {x.stride()})")


def check_overhead(report: Report, plan: Plan) -> None:
    with report.check("engine overhead", needs=10) as go:
        if not go:
            return
        (run,) = _load(plan.overhead_set)
        engine_s, bare_s, steps = compare(run, plan.overhead_rounds)
        engine, bare = statistics.median(engine_s), statistics.median(bare_s)
        ratio = engine / bare
        text = (
            f"engine overhead on {plan.device}: engine/bare = {ratio:.3f} (bound "
            f"{plan.overhead_max:g}; median seconds per epoch {engine:.3f} vs {bare:.3f}; "
            f"{steps} steps of {run.batch_size}, {run.arch}, {run.loss}, amp {run.amp}, "
            f"channels_last {run.channels_last}, deterministic {run.deterministic}; "
            f"{plan.overhead_rounds} epochs each)"
        )
        if ratio > plan.overhead_max:
            report.fail("FAIL", text)
        else:
            report.line(text)


def _run_suite(runs: list[Any], results: Path, plan: Plan, max_concurrent: int | None) -> float:
    """Wall seconds to run ``runs`` into ``results``; every run must complete."""
    from podbench.engine import train_run
    from podbench.executor import SuiteOutcome, run_suite
    from podbench.results import ResultsStore

    start = time.perf_counter()
    if plan.ray:
        outcome = run_suite(
            runs,
            results,
            num_cpus=plan.ray_cpus,
            max_concurrent=max_concurrent,
            progress_stream=io.StringIO(),
            rich_display=False,
        )
    else:  # the smoke mode: Ray's start and worker processes alone would take a minute
        store = ResultsStore(results)
        for run in runs:
            store.write_record(train_run(run))
        outcome = SuiteOutcome.of_records(runs, store, skipped=0)
    seconds = time.perf_counter() - start
    if outcome.completed != len(runs):
        raise RuntimeError(f"not every run completed: {outcome}")
    return seconds


def check_suite(report: Report, plan: Plan, workdir: Path) -> None:
    from podbench.results import ResultsStore

    with report.check("suite", needs=20) as go:
        if not go:
            return
        runs = _load(plan.suite_set)
        seconds = _run_suite(runs, workdir / "suite", plan, None)
        records = list(ResultsStore(workdir / "suite").records())
        devices = {r["env"]["device"].split(":")[0] for r in records}
        if devices != {plan.device}:
            raise RuntimeError(f"the runs ran on {devices}, not {plan.device}")
        if not all(r["spec"]["amp"] == "bf16" and r["env"]["channels_last"] for r in records):
            raise RuntimeError("the runs did not train with bf16 autocast and channels_last")
        accs = ", ".join(
            f"{r['label']} {r['final_test_acc']:.3f}"
            for r in sorted(records, key=lambda r: r["label"])
        )
        how = "through Ray" if plan.ray else "in this process (smoke; --ray for Ray)"
        report.line(
            f"suite fast-cifar10 on {plan.device} (bf16, channels_last): "
            f"{len(records)}/{len(runs)} runs completed in {seconds:.1f} s {how}; "
            f"test accuracy {accs} after {runs[0].epochs} epoch(s)"
        )


def check_packing(report: Report, plan: Plan, workdir: Path) -> None:
    from podbench.results import ResultsStore

    with report.check("packing", needs=30) as go:
        if not go:
            return
        seeds = ",".join(str(s) for s in range(plan.packing_runs))
        packed = [
            r.model_copy(update=plan.packed) for r in _load([*plan.packing_set, f"seeds=[{seeds}]"])
        ]
        together = _run_suite(packed, workdir / "packed", plan, None)
        alone = _run_suite(packed, workdir / "alone", plan, 1)
        # runs in flight on average: the runs' own wall times over the wall time of all of them
        records = list(ResultsStore(workdir / "packed").records())
        overlap = sum(float(r["wall_time_s"]) for r in records) / together
        shares = ", ".join(f"{k}={v:g}" for k, v in plan.packed.items())
        how = "" if plan.ray else " [in this process, one after another: smoke; --ray for Ray]"
        speedup = alone / together
        text = (
            f"packing: {len(packed)} runs at {shares} together {together:.1f} s, one at "
            f"a time {alone:.1f} s; speed-up {speedup:.2f}x (bound {plan.packing_min_speedup:g}"
            f"x), {overlap:.2f} runs in flight on average (bound {plan.packing_min_overlap:g}){how}"
        )
        if speedup < plan.packing_min_speedup or overlap < plan.packing_min_overlap:
            report.fail("FAIL", text)
        else:
            report.line(text)


def _train(overrides: list[str]) -> dict[str, Any]:
    from podbench.engine import train_run

    (run,) = _load(overrides)
    record = train_run(run)
    if record["status"] != "completed":
        raise RuntimeError(f"{run.label} run {record['status']}: {record['error']['message']}")
    return record


def check_time_to_target(report: Report, plan: Plan) -> None:
    for loss in plan.target_losses:
        name = f"time to {plan.target:.0%} ({loss})"
        with report.check(name, needs=10) as go:
            if not go:
                continue
            best = (0.0, 0)
            for epochs in plan.budgets:
                if report.left() < 10:
                    report.fail(
                        "SKIP",
                        f"{name}: no time left for the {epochs}-epoch budget; "
                        f"best {best[0]:.2%} at {best[1]} epochs",
                    )
                    break
                record = _train(
                    [
                        *plan.target_set,
                        f"losses=[{FAST_CIFAR10_ENTRY.get(loss, loss)}]",
                        "seeds=[0]",
                        f"epochs={epochs}",
                    ]
                )
                acc = record["final_test_acc"]
                best = max(best, (acc, epochs))
                if acc >= plan.target:
                    seconds = sum(h["seconds"] for h in record["history"])
                    report.line(
                        f"{name}: {seconds:.1f} s of training and evaluation "
                        f"({epochs} epoch(s), {record['images_per_s']:,.0f} images/s; final "
                        f"test accuracy {acc:.2%}; run wall {record['wall_time_s']:.1f} s)"
                        f" with fastnet on {plan.dataset}"
                    )
                    break
            else:
                report.fail(
                    "MISS",
                    f"{name}: not reached with budgets {plan.budgets} epochs; "
                    f"best {best[0]:.2%} at {best[1]} epochs",
                )


def check_compile(report: Report, plan: Plan) -> None:
    """The first compiled run compiles; the second, a new network of the same architecture,
    must compile no new graph (TorchDynamo reuses the code compiled for the first)."""
    from torch._dynamo.utils import counters

    with report.check("compile", needs=plan.compile_needs_s) as go:
        if not go:
            return
        real_compile = torch.compile
        if plan.compile_backend is not None:  # inductor takes minutes on a CPU
            torch.compile = lambda model, **kw: real_compile(model, backend=plan.compile_backend)
        try:
            base = [
                *plan.target_set,
                f"losses=[{FAST_CIFAR10_ENTRY['softmax']}]",
                "seeds=[0]",
                f"epochs={min(2, plan.budgets[0])}",
            ]
            first = _train([*base, "compile=true"])
            graphs = counters["stats"]["unique_graphs"]
            second = _train([*base, "compile=true", "seeds=[1]"])
            new_graphs = counters["stats"]["unique_graphs"] - graphs
            eager = _train([*base, "seeds=[1]"])
        finally:
            torch.compile = real_compile
        text = (
            f"compile: first run {first['wall_time_s']:.1f} s wall ({graphs} graphs compiled), "
            f"second {second['wall_time_s']:.1f} s ({new_graphs} new graphs; bound 0), eager "
            f"{eager['wall_time_s']:.1f} s; images/s compiled {second['images_per_s']:,.0f} "
            f"vs eager {eager['images_per_s']:,.0f} "
            f"({second['images_per_s'] / eager['images_per_s']:.2f}x)"
            f"{' [eager backend: smoke]' if plan.compile_backend else ''}"
        )
        if graphs == 0 or new_graphs > 0:
            report.fail(
                "FAIL",
                text
                + ("; nothing was compiled" if graphs == 0 else "; the second run compiled again"),
            )
        else:
            report.line(text)


# every step by name, in order (--only picks some; the environment line always comes first)
STEPS: dict[str, Callable[[Report, Plan, Path], None]] = {
    "conformance": lambda r, p, _w: check_conformance(r, p),
    "data": lambda r, p, _w: check_data_path(r, p),
    "overhead": lambda r, p, _w: check_overhead(r, p),
    "suite": check_suite,
    "packing": check_packing,
    "target": lambda r, p, _w: check_time_to_target(r, p),
    "compile": lambda r, p, _w: check_compile(r, p),
}


def _steps(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(STEPS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny data, a few steps")
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="CIFAR-10 JPEG tarball (default: ../shared/data/ of the repository)",
    )
    parser.add_argument(
        "--target", type=float, default=None, help="test accuracy to reach (GPU: 0.94; smoke: 0.3)"
    )
    parser.add_argument(
        "--budgets",
        type=lambda s: [int(v) for v in s.split(",")],
        default=None,
        help="epoch budgets tried in order, e.g. 10,20,40",
    )
    parser.add_argument(
        "--ray",
        action="store_true",
        help="smoke mode: run the suite and packing checks through Ray too",
    )
    parser.add_argument(
        "--deadline", type=float, default=None, help="seconds for everything (GPU: 460, smoke: 300)"
    )
    parser.add_argument(
        "--only",
        type=_steps,
        default=list(STEPS),
        metavar="STEP,...",
        help=f"run only these steps (of {', '.join(STEPS)})",
    )
    args = parser.parse_args(argv)
    args.data = args.data.expanduser().resolve()  # Ray workers run in other folders
    if not args.smoke and not args.data.is_file():
        print(f"FAIL data: {args.data} is missing; pass --data PATH to the CIFAR-10 JPEG tarball.")
        return 1
    plan = smoke_plan(args) if args.smoke else gpu_plan(args)
    if args.smoke:
        torch.set_num_threads(1)
    report = Report(plan.deadline_s)
    with tempfile.TemporaryDirectory(prefix="podbench-gpu-check-") as tmp:
        check_environment(report, plan)
        for name in args.only:
            STEPS[name](report, plan, Path(tmp))
    elapsed = time.perf_counter() - report.start
    if report.failures:
        report.line(f"result: {len(report.failures)} check(s) failed ({elapsed:.0f} s)")
        return 1
    report.line(f"result: every check passed ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
