"""A suite mixing POD, pytorch-metric-learning losses and a timm network, end to end.

``podbench run`` in a subprocess, as a user runs it (embedded Ray, one CPU): every run completes,
the report compares the three methods, and each run's TensorBoard curves equal its record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("pytorch_metric_learning")
pytest.importorskip("timm")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

from podbench.runs import RunSpec  # noqa: E402
from podbench.tensorboard import run_log_dir  # noqa: E402

pytestmark = pytest.mark.slow
PODBENCH = str(Path(sys.executable).with_name("podbench"))

SUITE = """
name: libraries
losses: [pod, pml:ProxyAnchorLoss, pml:SubCenterArcFaceLoss]
datasets: [digits]
archs: [timm:resnet18]
feat_dim: 16
seeds: 2
epochs: 2
max_steps: 3
batch_size: 32
limit_train: 200
limit_eval: 100
optimizer: adamw
lr: 0.001
weight_decay: 0.0
schedule: constant
device: cpu
cpus: 1
"""


def test_suite_of_pod_pml_and_timm_runs_and_is_reported(tmp_path: Path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text(textwrap.dedent(SUITE))
    results = tmp_path / "results"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)  # never join a cluster by accident
    proc = subprocess.run(
        [PODBENCH, "run", str(suite), "--results", str(results), "--num-cpus", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))]
    assert len(records) == 6
    assert {(r["label"], r["arch"]) for r in records} == {
        ("pod", "timm:resnet18"),
        ("pml:ProxyAnchorLoss", "timm:resnet18"),
        ("pml:SubCenterArcFaceLoss", "timm:resnet18"),
    }
    for record in records:
        assert record["status"] == "completed", record["error"]
        assert record["epochs_completed"] == 2 and 0.0 <= record["final_test_acc"] <= 1.0
    report = (results / "report" / "report.html").read_text()
    for label in ("pod", "pml:ProxyAnchorLoss", "pml:SubCenterArcFaceLoss", "timm:resnet18"):
        assert label in report
    for record in records:  # each run's curves, read back by TensorBoard's reader
        folder = run_log_dir(results, RunSpec.model_validate(record["spec"]))
        acc = event_accumulator.EventAccumulator(str(folder))
        acc.Reload()
        assert [(e.step, e.value) for e in acc.Scalars("accuracy/test")] == [
            (h["epoch"], pytest.approx(h["test_acc"])) for h in record["history"]
        ]
        assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx(
            [h["train_loss"] for h in record["history"]], rel=1e-6
        )
    assert len(list((results / "tensorboard").glob("*/*"))) == 6
