"""Suites through Ray: embedded Ray, resume after a killed driver, dying workers, a real cluster.

Every test runs the ``podbench`` console script in a subprocess, as a user would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest

HERE = Path(__file__).resolve().parent
PODBENCH = str(Path(sys.executable).with_name("podbench"))
# the `ray` command of this environment (a venv that borrows Ray's package may lack the script)
_RAY_SCRIPT = Path(sys.executable).with_name("ray")
RAY = [str(_RAY_SCRIPT)] if _RAY_SCRIPT.exists() else [sys.executable, "-m", "ray.scripts.scripts"]

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


# Ray's token variables; a user's shell has none of them unless they set them
_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _env(home: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a user's shell; ``home`` stands for another user or machine."""
    env = {k: v for k, v in os.environ.items() if k not in _AUTH_VARS}
    if home is not None:  # ~/.ray/auth_token is per HOME: the real one is left alone
        home.mkdir(parents=True, exist_ok=True)
        env["HOME"] = str(home)
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    env.pop("RAY_ADDRESS", None)  # never join a cluster by accident
    return env


def _suite(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _podbench(
    *args: str, timeout: float = 240, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PODBENCH, *args],
        capture_output=True,
        text=True,
        env=env or _env(),
        timeout=timeout,
        check=False,
    )


def _records(results: Path) -> dict[str, dict]:
    runs = results / "runs"
    return {p.stem: json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))}


def _session_pids(sid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[3]) == sid:  # after the name: state, ppid, pgrp, session
            pids.append(int(stat.parent.name))
    return pids


def _wait_for_session_end(sid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _session_pids(sid) and time.monotonic() < deadline:
        time.sleep(0.5)


@pytest.mark.parametrize("how", ["kill", "ctrl-c"])
def test_small_suite_embedded_ray_and_resume_after_killed_driver(tmp_path: Path, how: str) -> None:
    suite = _suite(tmp_path, SMALL)
    results = tmp_path / "results"
    # one run at a time, so that the driver can be killed between two finished runs
    driver = subprocess.Popen(
        [
            PODBENCH,
            "run",
            str(suite),
            "--results",
            str(results),
            "--num-cpus",
            "1",
            "--max-concurrent",
            "1",
            "--no-report",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
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
    # a reused worker of the dead driver may finish the run it had started (and write its whole
    # record) before Ray's fate-sharing ends it: the records are taken once the driver's
    # processes (its session: Ray's head and workers) are gone
    _wait_for_session_end(driver.pid, timeout=90)
    time.sleep(1)
    before = {p.name: p.read_bytes() for p in (results / "runs").glob("*.json")}
    assert 1 <= len(before) < 4

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
        ("softmax", 0),
        ("softmax", 1),
        ("pod", 0),
        ("pod", 1),
    }
    for run_id, record in records.items():
        assert record["run_id"] == run_id and record["epochs_completed"] == 1
        assert 0.1 < record["final_test_acc"] <= 1.0  # better than chance on 10 classes
        assert record["env"]["threads"] == 1  # torch threads = the run's CPUs
    assert not [p for p in (results / "runs").iterdir() if not p.name.endswith(".json")]
    assert not list((results / "claims").iterdir())  # the killed driver's claims taken, released
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
    # (SMALL's own losses and seeds removed: a key given twice is refused)
    suite = _suite(
        tmp_path,
        SMALL.replace("losses: [softmax, pod]\n", "").replace("seeds: 2\n", "")
        + textwrap.dedent(f"""
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
    """),
    )
    results = tmp_path / "results"
    proc = _podbench(
        "run",
        str(suite),
        "--results",
        str(results),
        "--num-cpus",
        "2",
        "--max-failures",
        "1",
        "--no-report",
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr  # some runs failed: not a clean exit
    by_label = {r["label"]: r for r in _records(results).values()}
    assert set(by_label) == {
        "softmax",
        "test-raising",
        "test-nan",
        "test-die-once",
        "test-die-always",
    }
    assert by_label["softmax"]["status"] == "completed"
    raising = by_label["test-raising"]
    assert (
        raising["status"] == "failed"
        and "deliberate plugin failure" in raising["error"]["traceback"]
    )
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
def ray_nodes(tmp_path: Path):
    """Starts ``ray start`` nodes as a user would, killed at teardown.

    ``ray stop`` would stop every Ray on the machine (other tests' embedded ones too), so each node
    runs with --block in its own session and teardown ends only those sessions. The flags added to
    the user's command keep the node apart (temp dir, no dashboard); none touches authentication.
    Teardown kills each session outright: a head given SIGTERM outlived a 15 s wait every time,
    and nothing a test checks happens after its last assertion.
    """
    temp_dir = Path("/tmp") / f"podbench-ray-{os.getpid()}-{_free_port()}"  # short: socket paths
    nodes: list[subprocess.Popen] = []

    def start(*args: str, env: dict[str, str], prefix: Sequence[str] = ()) -> Path:
        log = tmp_path / f"node-{len(nodes)}.log"
        apart = ["--include-dashboard=false", f"--temp-dir={temp_dir}"] if "--head" in args else []
        with log.open("w") as out:
            nodes.append(
                subprocess.Popen(
                    [*prefix, *RAY, "start", *args, "--block", *apart],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            )
        return log

    try:
        yield start
    finally:
        for node in reversed(nodes):  # workers first, then the head
            try:  # the node and whatever it started in its session
                os.killpg(node.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            node.wait(timeout=30)
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)


def _wait_for(log: Path, text: str, timeout: float = 90) -> str:
    """The node's log once it contains ``text`` (fails the test after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = log.read_text()
        if text in content:
            return content
        time.sleep(0.5)
    pytest.fail(f"{text!r} not in {log} after {timeout} s:\n{log.read_text()[-3000:]}")


def _start_head(start, home: Path) -> str:
    """``ray start --head --port=P --num-cpus=1`` as the README says; returns HOST:PORT."""
    port = _free_port()
    log = start("--head", f"--port={port}", "--num-cpus=1", env=_env(home))
    _wait_for(log, "Ray runtime started")
    return f"127.0.0.1:{port}"


TWO_RUNS = SMALL.replace("seeds: 2", "seeds: 1")
ONE_RUN = TWO_RUNS.replace("losses: [softmax, pod]", "losses: [softmax]")


def _run_one(
    tmp_path: Path, address: str, env: dict[str, str], name: str, suite_text: str = ONE_RUN
) -> subprocess.CompletedProcess[str]:
    suite = tmp_path / f"{name}.yaml"
    suite.write_text(textwrap.dedent(suite_text))
    return _podbench(
        "run",
        str(suite),
        "--results",
        str(tmp_path / name),
        "--address",
        address,
        "--no-report",
        env=env,
    )


def _one_sentence(proc: subprocess.CompletedProcess[str]) -> str:
    """The error of a command that must fail with one sentence and exit status 2."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and proc.stderr.strip().endswith(errors[0]), proc.stderr
    return errors[0]


def _completed(proc: subprocess.CompletedProcess[str], results: Path, n: int) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = _records(results)
    assert len(records) == n and all(r["status"] == "completed" for r in records.values())


def test_default_ray_start_cluster_with_token_through_address(tmp_path: Path, ray_nodes) -> None:
    head_home = tmp_path / "head-home"
    # any earlier local Ray on the head (ray.init, podbench's embedded runs) leaves this token
    # behind; `ray get-auth-token --generate` writes it the same way
    subprocess.run(
        [*RAY, "get-auth-token", "--generate"],
        env=_env(head_home),
        check=True,
        capture_output=True,
        timeout=60,
    )
    token = (head_home / ".ray" / "auth_token").read_text()
    address = _start_head(ray_nodes, head_home)
    # Ray's default for this head
    assert "Token authentication is enabled" in (tmp_path / "node-0.log").read_text()
    # a worker joins as the README says
    worker = ray_nodes(
        f"--address={address}", "--num-cpus=1", env=_env(head_home, RAY_AUTH_MODE="token")
    )
    _wait_for(worker, "Ray runtime started")

    proc = _run_one(tmp_path, address, _env(head_home), "on-head", TWO_RUNS)
    _completed(proc, tmp_path / "on-head", 2)
    assert "InvalidAuthToken" not in proc.stderr

    # another machine with the cluster's token, each way Ray reads it
    copied = tmp_path / "copied_token"
    copied.write_text(token)
    other_default = tmp_path / "other-default"
    (other_default / ".ray").mkdir(parents=True)
    (other_default / ".ray" / "auth_token").write_text(token)
    for name, env in [
        ("default-file", _env(other_default)),
        ("token-variable", _env(tmp_path / "other-var", RAY_AUTH_TOKEN=token)),
        ("token-path", _env(tmp_path / "other-path", RAY_AUTH_TOKEN_PATH=str(copied))),
    ]:
        _completed(_run_one(tmp_path, address, env, name), tmp_path / name, 1)

    # no token anywhere (also through `podbench tune`), or a wrong one: one sentence, exit 2
    no_token = _podbench(
        "tune",
        "tune-quickstart",
        "--results",
        str(tmp_path / "t"),
        "--address",
        address,
        env=_env(tmp_path / "bare-home"),
        timeout=120,
    )
    wrong = _run_one(
        tmp_path, address, _env(tmp_path / "other-var", RAY_AUTH_TOKEN="0" * 64), "wrong"
    )
    for proc, says in [
        (no_token, "none was found on this machine"),
        (wrong, "rejected the authentication token from RAY_AUTH_TOKEN"),
    ]:
        error = _one_sentence(proc)
        assert says in error and "~/.ray/auth_token" in error and "nothing answers" not in error
    assert not (tmp_path / "wrong" / "runs").exists() or not _records(tmp_path / "wrong")


def test_default_ray_start_cluster_without_token(tmp_path: Path, ray_nodes) -> None:
    # a head that never ran Ray has no token: Ray starts the cluster without authentication
    address = _start_head(ray_nodes, tmp_path / "fresh-home")
    assert "Token authentication is disabled" in (tmp_path / "node-0.log").read_text()
    # a client that has a token of its own must not send it (the cluster would lose its actors)
    client_home = tmp_path / "client-home"
    subprocess.run(
        [*RAY, "get-auth-token", "--generate"],
        env=_env(client_home),
        check=True,
        capture_output=True,
        timeout=60,
    )
    _completed(_run_one(tmp_path, address, _env(client_home), "no-auth"), tmp_path / "no-auth", 1)


@pytest.fixture
def three_nodes(monkeypatch: pytest.MonkeyPatch):
    """Ray's own test cluster on this machine: a head without CPUs and two 1-CPU worker nodes.

    Each node is its own raylet; the test process only starts and removes them (it is no driver).
    """
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("PYTHONPATH", _env()["PYTHONPATH"])  # the nodes' workers import the plugins
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        yield cluster, workers
    finally:
        cluster.shutdown()


def test_a_node_lost_mid_suite_has_its_run_rerun_elsewhere(tmp_path: Path, three_nodes) -> None:
    cluster, (kept, lost) = three_nodes
    starts = tmp_path / "starts"
    starts.mkdir()
    suite = _suite(
        tmp_path,
        SMALL.replace("losses: [softmax, pod]\n", "")
        .replace("seeds: 2", "seeds: 4")
        .replace("batch_size: 64\n", "")
        + textwrap.dedent(f"""
        imports: [engine_test_plugins]
        losses: [{{name: test-slow, params: {{folder: "{starts}", seconds: 0.5}}}}]
        limit_train: 128
        limit_eval: 64
        batch_size: 16
    """),
    )
    results = tmp_path / "results"
    driver = subprocess.Popen(
        [
            PODBENCH,
            "run",
            str(suite),
            "--results",
            str(results),
            "--address",
            cluster.address,
            "--no-report",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not [p for p in starts.iterdir() if p.name.split(".")[1] == lost.node_id]:
            assert driver.poll() is None and time.monotonic() < deadline, (
                driver.stdout.read() if driver.stdout else ""
            )
            time.sleep(0.2)
        cluster.remove_node(lost, allow_graceful=False)  # the node is gone, mid-run
        output, _ = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 0, output
    records = _records(results)
    # none lost, none duplicated: one completed record per run of the suite
    assert len(records) == 4 and sorted(r["seed"] for r in records.values()) == [0, 1, 2, 3]
    assert all(r["status"] == "completed" for r in records.values()), output
    # every run started once, but the lost node's run, which started again on the other node
    by_seed: dict[int, list[str]] = {}
    for marker in starts.iterdir():
        seed, node, _ = marker.name.split(".")
        by_seed.setdefault(int(seed), []).append(node)
    lost_seeds = [seed for seed, nodes in by_seed.items() if lost.node_id in nodes]
    assert len(lost_seeds) == 1, by_seed
    assert sorted(by_seed[lost_seeds[0]]) == sorted([lost.node_id, kept.node_id])
    assert all(len(nodes) == 1 for seed, nodes in by_seed.items() if seed not in lost_seeds)
    by_record = {r["seed"]: r for r in records.values()}
    assert by_record[lost_seeds[0]]["env"]["ray_node"] == kept.node_id
    assert {r["env"]["ray_node"] for r in records.values()} <= {kept.node_id, lost.node_id}


def _mount_namespaces() -> bool:
    try:
        probe = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "true"],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


@pytest.mark.skipif(not _mount_namespaces(), reason="needs mount namespaces (unshare -m)")
@pytest.mark.parametrize(
    ("mount", "says"),
    [
        # the node sees an empty disk of its own at that path: results would never reach the driver
        ("mount -t tmpfs none {folder}", "that node does not see the driver's results folder"),
        # the node sees the folder, read-only
        (
            "mount --bind {folder} {folder} && mount -o remount,bind,ro {folder}",
            "Read-only file system",
        ),
    ],
)
def test_a_node_that_cannot_write_the_results_fails_the_suite_at_once(
    tmp_path: Path, ray_nodes, mount: str, says: str
) -> None:
    address = _start_head(ray_nodes, tmp_path / "home")
    results = tmp_path / "shared" / "results"
    results.mkdir(parents=True)
    # a worker node whose view of the results folder differs: its own mount namespace
    script = f'{mount.format(folder=results.parent)} && exec "$@"'
    worker = ray_nodes(
        f"--address={address}",
        "--num-cpus=1",
        env=_env(tmp_path / "home"),
        prefix=["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"],
    )
    _wait_for(worker, "Ray runtime started")
    suite = _suite(tmp_path, ONE_RUN)
    start = time.monotonic()
    proc = _podbench(
        "run",
        str(suite),
        "--results",
        str(results),
        "--address",
        address,
        "--no-report",
        env=_env(tmp_path / "home"),
    )
    error = _one_sentence(proc)
    assert f"--results {results}: Ray node" in error and says in error
    assert "cannot write run records there" in error and "shared volume" in error
    assert not list((results / "runs").glob("*.json")) and time.monotonic() - start < 120


def test_unreachable_address_is_a_user_error(tmp_path: Path) -> None:
    suite = _suite(tmp_path, SMALL)
    proc = _podbench(
        "run",
        str(suite),
        "--results",
        str(tmp_path / "r"),
        "--address",
        f"127.0.0.1:{_free_port()}",
        "--no-report",
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--address" in proc.stderr and "Traceback" not in proc.stderr
