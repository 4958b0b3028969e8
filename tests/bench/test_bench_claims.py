"""Per-run claims: creation, liveness, stale takeover, races between takers, heartbeats, release.

Heartbeat times are set by hand through an injected clock: no test sleeps for a timeout.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from podbench.claims import Claim, ClaimInfo, ClaimStore, Holder, describe, file_key, share_work


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _other_host(pid: int = 4242) -> Holder:
    """A process of another host (one host per pid: their pids are never looked up here)."""
    return Holder(host=f"host{pid}.example", pid=pid, pidns="pid:[1]", pid_started=5.0)


def _dead_pid() -> int:
    """The pid of a process of this host that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_first_claim_is_generation_zero_with_the_holder_and_times(tmp_path: Path) -> None:
    clock = Clock(1_000.0)
    store = ClaimStore(tmp_path / "claims", clock=clock)
    claim = store.acquire("run-a", driver="podbench run on test (pid 1)")
    assert claim is not None
    assert _files(tmp_path / "claims") == ["run-a.0.claim"]  # no temporary file left over
    data = json.loads((tmp_path / "claims" / "run-a.0.claim").read_text())
    assert data["holder"]["pid"] == os.getpid() and data["holder"]["host"] == os.uname().nodename
    assert data["started_at"] == data["heartbeat_at"] == 1_000.0
    assert data["driver"] == "podbench run on test (pid 1)" and data["generation"] == 0
    claim.release()
    assert _files(tmp_path / "claims") == []


def test_a_live_claim_of_another_process_is_skipped(tmp_path: Path) -> None:
    clock = Clock()
    parent = Holder.this_process()
    # a process of this host that runs: the test's parent (pytest's launcher or shell)
    other = ClaimStore(
        tmp_path, clock=clock, me=Holder(parent.host, os.getppid(), parent.pidns, None)
    )
    assert other.acquire("r") is not None
    mine = ClaimStore(tmp_path, clock=clock)
    assert mine.acquire("r") is None
    assert mine.live("r") is not None and mine.live("r").holder.pid == os.getppid()
    clock.now += 119.0  # below the 120 s staleness: still alive
    assert mine.acquire("r") is None


def test_heartbeat_older_than_the_timeout_is_taken_over_from_any_host(tmp_path: Path) -> None:
    clock = Clock(10_000.0)
    theirs = ClaimStore(tmp_path, clock=clock, stale_after=60, me=_other_host())
    old = theirs.acquire("r", driver="them")
    mine = ClaimStore(tmp_path, clock=clock, stale_after=60)
    clock.now = 10_060.0  # exactly the timeout: not yet stale
    assert mine.acquire("r") is None
    clock.now = 10_060.5
    new = mine.acquire("r", driver="me")
    assert new is not None and new.info.generation == 1
    assert _files(tmp_path) == ["r.0.claim", "r.1.claim"]  # a takeover deletes nothing
    assert mine.current("r").driver == "me"
    assert old is not None and old.refresh() is False and old.lost  # the old holder learns it
    old.release()  # ... and leaves the new holder's file alone
    assert _files(tmp_path) == ["r.0.claim", "r.1.claim"]
    new.release()  # the new holder removes both
    assert _files(tmp_path) == []


def test_a_refreshed_heartbeat_keeps_the_claim(tmp_path: Path) -> None:
    clock = Clock(0.0)
    theirs = ClaimStore(tmp_path, clock=clock, stale_after=60, me=_other_host())
    claim = theirs.acquire("r")
    mine = ClaimStore(tmp_path, clock=clock, stale_after=60)
    for step in range(1, 6):  # 50 s between beats, 250 s in all: never 60 s without one
        clock.now = 50.0 * step
        assert claim.refresh() is True
        assert mine.acquire("r") is None
    assert json.loads(claim.info.path.read_text())["heartbeat_at"] == 250.0
    assert json.loads(claim.info.path.read_text())["started_at"] == 0.0
    clock.now = 250.0 + 61.0
    assert mine.acquire("r") is not None


def test_same_host_dead_pid_is_taken_over_at_once(tmp_path: Path) -> None:
    clock = Clock()
    me = Holder.this_process()
    dead = Holder(me.host, _dead_pid(), me.pidns, None)
    assert ClaimStore(tmp_path, clock=clock, me=dead).acquire("r") is not None
    mine = ClaimStore(tmp_path, clock=clock)
    assert mine.live("r") is None  # no time passed: the dead pid alone makes it stale
    claim = mine.acquire("r")
    assert claim is not None and claim.info.generation == 1


def test_a_reused_pid_does_not_keep_a_dead_claim_alive(tmp_path: Path) -> None:
    me = Holder.this_process()
    assert me.pid_started is not None  # /proc tells process start times here
    # the claim's holder had this pid but started an hour earlier: another process
    earlier = Holder(me.host, me.pid, me.pidns, me.pid_started - 360_000.0)
    ClaimStore(tmp_path, me=earlier).acquire("r")
    assert ClaimStore(tmp_path).acquire("r") is not None


def test_a_pid_of_another_host_is_not_looked_up_here(tmp_path: Path) -> None:
    clock = Clock()
    # a pid that has exited here, but the holder is on another host (or pid namespace)
    for holder in (
        _other_host(_dead_pid()),
        Holder(os.uname().nodename, _dead_pid(), "pid:[other-namespace]", None),
    ):
        folder = tmp_path / holder.host / str(holder.pidns)
        ClaimStore(folder, clock=clock, me=holder).acquire("r")
        assert ClaimStore(folder, clock=clock).acquire("r") is None


class _RacingStore(ClaimStore):
    """A store that, the first time it judges a claim stale, lets ``rival`` act first."""

    rival: ClaimStore | None = None

    def is_stale(self, info: ClaimInfo) -> bool:
        stale = super().is_stale(info)
        rival, self.rival = self.rival, None
        if stale and rival is not None:
            self.rival_claim = rival.acquire("r")
        return stale


def test_two_takers_of_one_stale_claim_cannot_both_win(tmp_path: Path) -> None:
    clock = Clock(0.0)
    ClaimStore(tmp_path, clock=clock, stale_after=60, me=_other_host(1)).acquire("r")
    clock.now = 100.0  # stale for everyone
    a = _RacingStore(tmp_path, clock=clock, stale_after=60, me=_other_host(2))
    a.rival = ClaimStore(tmp_path, clock=clock, stale_after=60, me=_other_host(3))
    # a has read generation 0 and found it stale; b takes generation 1 before a writes it
    assert a.acquire("r") is None
    assert a.rival_claim is not None and a.rival_claim.info.holder.pid == 3
    assert a.current("r").holder.pid == 3 and _files(tmp_path) == ["r.0.claim", "r.1.claim"]


class _BlindStore(ClaimStore):
    """A store whose first look finds no claim (a listing taken just before a newer one)."""

    blind = True

    def current(self, key: str) -> ClaimInfo | None:
        if self.blind:
            self.blind = False
            return None
        return super().current(key)


def test_a_claim_created_below_a_newer_generation_withdraws(tmp_path: Path) -> None:
    clock = Clock(0.0)
    holder = ClaimStore(tmp_path, clock=clock, stale_after=60, me=_other_host(1))
    holder.acquire("r")
    clock.now = 100.0
    newer = ClaimStore(tmp_path, clock=clock, stale_after=60, me=_other_host(2)).acquire("r")
    assert newer is not None and newer.info.generation == 1
    holder.release_all("r", below=1)  # generation 0 gone: only the live generation 1 is left
    late = _BlindStore(tmp_path, clock=clock, stale_after=60).acquire("r")
    assert late is None  # it created generation 0, saw generation 1 and withdrew
    assert _files(tmp_path) == ["r.1.claim"]


def _race(folder: str, barrier, winners) -> None:
    barrier.wait()
    claim = ClaimStore(folder).acquire("r", driver=str(os.getpid()))
    if claim is not None:
        winners.put(os.getpid())


def test_processes_racing_for_one_stale_claim_yield_one_winner(tmp_path: Path) -> None:
    me = Holder.this_process()
    ClaimStore(tmp_path, me=Holder(me.host, _dead_pid(), me.pidns, None)).acquire("r")
    ctx = multiprocessing.get_context("fork")
    barrier, winners = ctx.Barrier(6), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), barrier, winners)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    won = []
    while not winners.empty():
        won.append(winners.get())
    assert len(won) == 1
    assert ClaimStore(tmp_path).current("r").driver == str(won[0])


def test_kept_alive_beats_and_releases_on_an_exception(tmp_path: Path) -> None:
    ticks = iter(range(1, 10_000))
    store = ClaimStore(tmp_path, clock=lambda: float(next(ticks)))
    claim = store.acquire("r")
    assert claim is not None and claim.info.heartbeat_at == 1.0
    with pytest.raises(RuntimeError, match="training failed"), claim.kept_alive(interval=0.01):
        deadline = time.monotonic() + 30
        while json.loads(claim.info.path.read_text())["heartbeat_at"] < 3.0:
            assert time.monotonic() < deadline, "the heartbeat thread never refreshed the claim"
            time.sleep(0.01)
        raise RuntimeError("training failed")
    assert claim.released and _files(tmp_path) == []


def test_an_unreadable_claim_file_ages_by_its_modification_time(tmp_path: Path) -> None:
    clock = Clock(time.time())
    path = tmp_path / "r.0.claim"
    path.write_text("")  # an O_EXCL claim whose content is not written yet
    store = ClaimStore(tmp_path, clock=clock, stale_after=60)
    assert store.acquire("r") is None
    os.utime(path, (clock.now - 61, clock.now - 61))
    claim = store.acquire("r")
    assert claim is not None and claim.info.generation == 1


def test_file_keys_are_safe_and_distinct() -> None:
    assert file_key("3f2a9c01de") == "3f2a9c01de"
    keys = ["trial-quick/pod-0", "trial-quick_pod-0", "trial-quick/pod[x]-0", "a.b"]
    names = [file_key(k) for k in keys]
    assert len(set(names)) == len(names)
    assert all(
        set(n) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
        for n in names
    )


def test_describe_and_all_current_show_the_holders(tmp_path: Path) -> None:
    clock = Clock(50_000.0)
    theirs = ClaimStore(tmp_path, clock=clock, stale_after=60, me=_other_host(77))
    theirs.acquire("a", driver="podbench run on elsewhere (pid 7)")
    clock.now += 5
    claim_b = theirs.acquire("trial/b[1]", driver="podbench tune")
    clock.now += 30
    assert isinstance(claim_b, Claim)
    mine = ClaimStore(tmp_path, clock=clock, stale_after=60)
    rows = [describe(mine, info) for info in mine.all_current()]
    assert [r["key"] for r in rows] == ["a", "trial/b[1]"]  # oldest first, keys as given
    assert rows[0]["host"] == "host77.example" and rows[0]["pid"] == 77
    assert rows[0]["heartbeat_age_s"] == 35.0 and rows[1]["heartbeat_age_s"] == 30.0
    assert {r["state"] for r in rows} == {"alive"}
    clock.now += 26  # a: 61 s without a heartbeat; b: 56 s
    assert [describe(mine, i)["state"] for i in mine.all_current()] == ["stale", "alive"]


class _Drivers:
    """Another driver's claims and a results folder of plain marker files, for share_work."""

    def __init__(self, folder: Path, clock: Clock) -> None:
        self.clock = clock
        self.claims = ClaimStore(folder / "claims", clock=clock, stale_after=60)
        self.other = ClaimStore(folder / "claims", clock=clock, stale_after=60, me=_other_host(9))
        self.done = folder / "done"
        self.done.mkdir()
        self.trained: list[str] = []  # by this driver, in order

    def finished(self, item: str) -> bool:
        return (self.done / item).exists()

    def train(self, batch: list[str]) -> set[str]:
        lost = set()
        for item in batch:
            claim = self.claims.acquire(item, driver="me")
            if claim is None:
                lost.add(item)
                continue
            self.trained.append(item)
            (self.done / item).write_text("me")
            claim.release()
        return lost


def test_share_work_waits_for_the_other_driver_and_counts_its_runs(tmp_path: Path) -> None:
    clock = Clock(0.0)
    d = _Drivers(tmp_path, clock)
    theirs = d.other.acquire("a", driver="them")
    waits: list[list[str]] = []

    def sleep(seconds: float) -> None:  # the other driver finishes "a" while this one waits
        clock.now += seconds
        if len(waits) == 3:
            (d.done / "a").write_text("them")
            theirs.release()

    shared = share_work(
        ["a", "b", "c"],
        key=str,
        finished=d.finished,
        train=d.train,
        claims=d.claims,
        driver="me",
        poll=2.0,
        sleep=sleep,
        on_wait=lambda cs: waits.append([c.key for c in cs]),
    )
    assert d.trained == ["b", "c"] and shared.elsewhere == ["a"] and not shared.interrupted
    assert waits == [["a"], ["a"], ["a"]] and clock.now == 6.0


def test_share_work_takes_over_the_run_of_a_driver_that_died(tmp_path: Path) -> None:
    clock = Clock(0.0)
    d = _Drivers(tmp_path, clock)
    d.other.acquire("a", driver="them")  # and never a heartbeat again

    def sleep(seconds: float) -> None:
        clock.now += seconds

    taken: list[tuple[str, str, float]] = []
    shared = share_work(
        ["a", "b"],
        key=str,
        finished=d.finished,
        train=d.train,
        claims=d.claims,
        driver="me",
        poll=5.0,
        sleep=sleep,
        on_takeover=lambda item, c: taken.append((item, c.driver, clock.now)),
    )
    assert d.trained == ["b", "a"] and shared.elsewhere == [] and not shared.interrupted
    assert len(taken) == 1 and taken[0][:2] == ("a", "them") and taken[0][2] > 60.0
    assert 60.0 < clock.now <= 65.0  # taken over at the first look after the 60 s timeout
    assert _files(tmp_path / "claims") == []


def test_share_work_stops_when_a_round_is_interrupted(tmp_path: Path) -> None:
    d = _Drivers(tmp_path, Clock(0.0))
    d.other.acquire("c", driver="them")
    calls = []

    def train(batch: list[str]) -> set[str]:  # Ctrl-C: "a" finished, "b" never ran
        calls.append(list(batch))
        (d.done / "a").write_text("me")
        return set()

    shared = share_work(
        ["a", "b", "c"],
        key=str,
        finished=d.finished,
        train=train,
        claims=d.claims,
        driver="me",
        sleep=lambda s: pytest.fail("waited"),
    )
    assert shared.interrupted and calls == [["a", "b"]] and shared.elsewhere == []


def test_share_work_waits_again_for_a_run_lost_to_a_racing_driver(tmp_path: Path) -> None:
    clock = Clock(0.0)
    d = _Drivers(tmp_path, clock)
    rounds: list[list[str]] = []
    other_claim: list[Claim] = []

    def train(batch: list[str]) -> set[str]:
        rounds.append(list(batch))
        if len(rounds) == 1:  # the other driver claims "a" between the look and the trial
            other_claim.append(d.other.acquire("a", driver="them"))
        return d.train(batch)

    def sleep(seconds: float) -> None:
        clock.now += seconds
        (d.done / "a").write_text("them")
        other_claim[0].release()

    shared = share_work(
        ["a", "b"],
        key=str,
        finished=d.finished,
        train=train,
        claims=d.claims,
        driver="me",
        sleep=sleep,
    )
    assert rounds == [["a", "b"]] and d.trained == ["b"] and shared.elsewhere == ["a"]


def _tiny_run(seed: int = 0):
    from podbench.runs import RunSettings, resolve_run

    settings = RunSettings(epochs=2, lr=0.05, batch_size=32, device="cpu")
    return resolve_run(
        settings, suite="t", loss="softmax", dataset="digits", arch="mlp", seed=seed, feat_dim=8
    )


def _fake_record(run, status: str = "completed") -> dict:
    from podbench.record import RunRecord, utc_now

    return RunRecord.of_run(run, status=status, finished_at=utc_now()).to_json_dict()


def test_train_claimed_trains_once_writes_then_releases(tmp_path: Path) -> None:
    from podbench.results import ResultsStore
    from podbench.run_claims import claim_settings, train_claimed

    store, run = ResultsStore(tmp_path), _tiny_run()
    seen: list[list[str]] = []

    def train(on_epoch) -> dict:  # what the trial's process sees while it trains
        seen.append(_files(tmp_path / "claims"))
        on_epoch({"epoch": 0})
        return _fake_record(run)

    record = train_claimed(store, run, claim_settings(), train)
    assert record is not None and store.read_record(run.run_id)["status"] == "completed"
    assert seen == [[f"{run.run_id}.0.claim"]] and _files(tmp_path / "claims") == []
    # a final record now exists: a second trial (another driver's) trains nothing
    assert train_claimed(store, run, claim_settings(), train) is None and len(seen) == 1


def test_train_claimed_skips_a_run_another_process_holds(tmp_path: Path) -> None:
    from podbench.results import ResultsStore
    from podbench.run_claims import claim_settings, train_claimed

    store, run = ResultsStore(tmp_path), _tiny_run()
    store.claims(me=_other_host(3)).acquire(run.run_id, driver="them")
    called = []
    assert train_claimed(store, run, claim_settings(), lambda on_epoch: called.append(1)) is None
    assert called == [] and store.read_record(run.run_id) is None


def test_train_claimed_stops_and_writes_nothing_when_its_claim_is_taken_over(
    tmp_path: Path,
) -> None:
    from podbench.results import ResultsStore
    from podbench.run_claims import ClaimLost, claim_settings, train_claimed

    store, run = ResultsStore(tmp_path), _tiny_run()
    clock = Clock(time.time() + 1000)  # the taker's clock: this holder's heartbeat looks old
    raised: list[ClaimLost] = []

    def train(on_epoch) -> dict:  # epochs until the heartbeat thread notices the takeover
        taker = store.claims(clock=clock, me=_other_host(8)).acquire(run.run_id, driver="taker")
        assert taker is not None
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                on_epoch({"epoch": 0})
                time.sleep(0.01)
        except ClaimLost as err:  # the engine turns it into a failed record
            raised.append(err)
            return _fake_record(run, "failed")
        return _fake_record(run)

    settings = {**claim_settings(), "heartbeat": 0.01}
    assert train_claimed(store, run, settings, train) is None
    assert raised and store.read_record(run.run_id) is None  # the taker writes the record
    assert [c.driver for c in store.claims().all_current()] == ["taker"]  # its claim stays


def test_the_claim_of_a_dead_worker_goes_with_the_drivers_failure_record(tmp_path: Path) -> None:
    from podbench.executor import worker_failure_record
    from podbench.results import ResultsStore

    store, dead_run, live_run = ResultsStore(tmp_path), _tiny_run(0), _tiny_run(1)
    me = Holder.this_process()
    store.claims(me=Holder(me.host, _dead_pid(), me.pidns, None)).acquire(dead_run.run_id)
    store.claims(me=_other_host(4)).acquire(live_run.run_id)  # may still be dying elsewhere
    for run in (dead_run, live_run):
        record = worker_failure_record(store, run.model_dump(mode="json"), None)
        assert record["status"] == "failed" and record["error"]["type"] == "WorkerDied"
    assert [c.key for c in store.claims().all_current()] == [live_run.run_id]


def test_podbench_results_lists_the_claimed_runs(tmp_path: Path, capsys) -> None:
    from podbench.cli import main
    from podbench.results import ResultsStore

    store = ResultsStore(tmp_path)
    store.claims(me=_other_host(31)).acquire(
        "aaa", driver="podbench run on h31 (pid 3)", what="pod seed 0 (digits/mlp)"
    )
    me = Holder.this_process()
    store.claims(me=Holder(me.host, _dead_pid(), me.pidns, None)).acquire(
        "bbb", driver="podbench run on here (pid 4)", what="softmax seed 1 (digits/mlp)"
    )
    assert main(["results", str(tmp_path)]) == 0  # no records yet, only claims
    out = capsys.readouterr().out
    assert "no run records yet" in out and "in progress: 2 run(s)" in out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 3}
    assert set(rows) == {"aaa", "bbb"}
    assert "alive" in rows["aaa"] and "host31.example" in rows["aaa"] and "(pid 3)" in rows["aaa"]
    assert "stale" in rows["bbb"] and "softmax seed 1" in rows["bbb"]
