"""Built-in suites smoke-run for a few steps: paper suites on substitute data, CPU suites on real data."""

from __future__ import annotations

from pathlib import Path

import pytest

from podbench.engine import train_run
from podbench.spec_files import builtin_suites
from podbench.suite_spec import load_suite

SMOKE = [
    "epochs=1",
    "max_steps=2",
    "batch_size=16",
    "limit_train=64",
    "limit_eval=32",
    "seeds=[0]",
    "device=cpu",
    "gpus=0",
    "cpus=1",
]
PAPER = sorted(n for n in builtin_suites() if n.startswith("paper-"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", PAPER)
def test_paper_suite_smoke_runs_every_loss_on_synthetic_data(name: str) -> None:
    # the authors' optimiser, schedule and losses; synthetic 16 px data (native size), a small CNN
    spec = load_suite(
        name, [*SMOKE, "datasets=[synthetic]", "archs=[small-cnn]", "feat_dim=8", "image_size=null"]
    )
    runs = spec.expand()
    assert len(runs) == 10
    for run in runs:
        record = train_run(run)
        assert record["status"] == "completed", (run.label, record["error"])
        assert record["history"][0]["lr"] == pytest.approx(0.1)


def test_paper_architecture_smoke_runs() -> None:
    # ResNet-50 with the small-image stem, as in every paper suite, for two steps
    spec = load_suite(
        "paper-cifar10",
        [
            *SMOKE,
            "datasets=[synthetic]",
            "feat_dim=8",
            "losses=[pod]",
            "batch_size=4",
            "limit_eval=8",
        ],
    )
    (run,) = spec.expand()
    assert run.arch == "resnet50"
    record = train_run(run)
    assert record["status"] == "completed", record["error"]


@pytest.mark.parametrize("name", ["quickstart", "pod-ablation"])
def test_cpu_suites_smoke_run_on_real_fashion_mnist(name: str) -> None:
    spec = load_suite(name, [*SMOKE, "max_steps=1"])
    runs = spec.expand()
    assert {r.dataset for r in runs} == {"fashion-mnist"}
    for run in runs:
        record = train_run(run)
        assert record["status"] == "completed", (run.label, record["error"])


@pytest.mark.parametrize(
    ("name", "cifar_entries"), [("cpu-benchmark", (5, 6, 7)), ("cpu-benchmark-2", (4, 5, 6, 7))]
)
def test_cpu_benchmark_smoke_runs_one_step_per_block(name: str, cifar_entries: tuple) -> None:
    # CIFAR-10 from the shared data next to the checkout (or next to the folder of worktrees)
    root = Path(__file__).resolve().parents[2]
    found = [p / "shared/data/cifar10-jpeg-q75.tar.gz" for p in (root.parent, root.parent.parent)]
    cifar = next((p for p in found if p.is_file()), None)
    if cifar is None:
        pytest.skip(f"no CIFAR-10 tarball at {found[0]}")
    spec = load_suite(
        name,
        [
            "max_steps=1",
            "seeds=[0]",
            "losses=[pod]",
            "cpus=1",
            "device=cpu",
            *(f"datasets.{i}.data_root={cifar}" for i in cifar_entries),
        ],
    )
    assert {spec.datasets[i].name for i in cifar_entries} == {"cifar10"}
    runs = spec.expand()
    assert len({(r.dataset, r.arch) for r in runs}) == len(runs) == 8
    for run in runs:
        record = train_run(run.model_copy(update={"epochs": 1, "limit_eval": 64}))
        assert record["status"] == "completed", (run.dataset, run.arch, record["error"])
