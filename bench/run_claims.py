"""Claims applied to the runs of a suite: the trial side and the driver side (Ray-free).

The process that trains a run (a Ray trial) claims it first with :func:`train_claimed`; the
driver hands its runs out in rounds with :func:`share_suite`, waiting for the runs other drivers
hold and taking over those whose holder died (see :mod:`podbench.claims`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

from podbench.claims import HEARTBEAT_S, STALE_AFTER_S, ClaimInfo, Shared, share_work
from podbench.results import ResultsStore
from podbench.runs import RunSpec

__all__ = ["CLAIMED", "claim_settings", "drop_dead_claim", "share_suite", "train_claimed"]

#: what a trial reports when another process trains its run (or already did)
CLAIMED = "claimed"


class ClaimLost(RuntimeError):
    """Another driver took this run's claim over (this one missed heartbeats): stop training."""


def claim_settings(stale_after: float = STALE_AFTER_S, heartbeat: float = HEARTBEAT_S) -> dict:
    """What the trials of this driver need to claim their runs (JSON, for the trial config)."""
    return {
        "driver": f"podbench run on {socket.gethostname()} (pid {os.getpid()})",
        "stale_after": stale_after,
        "heartbeat": heartbeat,
    }


def _what(run: RunSpec) -> str:
    return f"{run.label} seed {run.seed} ({run.dataset}/{run.arch})"


def train_claimed(
    store: ResultsStore,
    run: RunSpec,
    settings: dict[str, Any],
    train: Callable[[Callable[[dict[str, Any]], None]], dict[str, Any]],
) -> dict[str, Any] | None:
    """Claim ``run``, train it with ``train(on_epoch)`` and write its record, then release.

    Returns the record, or None when another process holds the run or already finished it (then
    nothing is written). ``on_epoch`` stops the training when the claim was taken over.
    """
    claims = store.claims(stale_after=settings["stale_after"])
    claim = claims.acquire(run.run_id, driver=settings["driver"], what=_what(run))
    if claim is None:
        return None
    with claim.kept_alive(settings["heartbeat"]):
        if store.has_final(run.run_id):  # finished by another driver since this one looked
            return None

        def on_epoch(entry: dict[str, Any]) -> None:
            if claim.lost:
                raise ClaimLost(f"run {run.run_id}: another driver took its claim over")

        record = train(on_epoch)
        if claim.lost or not claim.still_mine():
            return None  # the driver that took it over writes the record
        store.write_record(record)  # before the release, so a later claimant sees it
    return record


def drop_dead_claim(store: ResultsStore, run_id: str) -> bool:
    """Delete the claim files of a run whose holder is dead (its worker died on every try and
    the driver wrote the record); a claim that still looks alive stays. Returns whether it went."""
    claims = store.claims()
    current = claims.current(run_id)
    if current is None or not claims.is_stale(current):
        return False
    claims.release_all(run_id, below=current.generation + 1)  # a newer claimant's stays
    return True


def _record_mark(store: ResultsStore, run_id: str) -> int | None:
    try:
        return store.record_path(run_id).stat().st_mtime_ns
    except FileNotFoundError:
        return None


def share_suite(
    todo: Sequence[RunSpec],
    store: ResultsStore,
    settings: dict[str, Any],
    train: Callable[[list[RunSpec]], set[str]],
    note: Callable[[str], None],
    on_elsewhere: Callable[[dict[str, Any]], None],
) -> Shared:
    """Train the runs of ``todo`` in rounds of ``train`` together with the other drivers.

    ``train(batch)`` returns the run ids whose trials reported :data:`CLAIMED`. A run counts as
    finished when it has a final record or its record changed since this call began (a failed
    record by another driver is not retried here). ``note`` prints a line for people.
    """
    marks = {r.run_id: _record_mark(store, r.run_id) for r in todo}
    waited_for: set[str] = set()

    def finished(run: RunSpec) -> bool:
        return store.has_final(run.run_id) or _record_mark(store, run.run_id) != marks[run.run_id]

    def on_wait(held: list[ClaimInfo]) -> None:
        keys = {c.key for c in held}
        if keys - waited_for:
            waited_for.update(keys)
            holders = sorted({c.driver for c in held})
            note(f"waiting for {len(held)} run(s) held by another driver: {'; '.join(holders)}")

    def on_takeover(run: RunSpec, claim: ClaimInfo) -> None:
        age = claims.clock() - claim.heartbeat_at
        note(
            f"taking over run {run.run_id} ({_what(run)}) from {claim.driver}: its holder "
            f"(host {claim.holder.host}, pid {claim.holder.pid}) is gone or silent for {age:.0f} s"
        )

    def elsewhere(run: RunSpec) -> None:
        record = store.read_record(run.run_id)
        if record is not None:
            on_elsewhere(record)

    claims = store.claims(stale_after=settings["stale_after"])
    return share_work(
        todo,
        key=lambda r: r.run_id,
        finished=finished,
        train=train,
        claims=claims,
        driver=settings["driver"],
        on_elsewhere=elsewhere,
        on_wait=on_wait,
        on_takeover=on_takeover,
    )
