"""Suites through Ray: embedded Ray, resume after a killed driver, dying workers, a real cluster.

Every test runs the ``podbench`` console script in a subprocess, as a user would.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

HERE = Path(__file__).resolve().parent
PODBENCH = str(Path(sys.executable).with_name("podbench"))
RAY = str(Path(sys.executable).with_name("ray"))

pytestmark = pytest.mark.slow

SMALL = """
name: small-digits
losses: [softmax, pod]
datasets: [digits]
archs: [mlp]
feat_dim: 16
seeds: 2
epochs: 1
batch_size: 64
lr: 0.05
device: cpu
"""


def _env(token: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if token is not None:  # our own cluster's token: ~/.ray/auth_token is shared by everyone
        env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
        env.pop("RAY_AUTH_TOKEN_PATH", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    env.pop("RAY_ADDRESS", None)  # never join a cluster by accident
    return env


def _suite(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _podbench(*args: str, timeout: float = 240, token: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PODBENCH, *args], capture_output=True, text=True, env=_env(token),
                          timeout=timeout, check=False)


def _records(results: Path) -> dict[str, dict]:
    runs = results / "runs"
    return {p.stem: json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))}


@pytest.mark.parametrize("how", ["kill", "ctrl-c"])
def test_small_suite_embedded_ray_and_resume_after_killed_driver(tmp_path: Path, how: str) -> None:
    suite = _suite(tmp_path, SMALL)
    results = tmp_path / "results"
    # one run at a time, so that the driver can be killed between two finished runs
    driver = subprocess.Popen(
        [PODBENCH, "run", str(suite), "--results", str(results), "--num-cpus", "1",
         "--max-concurrent", "1", "--no-report"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not list((results / "runs").glob("*.json")):
        assert driver.poll() is None, driver.stdout.read() if driver.stdout else ""
        time.sleep(0.2)
    if how == "kill":
        os.kill(driver.pid, signal.SIGKILL)  # the driver dies without any chance to clean up
    else:
        os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
    output, _ = driver.communicate(timeout=60)
    if how == "ctrl-c":
        assert driver.returncode != 0, output  # an interrupted suite is not a success
    before = {p.name: p.read_bytes() for p in (results / "runs").glob("*.json")}
    assert 1 <= len(before) < 4
    time.sleep(3)  # a worker of the dead driver must not keep writing (Ray fate-shares it)

    proc = _podbench("run", str(suite), "--results", str(results), "--num-cpus", "2", "--no-report")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = _records(results)
    assert len(records) == 4  # none lost, none duplicated (one file per run_id)
    for name, content in before.items():
        assert (results / "runs" / name).read_bytes() == content  # finished runs were not redone
    assert f"{len(before)} skipped as already done" in proc.stdout
    assert f"{4 - len(before)} completed" in proc.stdout
    assert str(results) in proc.stdout and "results.csv" in proc.stdout
    assert all(r["status"] == "completed" for r in records.values())
    assert {(r["label"], r["seed"]) for r in records.values()} == {
        ("softmax", 0), ("softmax", 1), ("pod", 0), ("pod", 1)}
    for run_id, record in records.items():
        assert record["run_id"] == run_id and record["epochs_completed"] == 1
        assert 0.1 < record["final_test_acc"] <= 1.0  # better than chance on 10 classes
        assert record["env"]["threads"] == 1  # torch threads = the run's CPUs
    assert not [p for p in (results / "runs").iterdir() if not p.name.endswith(".json")]
    # a per-run line was printed for each finished run
    assert sum(line.count("done     ") for line in proc.stdout.splitlines()) == 4 - len(before)

    table = pd.read_csv(results / "results.csv")
    assert len(table) == 4 and set(table["status"]) == {"completed"}
    assert _podbench("validate", str(results / "suite.yaml")).returncode == 0  # provenance reruns

    again = _podbench("run", str(suite), "--results", str(results))  # with the report this time
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert len(_records(results)) == 4
    assert f"report: {results / 'report' / 'report.html'}" in again.stdout
    assert (results / "report" / "report.html").is_file()

    summary = _podbench("results", str(results))
    assert summary.returncode == 0, summary.stderr
    assert "pod" in summary.stdout and "softmax" in summary.stdout


def test_dying_worker_retried_raising_plugin_failed_nan_diverged(tmp_path: Path) -> None:
    marker = tmp_path / "died-once"
    suite = _suite(tmp_path, SMALL + textwrap.dedent(f"""
        imports: [engine_test_plugins]
        seeds: 1
        limit_train: 256
        limit_eval: 128
        losses:
          - softmax
          - test-raising
          - test-nan
          - {{name: test-die-once, params: {{marker: "{marker}"}}}}
          - test-die-always
    """).replace("losses: [softmax, pod]\n", "").replace("seeds: 2\n", ""))
    results = tmp_path / "results"
    proc = _podbench("run", str(suite), "--results", str(results), "--num-cpus", "2",
                     "--max-failures", "1", "--no-report")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # some runs failed: not a clean exit
    by_label = {r["label"]: r for r in _records(results).values()}
    assert set(by_label) == {"softmax", "test-raising", "test-nan", "test-die-once", "test-die-always"}
    assert by_label["softmax"]["status"] == "completed"
    raising = by_label["test-raising"]
    assert raising["status"] == "failed" and "deliberate plugin failure" in raising["error"]["traceback"]
    nan = by_label["test-nan"]
    assert nan["status"] == "diverged" and nan["error"]["epoch"] == 0
    assert marker.is_file()  # the first try did die ...
    assert by_label["test-die-once"]["status"] == "completed"  # ... and the retry finished it
    always = by_label["test-die-always"]
    assert always["status"] == "failed" and always["error"]["type"] == "WorkerDied"
    assert "2 completed, 1 diverged, 2 failed" in proc.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def ray_cluster(tmp_path: Path):
    """A real one-CPU Ray head on loopback, stopped by killing its own process group.

    ``ray stop`` would kill every Ray process on the machine (other tests' embedded clusters
    included), so the head runs with --block in its own session and only that session is ended.
    """
    port = _free_port()
    token = secrets.token_hex(32)
    temp_dir = Path("/tmp") / f"podbench-ray-{os.getpid()}-{port}"  # short: socket paths are limited
    head = subprocess.Popen(
        [RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
         "--include-dashboard=false", f"--temp-dir={temp_dir}", "--block"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(token),
        start_new_session=True,
    )
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert head.poll() is None, head.stdout.read() if head.stdout else ""
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        else:
            pytest.fail("the Ray head did not start within 90 s")
        yield address, token
    finally:
        for sig, wait in ((signal.SIGINT, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            try:
                head.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # whatever the head started in its session goes too
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)


def test_suite_on_a_real_cluster_with_address(tmp_path: Path, ray_cluster: tuple[str, str]) -> None:
    address, token = ray_cluster
    suite = _suite(tmp_path, SMALL.replace("seeds: 2", "seeds: 1"))
    results = tmp_path / "results"
    proc = _podbench("run", str(suite), "--results", str(results), "--address", address,
                     "--no-report", token=token)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = _records(results)
    assert len(records) == 2 and all(r["status"] == "completed" for r in records.values())


def test_unreachable_address_is_a_user_error(tmp_path: Path) -> None:
    suite = _suite(tmp_path, SMALL)
    proc = _podbench("run", str(suite), "--results", str(tmp_path / "r"), "--address",
                     f"127.0.0.1:{_free_port()}", "--no-report", timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--address" in proc.stderr and "Traceback" not in proc.stderr
