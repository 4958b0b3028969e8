"""The connection to Ray: an embedded local Ray or a cluster, and what a cluster must offer.

:func:`init_ray` starts an embedded Ray or joins a cluster. Joining a ``HOST:PORT`` cluster
first checks that something listens there, then matches the cluster's authentication: Ray 2.60
(the version ``pyproject.toml`` pins; tests/bench/test_bench_ray.py runs against it) turns token
authentication on for ``ray start --head`` whenever the head has a token, while a client sends
one only when told to. That negotiation goes through Ray's private API (``ray._raylet``), kept
here alone. :func:`check_nodes_write` asks every node of a cluster whether it can write records
into the results folder.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

from podbench.errors import UserError

__all__ = ["init_ray", "check_nodes_write", "TRIAL_ENV"]

TRIAL_ENV = {
    # Tune would otherwise chdir into each trial's folder and relative data roots would break
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    # a trial given no GPU gets CUDA_VISIBLE_DEVICES="" (Ray 2.60 leaves every GPU visible to it)
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1",
}


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start an embedded local Ray (explicit CPUs, no dashboard) or connect to a cluster.

    Args:
        address: an existing cluster ("auto", "HOST:PORT", "ray://..."); None = embedded.
            A HOST:PORT cluster is joined with its authentication token when it requires one.
        num_cpus: CPUs of the embedded Ray (default: all of this machine's); ignored with address.
    """
    os.environ.update(TRIAL_ENV)
    import ray

    if ray.is_initialized():
        return
    runtime_env = {"env_vars": dict(TRIAL_ENV)}
    if address:
        if _check_reachable(address):
            _match_cluster_auth(address)
        try:
            ray.init(
                address=address,
                runtime_env=runtime_env,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
        except ConnectionError as err:
            raise UserError(
                f"--address {address}: no Ray cluster answers there ({err}); start one with "
                "`ray start --head` or drop --address to use an embedded Ray."
            ) from None
        return
    ray.init(
        address="local",  # always a fresh embedded Ray, never a `ray start` cluster found in /tmp
        num_cpus=num_cpus or os.cpu_count() or 1,
        include_dashboard=False,
        runtime_env=runtime_env,
        logging_level=logging.WARNING,
        # run errors are in the records; worker chatter (Ray's SIGTERM of idle actors) is noise
        log_to_driver=False,
        configure_logging=True,
    )


def _check_reachable(address: str) -> bool:
    """Fail fast on HOST:PORT that nothing listens on (Ray itself retries for minutes).

    Returns whether ``address`` is a HOST:PORT that answered ("auto", "ray://..." are left to Ray).
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return False
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as err:
        raise UserError(
            f"--address {address}: nothing answers there ({err.strerror or err}); start a cluster "
            "with `ray start --head` or drop --address to use an embedded Ray."
        ) from None
    return True


# Asks the cluster's GCS for its id, as every Ray client does first. It runs in a child process:
# Ray's C++ client logs each rejected try to stderr, and reads RAY_AUTH_MODE once per process.
_GCS_PROBE = """
import sys
from ray._raylet import GcsClient
from ray.exceptions import AuthenticationError
try:
    GcsClient(address=sys.argv[1])
except AuthenticationError:
    sys.exit(3)
"""
_AUTH_MODE = "RAY_AUTH_MODE"


def _match_cluster_auth(address: str) -> None:
    """Set this process's Ray authentication mode to the one the cluster at ``address`` uses.

    Ray 2.60 turns token authentication on for ``ray start --head`` whenever the head has a token
    (``~/.ray/auth_token``, written by any earlier local Ray), but a client given an explicit
    address sends no token unless ``RAY_AUTH_MODE=token``; and a client that sends one to a
    cluster without authentication loses its actors. So the cluster is asked without a token
    first, then with this machine's token.
    """
    if os.environ.get(_AUTH_MODE, "disabled").lower() not in ("disabled", "token"):
        return  # another scheme (Kubernetes RBAC): the user's own configuration stands
    if _probe_gcs(address, "disabled"):
        _set_auth_mode("disabled")
        return
    source = _token_source()
    if source is None:
        raise UserError(
            f"--address {address}: the Ray cluster there requires its authentication token and "
            "none was found on this machine; copy ~/.ray/auth_token from the head node to "
            "~/.ray/auth_token here, or set RAY_AUTH_TOKEN to its content (`ray get-auth-token` "
            "on the head node prints it)."
        )
    if not _probe_gcs(address, "token"):
        variable, fix = source
        raise UserError(
            f"--address {address}: the Ray cluster there rejected the authentication token from "
            f"{variable}; {fix} (`ray get-auth-token` on the head node prints it)."
        )
    _set_auth_mode("token")


def _probe_gcs(address: str, mode: str) -> bool:
    """Whether the cluster accepts a client in auth ``mode`` (False: it rejected the token)."""
    env = dict(os.environ, **{_AUTH_MODE: mode})
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _GCS_PROBE, address],
            env=env,
            timeout=90,
            capture_output=True,
            text=True,
            check=False,
        )
    except subprocess.TimeoutExpired:
        proc = None
    if proc is not None and proc.returncode in (0, 3):
        return proc.returncode == 0
    raise UserError(
        f"--address {address}: something listens there but no Ray cluster answers; give the "
        "address `ray start --head` printed (HOST:PORT, port 6379 by default)."
    )


def _token_source() -> tuple[str, str] | None:
    """Where Ray finds this machine's token (Ray's order) and how to replace it; None: nowhere."""
    from podbench.fileio import read_user_text

    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN", (
            "set RAY_AUTH_TOKEN to the content of the head node's ~/.ray/auth_token"
        )
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:  # Ray aborts the process on an unreadable or empty one: say so first
        if not read_user_text(path, "RAY_AUTH_TOKEN_PATH token file").strip():
            raise UserError(
                f"RAY_AUTH_TOKEN_PATH token file {path} is empty: copy the head node's "
                "~/.ray/auth_token there."
            )
        return f"RAY_AUTH_TOKEN_PATH ({path})", f"copy the head node's ~/.ray/auth_token to {path}"
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file() and read_user_text(default, "Ray token file").strip():
        return str(default), f"copy the head node's ~/.ray/auth_token over {default}"
    return None


def _set_auth_mode(mode: str) -> None:
    """Make this process's Ray use authentication ``mode`` from now on (as Ray's switch does)."""
    # private and compiled: Ray's type stub of _raylet does not list them
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    os.environ[_AUTH_MODE] = mode
    Config.initialize("")  # Ray caches its config; reread RAY_AUTH_MODE
    AuthenticationTokenLoader.instance().reset_cache()


def _can_write_records(folder: str, marker: str) -> str | None:
    """On one node: why it cannot write records into the results ``folder``, or None."""
    path = Path(folder)
    if not (path / marker).is_file():
        return "that node does not see the driver's results folder (it is another disk there)"
    probe = path / "runs" / f"{marker}.{os.getpid()}.tmp"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("podbench write check\n")
        probe.unlink()
    except OSError as err:
        return f"writing there fails ({err.strerror or err})"
    return None


def check_nodes_write(results: Path) -> None:
    """Fail fast, in one sentence, when a node of the cluster cannot write records to ``results``.

    Trials write their records themselves, so a node that sees another disk (no shared storage)
    or a read-only one would lose its runs; this asks every node before the suite starts.
    """
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    results.mkdir(parents=True, exist_ok=True)
    marker = results / f".podbench-write-check-{uuid.uuid4().hex}"
    marker.write_text("the driver's results folder\n")
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    check = ray.remote(num_cpus=0)(_can_write_records)  # runs even where every CPU is busy
    try:
        answers = ray.get(
            [
                check.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
                ).remote(str(results), marker.name)
                for n in nodes
            ],
            timeout=300,
        )
    finally:
        marker.unlink(missing_ok=True)
    for node, why in zip(nodes, answers, strict=True):
        if why:
            raise UserError(
                f"--results {results}: Ray node {node['NodeManagerAddress']} (id "
                f"{node['NodeID'][:12]}) cannot write run records there, {why}; put the results "
                "folder on storage every node mounts at the same path and can write (NFS, a "
                "shared volume) and pass that path with --results."
            )
