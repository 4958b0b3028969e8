"""Ray workers are reused from run to run of a suite, and a run in a reused worker computes what it
computes in a fresh process: no global state (torch threads, deterministic kernels, cudnn flags,
RNG, the loss registry) leaks from one run into the next."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from podbench.suite_spec import SuiteSpec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

COMMON = {
    "datasets": ["digits"],
    "archs": ["mlp"],
    "feat_dim": [16],
    "epochs": 2,
    "batch_size": 64,
    "schedule": "constant",
    "cpus": 1,
}

FRESH = """
import json, sys, torch
from podbench.runs import RunSpec
from podbench.worker import train_in_worker
run = RunSpec.model_validate_json(sys.argv[1])
torch.set_num_threads(2)  # the run takes 1 (its cpus) and must give the 2 back
record = train_in_worker(run)
print(json.dumps({"record": record, "threads": torch.get_num_threads(),
                  "deterministic": torch.are_deterministic_algorithms_enabled()}))
"""


def _fingerprint(record: dict) -> list:
    """What a run computed: every epoch's losses and accuracies, and the final test accuracy."""
    keys = ("train_loss", "train_acc", "test_acc", "parts")
    return [[h.get(k) for k in keys] for h in record["history"]] + [record["final_test_acc"]]


def test_two_runs_share_a_worker_and_the_second_equals_a_fresh_process_run(tmp_path: Path) -> None:
    import ray

    from podbench.executor import run_suite
    from podbench.results import ResultsStore

    # the first run changes what it can: another loss, its own seed, deterministic kernels off;
    # the second is checked against the same run in a new process
    first = SuiteSpec.model_validate(
        {"name": "first", "losses": ["pod"], "seeds": [3], "deterministic": False, **COMMON}
    ).expand()
    second = SuiteSpec.model_validate(
        {"name": "second", "losses": ["softmax"], "seeds": [0], **COMMON}
    ).expand()
    assert first[0].deterministic is False and second[0].deterministic is True
    if ray.is_initialized():
        ray.shutdown()
    try:
        outcome = run_suite(
            [*first, *second], tmp_path, num_cpus=1, max_concurrent=1, rich_display=False
        )
    finally:
        ray.shutdown()
    assert outcome.completed == 2, outcome
    store = ResultsStore(tmp_path)
    a, b = (store.read_record(r.run_id) for r in (first[0], second[0]))
    assert a["env"]["pid"] == b["env"]["pid"], "the second run got a new worker process"
    assert b["started_at"] >= a["finished_at"]

    fresh = subprocess.run(
        [sys.executable, "-c", FRESH, second[0].model_dump_json()],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    alone = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert _fingerprint(b) == _fingerprint(alone["record"])
    assert b["env"]["threads"] == alone["record"]["env"]["threads"] == 1
    assert b["env"]["deterministic"] is True and alone["record"]["env"]["deterministic"] is True
    # after a run, the process's torch state is what it was before it
    assert alone["threads"] == 2 and alone["deterministic"] is False
