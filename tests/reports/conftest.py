"""Synthetic results directories whose records are built through the one run-record model."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from podbench.record import RunRecord
from podbench.results import ResultsStore


def make_record(
    label: str,
    dataset: str,
    arch: str,
    seed: int,
    final_acc: float | None,
    *,
    status: str = "completed",
    epochs: int = 5,
    suite: str = "synthetic",
    error: dict[str, Any] | None = None,
    still_improving: bool | None = False,
) -> dict[str, Any]:
    """One run record (as JSON); the learning curve rises geometrically to ``final_acc``.

    ``still_improving`` is the flag as the record states it: False, the synthetic runs count as
    converged (their curves still gain ~3 points in the last epoch, which the record would
    otherwise flag); None has it computed from the curve.
    """
    run_id = hashlib.sha256(f"{label}|{dataset}|{arch}|{seed}".encode()).hexdigest()[:16]
    loss, _, variant = label.partition("[")
    history = []
    n_hist = epochs if status == "completed" else max(1, epochs // 2)
    for e in range(n_hist):
        acc = None if final_acc is None else final_acc * (1 - 0.5 ** (e + 1)) / (1 - 0.5**epochs)
        history.append(
            {
                "epoch": e,
                "train_loss": 1.0 / (e + 1),
                "parts": {"nac": 0.5 / (e + 1), "sc": 0.1},
                "train_acc": acc,
                "test_acc": acc,
                "val_acc": None,
                "lr": 0.1,
                "seconds": 1.5,
            }
        )
    completed = status == "completed"
    return RunRecord(
        run_id=run_id,
        suite=suite,
        label=label,
        loss=loss,
        variant=variant.rstrip("]") or None,
        dataset=dataset,
        arch=arch,
        feat_dim=32,
        seed=seed,
        spec={
            "suite": suite,
            "loss": loss,
            "variant": variant.rstrip("]") or None,
            "loss_params": {},
            "dataset": dataset,
            "data_root": None,
            "arch": arch,
            "feat_dim": 32,
            "seed": seed,
            "epochs": epochs,
            "batch_size": 128,
            "optimizer": "sgd",
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "nesterov": False,
            "schedule": "multistep",
            "milestones": [3],
            "gamma": 0.1,
            "grad_clip": None,
            "amp": "off",
            "channels_last": False,
            "compile": False,
            "device": "cpu",
            "eval_split": "test",
            "limit_train": None,
            "limit_eval": None,
            "max_steps": None,
            "cpus": 1,
            "gpus": 0,
            "checkpoint": False,
        },
        status=status,
        error=error,
        history=history,
        final_test_acc=final_acc if completed else None,
        best_test_acc=final_acc if completed else None,
        epochs_completed=n_hist,
        still_improving=still_improving,
        wall_time_s=10.0 + seed,
        images_per_s=1500.0,
        geometry=(
            {
                "mean_cos_to_center": 0.9,
                "min_interclass_angle_deg": 85.0 + seed,
                "mean_abs_offdiag_corr": 0.05,
                "mean_feature_norm": 7.0,
            }
            if completed
            else None
        ),
        env={
            "podbench": "0.1.0",
            "torch": "2.14.1",
            "python": "3.11.7",
            "device": "cpu",
            "git_commit": "abc123",
            "hostname": "ci",
            "ray": "2.60.0",
        },
        started_at="2026-11-28T14:00:00+00:00",
        finished_at="2026-11-28T14:00:40+00:00",
    ).to_json_dict()


def write_results(root: Path, records: list[dict[str, Any]], suite_yaml: str | None = None) -> Path:
    """Write records as RESULTS/runs/<run_id>.json (and suite.yaml) and return RESULTS."""
    store = ResultsStore(root)
    store.runs_dir.mkdir(parents=True, exist_ok=True)
    for rec in records:
        store.write_record(rec)
    if suite_yaml is not None:
        (root / "suite.yaml").write_text(suite_yaml, encoding="utf-8")
    return root


@pytest.fixture
def results_factory(tmp_path: Path) -> Callable[..., Path]:
    """Build a results directory from a {(label, dataset, arch): [acc per seed]} table."""

    def build(
        table: dict[tuple[str, str, str], list[float | None]],
        *,
        extra: list[dict[str, Any]] = (),  # type: ignore[assignment]
        name: str = "results",
        suite_yaml: str | None = "name: synthetic\n",
    ) -> Path:
        records = [
            make_record(label, ds, arch, seed, acc)
            for (label, ds, arch), accs in table.items()
            for seed, acc in enumerate(accs)
        ]
        return write_results(tmp_path / name, records + list(extra), suite_yaml)

    return build


BLOCKS = 7  # Wilcoxon-Holm over two comparisons reaches p < 0.05 only from 7 blocks (2 * 2/2^7)


def block_table(seed: int = 0, n_blocks: int = BLOCKS) -> dict[tuple[str, str, str], list[float]]:
    """Three methods on ``n_blocks`` blocks, three seeds: 'pod' best, 'ce' worst, 'center'
    between."""
    rng = np.random.default_rng(seed)
    base = {"pod": 0.92, "center": 0.90, "ce": 0.88}
    table = {}
    for b in range(n_blocks):
        for label, acc in base.items():
            table[(label, f"data{b}", "small-cnn")] = list(
                np.round(acc - 0.01 * b + rng.normal(0, 0.003, 3), 4)
            )
    return table


@pytest.fixture(scope="session")
def record_maker() -> Callable[..., dict[str, Any]]:
    """The run-record builder, for tests that assemble their own results directory."""
    return make_record


@pytest.fixture(scope="session")
def results_writer() -> Callable[..., Path]:
    """Writes records (and suite.yaml) into a results directory."""
    return write_results


@pytest.fixture(scope="session")
def many_blocks() -> dict[tuple[str, str, str], list[float]]:
    """Three methods, seven blocks, three seeds each."""
    return block_table()
