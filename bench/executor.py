"""Ray Tune as the executor of a suite: one trial per run, records written by the trials.

Each pending :class:`~podbench.runs.RunSpec` becomes one Tune trial of a function trainable with
the run's own resources. The trial trains with :func:`~podbench.engine.train_run` and writes its
record atomically into ``RESULTS/runs/<run_id>.json`` itself, so every finished run is on disk even
if the driver dies. A trial whose worker died is retried ``max_failures`` times; after that the
driver records it ``failed``. Rerunning the suite runs only the runs without a final record
(completed or diverged; failed runs are tried again).

On a cluster of several machines the results directory must be on storage every node sees (NFS,
a shared volume), since the trials write their records there themselves.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from podbench.errors import UserError
from podbench.record import RunError, RunRecord, utc_now
from podbench.results import ResultsStore
from podbench.runs import RunSpec

__all__ = [
    "init_ray",
    "run_suite",
    "pending_runs",
    "SuiteOutcome",
    "train_in_worker",
    "trial_device",
    "GPUNotVisible",
    "trial_resources",
    "check_nodes_write",
]

_TRIAL_ENV = {
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
    os.environ.update(_TRIAL_ENV)
    import ray

    if ray.is_initialized():
        return
    runtime_env = {"env_vars": dict(_TRIAL_ENV)}
    if address:
        if _check_reachable(address):
            _match_cluster_auth(address)
        try:
            ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING,
                     log_to_driver=False)
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
    import ray.exceptions

    if not hasattr(ray.exceptions, "AuthenticationError"):
        return  # a Ray older than token authentication (2.52)
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
        proc = subprocess.run([sys.executable, "-c", _GCS_PROBE, address], env=env, timeout=90,
                              capture_output=True, text=True, check=False)
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
            "set RAY_AUTH_TOKEN to the content of the head node's ~/.ray/auth_token")
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
    from ray._raylet import AuthenticationTokenLoader, Config

    os.environ[_AUTH_MODE] = mode
    Config.initialize("")  # Ray caches its config; reread RAY_AUTH_MODE
    AuthenticationTokenLoader.instance().reset_cache()


class GPUNotVisible(RuntimeError):
    """Ray gave a run GPUs (``ids``) that torch cannot see on that node."""

    def __init__(self, message: str, ids: list[str]) -> None:
        super().__init__(message)
        self.ids = ids


def trial_device() -> tuple[str, list[str]]:
    """The device of the run this Ray task or trial executes, and the GPU ids Ray gave it.

    ``("cuda", ids)`` exactly when Ray gave it GPUs (Ray then makes only those visible), else
    ``("cpu", [])`` even where GPUs are visible. Raises :class:`GPUNotVisible` when Ray gave a GPU
    that torch cannot see, rather than training on the CPU instead.
    """
    import ray
    import torch

    ids = [str(i) for i in ray.get_gpu_ids()] if ray.is_initialized() else []
    if not ids:
        return "cpu", []
    if not torch.cuda.is_available():
        raise GPUNotVisible(
            f"Ray gave this run GPU {', '.join(ids)} but torch sees no CUDA device there "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, torch "
            f"{torch.__version__} built for CUDA {torch.version.cuda or 'none'}); install the "
            "NVIDIA driver and a CUDA build of torch on that node, or set gpus: 0 to train on "
            "its CPUs", ids,
        )
    return "cuda", ids


def train_in_worker(
    run: RunSpec,
    *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_dir: Path | None = None,
    tensorboard_dir: Path | None = None,
) -> dict[str, Any]:
    """:func:`~podbench.engine.train_run` inside a Ray trial; returns the run record.

    The run trains on the device of :func:`trial_device` (a run given no GPU never touches
    CUDA); a fractional run may fill only its share of the GPU's memory. The record's ``env``
    names the GPU ids and the Ray node. Whatever the run held is freed after it, for the next
    run of this (reused) worker.
    """
    import torch

    from podbench.engine import environment, train_run

    torch.set_num_threads(max(1, int(run.cpus)))  # one thread per allotted CPU, no oversubscription
    gpu_ids: list[str] = []
    try:
        device, gpu_ids = trial_device()
        if gpu_ids and run.gpus < 1:  # packed runs share the GPU's memory by their shares
            torch.cuda.set_per_process_memory_fraction(run.gpus)
        on_device = run.model_copy(update={"device": device})
        record = train_run(on_device, on_epoch=on_epoch, checkpoint_dir=checkpoint_dir,
                           tensorboard_dir=tensorboard_dir)
    except GPUNotVisible as err:
        gpu_ids = err.ids
        record = _failed_record(run, "GPUNotVisible", str(err), env=environment(torch.device("cpu")))
    finally:
        _release_memory()
    record["env"] = {**(record.get("env") or {}), "gpu_ids": gpu_ids, "ray_node": _ray_node()}
    return record


def _release_memory() -> None:
    """Give back what a finished run held, before this worker takes the next run."""
    import gc

    import torch

    gc.collect()  # a model or plugin caught in a reference cycle (a hook on itself) goes now
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _ray_node() -> str | None:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def _failed_record(
    run: RunSpec, kind: str, message: str, *, trace: str | None = None,
    env: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The record of a run that failed before or outside the engine."""
    error = RunError(type=kind, message=message, traceback=trace, epoch=None)
    return RunRecord.of_run(run, status="failed", error=error, env=env,
                            finished_at=utc_now()).to_json_dict()


def _trial(config: dict[str, Any]) -> None:
    """The Tune function trainable: train one run and write its record."""
    from ray import tune

    from podbench.tensorboard import run_log_dir

    run = RunSpec.model_validate(config["run"])
    store = ResultsStore(config["results_dir"])
    existing = store.read_record(run.run_id)
    if existing is not None and existing.get("status") in ("completed", "diverged"):
        tune.report({"status": existing["status"], "skipped": True})
        return
    checkpoint_dir = store.checkpoint_dir(run.run_id) if run.checkpoint else None
    record = train_in_worker(run, checkpoint_dir=checkpoint_dir,
                             tensorboard_dir=run_log_dir(store.root, run))
    store.write_record(record)
    tune.report({"status": record["status"], "final_test_acc": record["final_test_acc"] or 0.0})


def trial_resources(config: dict[str, Any]) -> Any:
    """The Ray resources of a run's trial: its CPUs, and its GPU share when ``gpus`` > 0."""
    from ray import tune

    bundle = {"CPU": float(config["run"]["cpus"])}
    if config["run"]["gpus"]:
        bundle["GPU"] = float(config["run"]["gpus"])
    return tune.PlacementGroupFactory([bundle])


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
        answers = ray.get([
            check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(str(results), marker.name) for n in nodes
        ], timeout=300)
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


class SuiteOutcome(dict):
    """Counts of a suite invocation: skipped, completed, diverged, failed, interrupted."""


def pending_runs(runs: Sequence[RunSpec], store: ResultsStore) -> list[RunSpec]:
    """Runs without a final (completed or diverged) record."""
    return [r for r in runs if not store.has_final(r.run_id)]


# Driver-side progress displays by key: Tune pickles its RunConfig (callbacks included), and a
# display holds a stream that may not pickle (pytest's capture, a rich console).
_PROGRESS: dict[int, Any] = {}


def _make_callback(store: ResultsStore, progress: Any) -> Any:
    from ray.tune import Callback

    key = id(progress)
    _PROGRESS[key] = progress

    class _ProgressCallback(Callback):
        def __init__(self) -> None:
            self.key = key
            self.root = str(store.root)

        def _progress(self) -> Any:
            return _PROGRESS.get(self.key)

        def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            progress = self._progress()
            if progress is not None:
                run = trial.config["run"]
                progress.run_started(_run_id(run), run.get("label") or run["loss"])

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            progress = self._progress()
            record = ResultsStore(self.root).read_record(_run_id(trial.config["run"]))
            if progress is not None and record is not None:
                progress.run_finished(record)

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            record = _worker_failure_record(ResultsStore(self.root), trial.config["run"], trial.error_file)
            progress = self._progress()
            if progress is not None:
                progress.run_finished(record)

    return _ProgressCallback()


def _run_id(run_json: dict[str, Any]) -> str:
    return RunSpec.model_validate(run_json).run_id


def _worker_failure_record(store: ResultsStore, run_json: dict[str, Any], error_file: Any) -> dict[str, Any]:
    """The driver's record of a run whose worker died more often than allowed."""
    run = RunSpec.model_validate(run_json)
    existing = store.read_record(run.run_id)
    if existing is not None:  # the trial wrote its record before its worker died
        return existing
    message = "the worker running this run died (out of memory, killed, or node lost) on every try"
    trace = None
    if error_file and Path(str(error_file)).is_file():
        trace = Path(str(error_file)).read_text(encoding="utf-8", errors="replace")[-20000:]
    record = _failed_record(run, "WorkerDied", message, trace=trace)
    store.write_record(record)
    return record


def run_suite(
    runs: Sequence[RunSpec],
    results_dir: str | Path,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    max_concurrent: int | None = None,
    max_failures: int = 2,
    progress_stream: Any = None,
    rich_display: bool | None = None,
) -> SuiteOutcome:
    """Execute the runs that have no final record yet; return the counts.

    Args:
        runs: the expanded suite.
        results_dir: the results directory (records go to ``runs/``).
        address: Ray cluster address; None = embedded local Ray with ``num_cpus``.
        num_cpus: CPUs of the embedded Ray.
        max_concurrent: at most this many runs at once (None: as many as resources allow).
        max_failures: retries of a run whose worker died.
        progress_stream, rich_display: passed to :class:`~podbench.progress.SuiteProgress`.
    """
    from podbench.progress import SuiteProgress

    store = ResultsStore(results_dir)
    todo = pending_runs(runs, store)
    skipped = len(runs) - len(todo)
    outcome = SuiteOutcome(skipped=skipped, completed=0, diverged=0, failed=0, interrupted=0)
    if not todo:
        print(f"all {len(runs)} run(s) already have records in {store.root}; nothing to do.",
              file=progress_stream, flush=True)
        return outcome
    # Tune's own tables would interleave with our progress lines; verbose=0 then prints nothing
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    init_ray(address, num_cpus)
    import ray
    from ray import tune

    cpus = float(ray.cluster_resources().get("CPU", 1))
    per_run = max(r.cpus for r in todo)
    concurrency = max(1, int(cpus // per_run))
    if max_concurrent:
        concurrency = min(concurrency, max_concurrent)

    storage = tempfile.mkdtemp(prefix="podbench-tune-")  # Tune's own bookkeeping, not results
    progress = SuiteProgress(
        len(todo), skipped=skipped, concurrency=concurrency, stream=progress_stream,
        rich_display=rich_display,
    )
    results_abs = str(Path(results_dir).resolve())
    if address:  # the trials write their records on their own nodes
        check_nodes_write(Path(results_abs))
    try:
        with progress:
            tuner = tune.Tuner(
                tune.with_resources(_trial, trial_resources),
                param_space={
                    "run": tune.grid_search([r.model_dump(mode="json") for r in todo]),
                    "results_dir": results_abs,
                },
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=max_concurrent or None,
                    trial_name_creator=lambda t: f"run-{_run_id(t.config['run'])}",
                    trial_dirname_creator=lambda t: f"run-{_run_id(t.config['run'])}",
                ),
                run_config=tune.RunConfig(
                    name="podbench",
                    storage_path=storage,
                    failure_config=tune.FailureConfig(max_failures=max_failures),
                    verbose=0,
                    callbacks=[_make_callback(store, progress)],
                ),
            )
            tuner.fit()
    finally:
        _PROGRESS.pop(id(progress), None)
        shutil.rmtree(storage, ignore_errors=True)
    for run in todo:
        record = store.read_record(run.run_id)
        if record is None:
            outcome["interrupted"] += 1
        else:
            outcome[record["status"]] = outcome.get(record["status"], 0) + 1
    return outcome
