"""Per-run claims in the results folder, so that several drivers never train the same run twice.

Two ``podbench run`` of one suite on one results folder (a second terminal, a job submitted twice,
two nodes sharing NFS) each start their own Ray. Before a process trains a run it *claims* it: a
small JSON file in ``RESULTS/claims/`` that names the holder (host, pid namespace, pid and that
process's start time, the driver) and carries a heartbeat the holder refreshes while it trains.
Another process skips a run whose claim is alive and takes the claim over when it is stale:

- its heartbeat is older than ``stale_after`` seconds (any host; the clocks of the hosts must
  agree to well within that time, as NTP keeps them), or
- it is held on this host (same host name and pid namespace) by a process that has exited.

Claim files are numbered: ``<key>.<generation>.claim``. The current claim is the highest
generation. A claim is created atomically with all its content (a hard link of a finished
temporary file, which fails if the name exists; ``O_CREAT|O_EXCL`` where the file system has no
hard links), so of several processes creating the same generation exactly one wins. Taking a stale
claim over creates the next generation and never deletes anything, so two takers of one stale
claim cannot both win either. The holder deletes the older generations and then its own when it
releases the claim (after writing the run's record), on every exit path it lives through; a
SIGKILL leaves a claim that the next driver takes over at once on the same host, or after
``stale_after`` seconds from another host.

Torch-free and Ray-free; the clock, the staleness time and this process's identity are
arguments, so the tests set heartbeat times by hand.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from podbench.fileio import atomic_write_text

__all__ = [
    "CLAIMS_DIR",
    "HEARTBEAT_S",
    "STALE_AFTER_S",
    "Claim",
    "ClaimInfo",
    "ClaimStore",
    "Holder",
    "Shared",
    "describe",
    "file_key",
    "share_work",
]

CLAIMS_DIR = "claims"
#: a claim whose heartbeat is this old is taken over from any host
STALE_AFTER_S = 120.0
#: how often a holder refreshes its heartbeat
HEARTBEAT_S = 15.0
_SUFFIX = ".claim"
_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")
T = TypeVar("T")


def _pid_namespace() -> str | None:
    """This process's pid namespace (two containers on one host may share a host name)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _process_started(pid: int) -> float | None:
    """When process ``pid`` started (clock ticks since boot, Linux), None if unknown or gone.

    Tells a pid that was reused by a newer process from the process that held a claim.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3
    return float(fields[19])  # field 22, starttime


@dataclass(frozen=True)
class Holder:
    """The identity of a process that holds (or may hold) claims."""

    host: str
    pid: int
    pidns: str | None = None
    pid_started: float | None = None

    @classmethod
    def this_process(cls) -> Holder:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _pid_namespace(), _process_started(pid))

    def same_machine(self, other: Holder) -> bool:
        """Whether ``other``'s pid can be looked up here (same host and pid namespace)."""
        return self.host == other.host and self.pidns == other.pidns

    def is_running(self) -> bool:
        """Whether this process still runs (looked up on this machine; pid reuse counts as not)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # another user's process: it exists
        started = _process_started(self.pid)
        if started is None or self.pid_started is None:
            return True
        return started == self.pid_started  # else the pid went to a newer process


@dataclass(frozen=True)
class ClaimInfo:
    """What one claim file says, plus where it is."""

    key: str
    generation: int
    token: str
    holder: Holder
    driver: str  # who asked for the run, for people: "podbench run on HOST (pid N)"
    started_at: float
    heartbeat_at: float
    path: Path = field(compare=False)
    what: str = ""  # the work, for people: "softmax seed 0 (digits/mlp)"

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("path")
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_file(cls, path: Path) -> ClaimInfo | None:
        """The claim in ``path``; None when the file vanished (released meanwhile)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            data["holder"] = Holder(**data["holder"])
            return cls(path=path, **data)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError):  # being written (O_EXCL fallback) or damaged
            return _unreadable(path)


def _unreadable(path: Path) -> ClaimInfo | None:
    """A claim file without readable content: its age is its modification time."""
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    key, generation = _parse_name(path.name) or ("?", 0)
    unknown = Holder(host="?", pid=-1)
    return ClaimInfo(key, generation, "?", unknown, "?", mtime, mtime, path)


def _parse_name(name: str) -> tuple[str, int] | None:
    """``(file key, generation)`` of a claim file name, None for other files."""
    if not name.endswith(_SUFFIX) or name.startswith("."):
        return None
    stem, _, gen = name[: -len(_SUFFIX)].rpartition(".")
    return (stem, int(gen)) if stem and gen.isdigit() else None


def file_key(key: str) -> str:
    """The file-name form of a claim key: itself when safe, else sanitized plus a short hash."""
    if _SAFE.match(key):
        return key
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:10]
    return re.sub(r"[^A-Za-z0-9_-]+", "_", key).strip("_")[:80] + "-" + digest


class ClaimStore:
    """The claims of one folder.

    Args:
        folder: where the claim files live (``RESULTS/claims``); created on the first claim.
        stale_after: a claim whose heartbeat is older than this many seconds is stale.
        clock: the wall clock (seconds since the epoch) for heartbeats and staleness.
        me: this process's identity (the tests pretend to be other processes).
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        stale_after: float = STALE_AFTER_S,
        clock: Callable[[], float] = time.time,
        me: Holder | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.stale_after = float(stale_after)
        self.clock = clock
        self.me = me or Holder.this_process()

    # ------------------------------------------------------------------ reading

    def _generations(self, key: str) -> list[int]:
        fkey = file_key(key)
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        parsed = (_parse_name(n) for n in names)
        return sorted(p[1] for p in parsed if p is not None and p[0] == fkey)

    def _path(self, key: str, generation: int) -> Path:
        return self.folder / f"{file_key(key)}.{generation}{_SUFFIX}"

    def current(self, key: str) -> ClaimInfo | None:
        """The claim of ``key`` with the highest generation (alive or stale), or None."""
        for _ in range(8):  # a file may vanish between listing and reading: look again
            gens = self._generations(key)
            if not gens:
                return None
            info = ClaimInfo.from_file(self._path(key, gens[-1]))
            if info is not None:
                return info
        return None

    def is_stale(self, info: ClaimInfo) -> bool:
        """Whether a claim may be taken over (see the module docstring)."""
        if self.clock() - info.heartbeat_at > self.stale_after:
            return True
        holder = info.holder
        return holder.pid > 0 and self.me.same_machine(holder) and not holder.is_running()

    def live(self, key: str) -> ClaimInfo | None:
        """The claim of ``key`` if one is alive, else None."""
        info = self.current(key)
        return None if info is None or self.is_stale(info) else info

    def all_current(self) -> list[ClaimInfo]:
        """The current claim of every key in the folder, sorted by start time."""
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        highest: dict[str, int] = {}
        for name in names:
            parsed = _parse_name(name)
            if parsed is not None:
                highest[parsed[0]] = max(parsed[1], highest.get(parsed[0], -1))
        found = (ClaimInfo.from_file(self.folder / f"{k}.{g}{_SUFFIX}") for k, g in highest.items())
        return sorted((i for i in found if i is not None), key=lambda i: i.started_at)

    # ------------------------------------------------------------------ claiming

    def acquire(self, key: str, driver: str = "", what: str = "") -> Claim | None:
        """Claim ``key`` for this process; None when another process holds it alive."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(8):
            current = self.current(key)
            if current is not None and not self.is_stale(current):
                return None
            generation = 0 if current is None else current.generation + 1
            now = self.clock()
            info = ClaimInfo(
                key,
                generation,
                uuid.uuid4().hex,
                self.me,
                driver,
                now,
                now,
                self._path(key, generation),
                what,
            )
            if not self._create(info):
                continue  # another process created this generation first: look at its claim
            if self._generations(key)[-1:] != [generation]:  # a newer claim appeared meanwhile
                info.path.unlink(missing_ok=True)
                return None
            return Claim(self, info)
        return None

    def _create(self, info: ClaimInfo) -> bool:
        """Create ``info``'s file with its whole content if the name is free; False if taken."""
        tmp = info.path.with_name(f".{info.path.name}.{info.token}.tmp")
        tmp.write_text(info.to_json(), encoding="utf-8")
        try:
            os.link(tmp, info.path)
            return True
        except FileExistsError:
            return False
        except OSError as err:  # no hard links here (some FUSE, SMB): create with O_EXCL
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            return _create_exclusive(info)
        finally:
            tmp.unlink(missing_ok=True)

    def release_all(self, key: str, below: int | None = None) -> None:
        """Delete the claim files of ``key`` (those below generation ``below``), oldest first."""
        for generation in self._generations(key):
            if below is None or generation < below:
                self._path(key, generation).unlink(missing_ok=True)


def _create_exclusive(info: ClaimInfo) -> bool:
    try:
        fd = os.open(info.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(info.to_json())
    return True


class Claim:
    """A claim this process holds: refresh it while working, release it when done.

    ``lost`` turns True when a refresh finds that another process took the claim over (this
    process was taken for dead: a heartbeat missed for ``stale_after`` seconds).
    """

    def __init__(self, store: ClaimStore, info: ClaimInfo) -> None:
        self.store, self.info = store, info
        self.lost = False
        self.released = False
        self._lock = threading.Lock()

    @property
    def key(self) -> str:
        return self.info.key

    def still_mine(self) -> bool:
        """Whether the claim file is ours and no newer generation exists."""
        current = self.store.current(self.key)
        return current is not None and current.token == self.info.token

    def refresh(self) -> bool:
        """Renew the heartbeat; False (and ``lost``) when the claim is no longer ours."""
        with self._lock:
            if self.released or self.lost:
                return not self.lost
            if not self.still_mine():
                self.lost = True
                return False
            fields = {
                **asdict(self.info),
                "holder": self.info.holder,
                "heartbeat_at": self.store.clock(),
            }
            self.info = ClaimInfo(**fields)
            atomic_write_text(self.info.path, self.info.to_json())
            return True

    def release(self) -> None:
        """Delete the claim (and the stale ones it took over); idempotent."""
        with self._lock:
            if self.released:
                return
            self.released = True
            if self.lost or not self.still_mine():
                return  # the newer holder owns the files now
            self.store.release_all(self.key, below=self.info.generation)
            self.info.path.unlink(missing_ok=True)

    def start_heartbeat(self, interval: float = HEARTBEAT_S) -> Callable[[], None]:
        """Refresh the heartbeat every ``interval`` seconds in a thread until ``stop()``.

        Returns ``stop``, which ends the thread and releases the claim.
        """
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(interval):
                try:
                    if not self.refresh():
                        return
                except OSError:  # storage hiccup: the next beat tries again
                    continue

        thread = threading.Thread(target=beat, name=f"claim-{self.key}", daemon=True)
        thread.start()

        def stop_and_release() -> None:
            stop.set()
            thread.join(timeout=10)
            self.release()

        return stop_and_release

    @contextlib.contextmanager
    def kept_alive(self, interval: float = HEARTBEAT_S) -> Iterator[Claim]:
        """Keep the heartbeat going while the block runs; release the claim however it ends."""
        stop = self.start_heartbeat(interval)
        try:
            yield self
        finally:
            stop()


def describe(store: ClaimStore, info: ClaimInfo) -> dict[str, Any]:
    """A claim as a row for people: key, state, holder, driver, since, heartbeat age."""
    return {
        "key": info.key,
        "what": info.what,
        "state": "stale" if store.is_stale(info) else "alive",
        "host": info.holder.host,
        "pid": info.holder.pid,
        "driver": info.driver,
        "since": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.started_at)),
        "heartbeat_age_s": max(0.0, store.clock() - info.heartbeat_at),
    }


@dataclass
class Shared:
    """How :func:`share_work` ended: what others finished, and whether this driver was stopped."""

    elsewhere: list[Any] = field(default_factory=list)
    interrupted: bool = False


def share_work(
    todo: Sequence[T],
    *,
    key: Callable[[T], str],
    finished: Callable[[T], bool],
    train: Callable[[list[T]], set[str]],
    claims: ClaimStore,
    driver: str,
    poll: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    on_elsewhere: Callable[[T], None] | None = None,
    on_wait: Callable[[list[ClaimInfo]], None] | None = None,
    on_takeover: Callable[[T, ClaimInfo], None] | None = None,
) -> Shared:
    """Do the work of ``todo`` together with other drivers, each item once.

    Items that another driver holds alive are waited for; the rest go to ``train`` (in rounds).
    An item another driver finished counts as ``elsewhere``; one whose holder died (stale claim)
    goes to the next round here. Returns when every item is finished, or at once when a round of
    ``train`` ends with an item neither finished nor held elsewhere (the driver was interrupted).

    Args:
        key: an item's claim key.
        finished: whether an item has its result (by any driver) since this invocation began.
        train: trains a batch, claiming each item in the process that trains it; returns the keys
            it found held by another process (they are waited for again).
        claims: the claim store; ``driver``: this driver's name in the claims it makes.
        poll: seconds between looks while only others' items are left; ``sleep`` waits them.
        on_elsewhere: told each item another driver finished; ``on_wait``: the claims waited for;
            ``on_takeover``: each item whose stale claim (of another driver) goes to ``train``.
    """
    sharing = _Sharing(key, finished, claims, driver, on_elsewhere, on_takeover)
    waiting = list(todo)
    while waiting:
        batch, held = sharing.sort_out(waiting)
        if batch:
            lost = train(batch)
            sharing.tried.update(key(i) for i in batch if key(i) not in lost)
            if any(key(i) in sharing.tried and not finished(i) for i in batch):
                sharing.out.interrupted = True
                break
            if lost:  # taken meanwhile (or still held by a worker of this driver): look later
                sleep(poll)
        elif held:
            if on_wait is not None:
                on_wait([c for c in (claims.live(key(i)) for i in held) if c is not None])
            sleep(poll)
        waiting = held + [i for i in batch if key(i) not in sharing.tried]
    return sharing.out


@dataclass
class _Sharing:
    """The state of one :func:`share_work` call."""

    key: Callable[[Any], str]
    finished: Callable[[Any], bool]
    claims: ClaimStore
    driver: str
    on_elsewhere: Callable[[Any], None] | None
    on_takeover: Callable[[Any, ClaimInfo], None] | None
    out: Shared = field(default_factory=Shared)
    tried: set[str] = field(default_factory=set)  # handed to train (and not found held there)

    def sort_out(self, waiting: list[Any]) -> tuple[list[Any], list[Any]]:
        """(to train here, held alive by another driver); finished items leave, counted."""
        batch, held = [], []
        for item in waiting:
            if self.finished(item):
                if self.key(item) not in self.tried:
                    self.out.elsewhere.append(item)
                    if self.on_elsewhere is not None:
                        self.on_elsewhere(item)
                continue
            claim = self.claims.current(self.key(item))
            if claim is not None and claim.driver != self.driver:
                if not self.claims.is_stale(claim):
                    held.append(item)
                    continue
                if self.on_takeover is not None:
                    self.on_takeover(item, claim)
            batch.append(item)
        return batch, held
