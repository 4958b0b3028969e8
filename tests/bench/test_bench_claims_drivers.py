"""Several ``podbench run`` on one results folder: each run trained once; a killed driver's run taken over.

Real drivers in subprocesses, each with its own embedded Ray (1 CPU, no dashboard). The runs use
the ``test-gated`` plugin: each training start leaves a file ``<seed>.<pid>.<n>`` and then waits
for a gate file, so the test knows both drivers are training at the same time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PODBENCH = str(Path(sys.executable).with_name("podbench"))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    return env


def _suite(tmp_path: Path, seeds: int) -> tuple[Path, Path, Path]:
    """A suite of ``seeds`` gated runs; returns (suite file, starts folder, gate file)."""
    starts, gate = tmp_path / "starts", tmp_path / "gate"
    starts.mkdir()
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        textwrap.dedent(f"""
        name: claims-digits
        datasets: [digits]
        archs: [mlp]
        feat_dim: 16
        seeds: {seeds}
        epochs: 1
        batch_size: 64
        limit_train: 256
        limit_eval: 128
        lr: 0.05
        device: cpu
        imports: [engine_test_plugins]
        losses: [{{name: test-gated, params: {{folder: "{starts}", gate: "{gate}"}}}}]
    """)
    )
    return suite, starts, gate


def _driver(suite: Path, results: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PODBENCH, "run", str(suite), "--results", str(results), "--num-cpus", "1", "--no-report"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        start_new_session=True,
    )


def _wait_for_starts(starts: Path, n: int, drivers: list[subprocess.Popen[str]]) -> list[str]:
    deadline = time.monotonic() + 300
    while len(names := sorted(p.name for p in starts.iterdir())) < n:
        for d in drivers:
            assert d.poll() is None, d.communicate()[0]
        assert time.monotonic() < deadline, f"only {names} started"
        time.sleep(0.2)
    return names


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))]


def _count(output: str, what: str) -> int:
    """N from the driver's summary line '... N <what> ...'."""
    line = next(x for x in output.splitlines() if x.startswith("results: "))
    head = line.split(f" {what}")[0]
    return int(head.rsplit(" ", 1)[-1].lstrip("("))


def test_two_drivers_on_one_folder_train_each_run_once(tmp_path: Path) -> None:
    suite, starts, gate = _suite(tmp_path, seeds=4)
    results = tmp_path / "results"
    drivers = [_driver(suite, results), _driver(suite, results)]
    try:
        first = _wait_for_starts(starts, 2, drivers)  # both drivers are training, one run each
        assert len({name.split(".")[0] for name in first}) == 2  # two different runs
        shown = subprocess.run(
            [PODBENCH, "results", str(results)],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=120,
            check=False,
        )
        assert shown.returncode == 0, shown.stderr
        assert "in progress: 2 run(s)" in shown.stdout and shown.stdout.count("alive") == 2
        for d in drivers:  # who holds them: each driver by its pid
            assert f"(pid {d.pid})" in shown.stdout, shown.stdout
        gate.write_text("")
        outputs = [d.communicate(timeout=400)[0] for d in drivers]
    finally:
        for d in drivers:
            if d.poll() is None:
                os.killpg(d.pid, signal.SIGKILL)
    for d, out in zip(drivers, outputs, strict=True):
        assert d.returncode == 0, out
    records = _records(results)
    assert len(records) == 4 and {r["status"] for r in records} == {"completed"}
    assert sorted(r["seed"] for r in records) == [0, 1, 2, 3]
    trained = sorted(int(name.split(".")[0]) for name in os.listdir(starts))
    assert trained == [0, 1, 2, 3]  # every run started exactly once, over both drivers
    done = [_count(out, "completed") for out in outputs]
    elsewhere = [_count(out, "trained by another driver") for out in outputs]
    assert sum(done) == 4 and min(done) >= 1
    assert elsewhere == [done[1], done[0]]  # each driver saw the other's runs finish
    assert not list((results / "claims").glob("*.claim"))  # every claim released


def test_a_killed_drivers_run_is_taken_over_by_the_next_driver(tmp_path: Path) -> None:
    suite, starts, gate = _suite(tmp_path, seeds=2)
    results = tmp_path / "results"
    killed = _driver(suite, results)
    try:
        (held,) = _wait_for_starts(starts, 1, [killed])
        claims = list((results / "claims").glob("*.claim"))
        assert len(claims) == 1
        claim = json.loads(claims[0].read_text())
        assert f"(pid {killed.pid})" in claim["driver"]
    finally:
        # the driver and its embedded Ray die at once, as under the OOM killer: no chance to
        # release anything
        os.killpg(killed.pid, signal.SIGKILL)
        killed.communicate(timeout=60)
    # Ray's worker (not in the driver's process group) follows its raylet within seconds; were
    # the gate open, it would finish its run under its claim and the next driver skip the run
    deadline = time.monotonic() + 120
    while _running(claim["holder"]["pid"]):
        assert time.monotonic() < deadline, "the killed driver's worker lives on"
        time.sleep(0.5)
    assert claims[0].exists()  # the claim outlives its driver ...
    assert not (results / "runs").is_dir() or not list((results / "runs").glob("*.json"))
    gate.write_text("")
    after = subprocess.run(
        [PODBENCH, "run", str(suite), "--results", str(results), "--num-cpus", "1", "--no-report"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=400,
        check=False,
    )
    assert after.returncode == 0, after.stdout + after.stderr
    # ... and the next driver takes it over from the dead holder, naming it
    assert (
        f"taking over run {claim['key']}" in after.stdout and f"(pid {killed.pid})" in after.stdout
    )
    records = _records(results)
    assert len(records) == 2 and {r["status"] for r in records} == {"completed"}
    assert _count(after.stdout, "completed") == 2
    seeds = sorted(int(name.split(".")[0]) for name in os.listdir(starts))
    assert seeds == sorted([0, 1, int(held.split(".")[0])])  # the killed run started again
    assert not list((results / "claims").glob("*.claim"))
