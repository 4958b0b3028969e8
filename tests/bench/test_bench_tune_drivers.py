"""Many tuning drivers on one study: heartbeats, stale trials queued again, a shared budget.

The quick tests use SQLite and the driver-side bridge without Ray; the last one runs two real
``podbench tune`` processes against one PostgreSQL study (a private server: ``.ci/postgres``,
started by ``.ci/run`` in CI, else by this module; Debian: ``apt-get install -y postgresql``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from podbench.errors import UserError
from podbench.tuning import TuneSpec, budget_used, study_name
from podbench.tuning.study import Heartbeats, budget_slots, open_storage, open_study, reap_stale
from podbench.tuning.trials import _Bridge

ROOT = Path(__file__).resolve().parents[2]


def spec_data(name: str, **changes: object) -> dict[str, object]:
    data: dict[str, object] = {
        "name": name,
        "dataset": "digits",
        "arch": "mlp",
        "feat_dim": 16,
        "epochs": 2,
        "n_trials": 3,
        "n_startup_trials": 10,
        "batch_size": 64,
        "schedule": "constant",
        "max_concurrent": 1,
        "early_stopping": {"enabled": False},
        "losses": {"softmax": {}},
    }
    data.update(changes)
    return data


def bridge_for(spec: TuneSpec, url: str, heartbeat_s: int = 1, grace_s: int = 3) -> _Bridge:
    store = open_storage(url, "--storage", heartbeat_s=heartbeat_s, grace_s=grace_s)
    study = open_study(spec, "softmax", store)
    return _Bridge(spec, "softmax", study, Heartbeats(store), grace_s)


def test_a_stale_trial_is_failed_uncounted_and_queued_again_at_its_point(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    spec = TuneSpec.model_validate(spec_data("stale"))
    dead = bridge_for(spec, url)  # a driver that is killed after asking one trial
    trial = dead.ask()
    assert trial is not None and trial.params
    dead.beats.close()  # killed: no more heartbeats
    alive = bridge_for(spec, url)
    assert reap_stale(alive.study, 3) == 0  # fresh heartbeat: running elsewhere, left alone
    time.sleep(4.5)
    assert reap_stale(alive.study, 3) == 1
    trials = alive.study.get_trials()
    assert trials[0].state == TrialState.FAIL and "status" not in trials[0].user_attrs
    assert trials[1].state == TrialState.WAITING and trials[1].params == trial.params
    assert budget_used(alive.study) == 0 and budget_slots(trials) == [1]
    again = alive.ask()  # the next ask runs the queued point
    assert again is not None and again.number == 1 and again.params == trial.params
    alive.beats.close()


def test_two_drivers_asking_at_once_for_the_last_place_leave_one_surplus(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    spec = TuneSpec.model_validate(spec_data("race", n_trials=2))
    mine, other = bridge_for(spec, url, 5, 60), bridge_for(spec, url, 5, 60)
    assert mine.ask() is not None  # place 1 of 2
    real_ask = mine.study.ask

    def ask_after_the_other(*args, **kwargs):  # type: ignore[no-untyped-def]
        assert other.ask() is not None  # the other driver takes place 2 in between
        return real_ask(*args, **kwargs)

    mine.study.ask = ask_after_the_other  # type: ignore[method-assign]
    assert mine.ask() is None  # it checked before the other asked, then found itself third
    trials = mine.study.get_trials()
    assert [t.state for t in trials] == [TrialState.RUNNING, TrialState.RUNNING, TrialState.FAIL]
    assert trials[2].user_attrs["surplus"] and budget_slots(trials) == [0, 1]
    assert other.ask() is None  # full: no further trial is created
    assert len(mine.study.get_trials()) == 3
    mine.beats.close()
    other.beats.close()


def test_trials_cut_off_by_ctrl_c_are_queued_again_at_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    spec = TuneSpec.model_validate(spec_data("cut"))
    bridge = bridge_for(spec, url, 5, 60)
    trial = bridge.ask()
    assert trial is not None
    bridge.trials["tune-trial-1"] = trial  # running when Ctrl-C came
    bridge.abandon()
    bridge.beats.close()
    trials = bridge.study.get_trials()
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["interrupted"]
    assert trials[1].state == TrialState.WAITING and trials[1].params == trial.params
    assert "interrupted" not in trials[1].user_attrs  # the retry counts once it has run
    assert budget_slots(trials) == [1] and budget_used(bridge.study) == 0


def test_a_missing_postgres_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg 3 were not installed
    with pytest.raises(UserError, match=r"psycopg 3 .*pip install 'podbench\[postgres\]'"):
        open_storage("postgresql://me@127.0.0.1:1/db", "--storage")
    monkeypatch.setitem(sys.modules, "psycopg2", None)
    with pytest.raises(UserError, match=r"psycopg2 is not installed.*psycopg2-binary"):
        open_storage("postgresql+psycopg2://me@127.0.0.1:1/db", "--storage")


# ------------------------------------------------------------------ PostgreSQL, two drivers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server: $PODBENCH_TEST_POSTGRES (CI), else a private one."""
    pytest.importorskip("psycopg", reason="psycopg 3 not installed: pip install -e '.[postgres]'")
    if os.environ.get("PODBENCH_TEST_POSTGRES"):
        yield os.environ["PODBENCH_TEST_POSTGRES"]
        return
    started = subprocess.run(
        ["bash", str(ROOT / ".ci" / "postgres"), "start", str(_free_port())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if started.returncode != 0:
        reason = f"no PostgreSQL server could be started: {started.stderr.strip()[-300:]}"
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI must start one: see .ci/run)")
        pytest.skip(reason + " (apt-get install -y postgresql)")
    url, folder = started.stdout.split()
    yield url
    subprocess.run(["bash", str(ROOT / ".ci" / "postgres"), "stop", folder], timeout=120)


@pytest.fixture
def postgres_url(postgres_server: str, request: pytest.FixtureRequest) -> str:
    """A fresh database on the server for one test."""
    import psycopg

    name = "t_" + request.node.name.lower().replace("[", "_").replace("]", "")[:50]
    plain = postgres_server.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return postgres_server.rsplit("/", 1)[0] + "/" + name


def test_a_stale_trial_is_queued_again_on_postgres(postgres_url: str) -> None:
    spec = TuneSpec.model_validate(spec_data("stale-pg"))
    dead = bridge_for(spec, postgres_url)
    trial = dead.ask()
    assert trial is not None
    dead.beats.close()
    alive = bridge_for(spec, postgres_url)
    time.sleep(4.5)
    assert reap_stale(alive.study, 3) == 1
    again = alive.ask()
    assert again is not None and again.params == trial.params and again.number == 1
    alive.beats.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_tune_drivers_share_one_postgres_study(postgres_url: str, tmp_path: Path) -> None:
    n_trials = 6
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump(spec_data("shared", n_trials=n_trials, epochs=3)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

    def driver(name: str) -> subprocess.Popen[str]:
        cmd = [
            str(Path(sys.executable).parent / "podbench"),
            "tune",
            str(path),
            "--storage",
            postgres_url,
            "--results",
            str(tmp_path / name),
            "--num-cpus",
            "1",
        ]
        return subprocess.Popen(
            cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

    first = driver("a")
    # the second starts while the first has a trial running: it must leave that trial alone
    storage = optuna.storages.RDBStorage(postgres_url)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        if study_name(TuneSpec.model_validate(spec_data("shared")), "softmax") in names:
            study = optuna.load_study(study_name="shared/softmax", storage=storage)
            if study.get_trials(states=(TrialState.RUNNING,)):
                break
        time.sleep(0.5)
    second = driver("b")
    outputs = [p.communicate(timeout=500)[0] for p in (first, second)]
    for p, out in zip((first, second), outputs, strict=True):
        assert p.returncode == 0, out
        assert "Traceback" not in out and "UpdateFinishedTrialError" not in out, out

    study = optuna.load_study(study_name="shared/softmax", storage=storage)
    trials = study.get_trials()
    print("".join(line + "\n" for out in outputs for line in out.splitlines() if "trial" in line))
    # none lost, none extra: every trial finished and counts (a diverged one is pruned)
    assert len(trials) == n_trials and budget_used(study) == n_trials
    assert {t.user_attrs["status"] for t in trials} <= {"completed", "diverged"}
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= n_trials // 2
    points = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(points)) == n_trials  # no point run twice
    run_now = [int(out.split("softmax: ")[1].split(" trial(s)")[0]) for out in outputs]
    assert sum(run_now) == n_trials, outputs
    drivers = {t.user_attrs["driver"] for t in trials}
    print(f"trials per driver: {run_now}; drivers seen in the study: {len(drivers)}")
