"""``poolrun.Queue``: a durable job queue in one SQLite file, drained on poolrun's workers.

Jobs are rows: the item (pickled at ``put``, so an item that cannot be pickled is refused
there, not by a worker hours later), a priority, a state (pending, running, done, failed),
and once run its value or its error's fields. Any number of processes may ``put``; a batch
of items is one transaction, so 100k jobs go in at once.

A drain *claims* jobs before running them: one ``BEGIN IMMEDIATE`` transaction picks the
next pending jobs (highest priority first, then oldest) and marks them running with the
drain's owner tag, so two drains never take the same job. Each finished segment of results
is committed with its jobs in one transaction. A drain that ends (normally, by an error,
Ctrl-C or ``max_failures``) gives back the jobs it claimed and did not finish; one killed
with ``kill -9`` cannot, so its jobs stay marked running with its owner tag (host, pid, the
process's start time): the next drain on the same host sees that process gone and makes
them pending again. A drain's :class:`~poolrun.Run` holds the jobs it ran, indexed by job
id and in id order.
"""

from __future__ import annotations

import os
import pickle
import reprlib
import socket
import threading
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass

from ..options import make_options
from ..report import Stats
from ..results import ItemError, ItemResult, Run, Segment
from .layout import Keys, piece, runs
from .sqlite import connect, transaction

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, priority INTEGER NOT NULL, "
    "state INTEGER NOT NULL, item BLOB NOT NULL, value BLOB, type TEXT, message TEXT, "
    "traceback TEXT, cause TEXT, attempts INTEGER, duration REAL, owner TEXT)",
    "CREATE INDEX IF NOT EXISTS jobs_next ON jobs (state, priority DESC, id)",
)
STATES = ("pending", "running", "done", "failed")
PENDING, RUNNING, DONE, FAILED = range(4)
PROTOCOL = pickle.HIGHEST_PROTOCOL
FIRST_CLAIM, MAX_CLAIM = 16, 1024  # jobs claimed at a time: doubling from the first
PAGE = 1000


class UnpicklableItem(TypeError, ValueError):
    """An item given to ``put`` cannot be pickled, so it cannot be stored as a job."""


@dataclass(frozen=True)
class Job:
    """One job: its item and state, and once it ran, its value or error."""

    id: int
    state: str  # "pending", "running", "done" or "failed"
    priority: int
    item: Any
    value: Any = None
    error: ItemError | None = None
    attempts: int = 0
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.state == "done"


class Queue:
    """A durable, prioritized job queue in the SQLite file at ``path`` (made if missing).

    ``timeout`` is how long a write waits for another process's lock before it fails
    with :class:`~poolrun.durable.sqlite.DatabaseLocked`.
    """

    def __init__(self, path: str | os.PathLike[str], timeout: float = 30.0) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout
        self._db = connect(self.path, "queue", SCHEMA, timeout)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<poolrun.Queue {self.path!r}>"

    def put(self, item: Any, priority: int = 0) -> int:
        """Add one job; returns its id."""
        return self.put_many([item], priority)[0]

    def put_many(self, items: Iterable[Any], priority: int = 0) -> list[int]:
        """Add jobs in one transaction (all or none); returns their ids, in order."""
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"priority must be an int, not {priority!r}")
        rows = [(priority, _pickled(i, item)) for i, item in enumerate(items)]
        if not rows:
            return []
        with self._lock, transaction(self._db, self.path, self.timeout):
            self._db.executemany(
                f"INSERT INTO jobs (priority, state, item) VALUES (?, {PENDING}, ?)", rows
            )
            last = self._db.execute("SELECT max(id) FROM jobs").fetchone()[0]
        return list(range(last - len(rows) + 1, last + 1))

    def status(self) -> dict[str, int]:
        """How many jobs are pending, running, done and failed."""
        with self._lock:
            counts = dict(self._db.execute("SELECT state, count(*) FROM jobs GROUP BY state"))
        return {name: counts.get(state, 0) for state, name in enumerate(STATES)}

    def failed(self) -> list[ItemResult]:
        """The failed jobs, with their errors (``index`` is the job id)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, type, message, traceback, cause, attempts, duration FROM jobs "
                f"WHERE state = {FAILED} ORDER BY id"
            ).fetchall()
        return [
            ItemResult(
                job,
                False,
                None,
                ItemError(kind, message, tb, cause),
                attempts,
                None,
                None,
                duration,
            )
            for job, kind, message, tb, cause, attempts, duration in rows
        ]

    def results(self) -> Iterator[tuple[int, Any]]:
        """``(id, value)`` of every job done, in id order, read a page at a time."""
        after = 0
        while True:
            with self._lock:
                rows = self._db.execute(
                    f"SELECT id, value FROM jobs WHERE state = {DONE} AND id > ? ORDER BY id "
                    "LIMIT ?",
                    (after, PAGE),
                ).fetchall()
            if not rows:
                return
            for job, blob in rows:
                yield job, pickle.loads(blob)
            after = rows[-1][0]

    def get(self, job_id: int) -> Job:
        """One job by id (``KeyError`` if there is none)."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, state, priority, item, value, type, message, traceback, cause, "
                "attempts, duration FROM jobs WHERE id = ?",
                (job_id,),
            ).fetchone()
        if row is None:
            raise KeyError(f"no job {job_id} in queue {self.path}")
        job, state, priority, item, value, kind, message, tb, cause, attempts, duration = row
        error = ItemError(kind, message, tb, cause) if state == FAILED else None
        return Job(job, STATES[state], priority, pickle.loads(item),
                   pickle.loads(value) if value is not None else None, error,
                   attempts or 0, duration or 0.0)  # fmt: skip

    def drain(self, fn: Callable[[Any], Any], **options: Any) -> Run:
        """Run every pending job on poolrun workers, highest priority first, FIFO within a
        priority, until none is left; every result or error is stored with its job.
        Takes ``map``'s options (workers, timeout, retries, max_rss, rate, ...)."""
        from ..api import _Call, _collect, _OneShot

        opts = make_options(**options)
        if opts.checkpoint is not None:
            raise ValueError("a drain stores every result in its queue; checkpoint= does not apply")
        with _OneShot(fn, opts) as supervisor:
            return _collect(_Call(supervisor, fn, (), opts, store=Drain(self.path, self.timeout)))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


class Drain:
    """A drain's side of the queue: claims jobs for the engine, commits their results."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path, self.timeout = path, timeout
        self.db = connect(path, "queue", SCHEMA, timeout)
        self.lock = threading.Lock()
        self.owner = f"{_process_tag(os.getpid())}:{uuid.uuid4().hex[:12]}"
        self.keys = Keys()
        self.placed: dict[int, list[Segment]] = {}
        self.engine_total = None

    def feed(self, _items: Iterable[Any]) -> Iterator[Any]:
        """Claimed jobs' items, claim after claim, until no job is pending."""
        size, recovered = FIRST_CLAIM, False
        while True:
            rows = self._claim(size)
            if not rows and not recovered:
                recovered = True  # jobs of a drain that died since we began: run them too
                self._recover()
                rows = self._claim(size)
            if not rows:
                return
            size = min(2 * size, MAX_CLAIM)
            for job, blob in rows:
                try:
                    item = pickle.loads(blob)
                except Exception as exc:
                    self._unreadable(job, exc)
                    continue
                self.keys.add(job)
                yield item

    def _claim(self, n: int) -> list[tuple[int, bytes]]:
        with self.lock, transaction(self.db, self.path, self.timeout):
            rows = self.db.execute(
                f"SELECT id, item FROM jobs WHERE state = {PENDING} "
                "ORDER BY priority DESC, id LIMIT ?",
                (n,),
            ).fetchall()
            self.db.executemany(
                f"UPDATE jobs SET state = {RUNNING}, owner = ? WHERE id = ?",
                [(self.owner, job) for job, _ in rows],
            )
        return rows

    def _recover(self) -> None:
        """Jobs marked running by drains whose process is gone become pending again."""
        with self.lock:
            owners = [
                o
                for (o,) in self.db.execute(
                    f"SELECT DISTINCT owner FROM jobs WHERE state = {RUNNING}"
                )
            ]
            dead = [(o,) for o in owners if not _alive(o)]
            if dead:
                with transaction(self.db, self.path, self.timeout):
                    self.db.executemany(
                        f"UPDATE jobs SET state = {PENDING}, owner = NULL "
                        f"WHERE state = {RUNNING} AND owner = ?",
                        dead,
                    )

    def _unreadable(self, job: int, exc: Exception) -> None:
        message = f"the job's item cannot be unpickled: {type(exc).__name__}: {exc}"
        with self.lock, transaction(self.db, self.path, self.timeout):
            self.db.execute(
                f"UPDATE jobs SET state = {FAILED}, type = ?, message = ?, traceback = '', "
                "cause = 'exception', attempts = 0, duration = 0, owner = NULL WHERE id = ?",
                (type(exc).__name__, message, job),
            )

    def commit(self, segment: Segment) -> None:
        """A finished segment's results into its jobs, in one transaction."""
        engine_start, n = segment.start, segment.n
        ids, _ = self.keys.get(engine_start, n)
        done, failed = [], []
        for i in range(n):
            error = segment.errors.get(i)
            if error is None:
                blob = pickle.dumps(segment.values[i], protocol=PROTOCOL)
                done.append((blob, segment.attempts(i), segment.durations[i], ids[i], self.owner))
            else:
                fields = (error.type, error.message, error.traceback, error.cause)
                failed.append(
                    (*fields, segment.attempts(i), segment.durations[i], ids[i], self.owner)
                )
        with self.lock, transaction(self.db, self.path, self.timeout):
            self.db.executemany(
                f"UPDATE jobs SET state = {DONE}, value = ?, attempts = ?, duration = ?, "
                "owner = NULL WHERE id = ? AND owner = ?",
                done,
            )
            self.db.executemany(
                f"UPDATE jobs SET state = {FAILED}, type = ?, message = ?, traceback = ?, "
                "cause = ?, attempts = ?, duration = ?, owner = NULL WHERE id = ? AND owner = ?",
                failed,
            )
        self.placed[id(segment)] = [piece(segment, lo, hi, ids[lo]) for lo, hi in runs(ids)]
        self.keys.forget(engine_start, n)

    def merge(
        self, segments: Generator[Segment, None, None], _stats: Stats, _ordered: bool
    ) -> Iterator[Segment]:
        """The engine's segments as pieces indexed by job id; on every way out, the jobs
        claimed and not finished are given back."""
        try:
            for segment in segments:
                yield from self.placed.pop(id(segment))
        finally:
            segments.close()  # the engine's call ends (cancelled if unfinished) first
            with self.lock, transaction(self.db, self.path, self.timeout):
                self.db.execute(
                    f"UPDATE jobs SET state = {PENDING}, owner = NULL "
                    f"WHERE state = {RUNNING} AND owner = ?",
                    (self.owner,),
                )
            with self.lock:
                self.db.close()


def _pickled(index: int, item: Any) -> bytes:
    try:
        return pickle.dumps(item, protocol=PROTOCOL)
    except Exception as exc:
        raise UnpicklableItem(
            f"item {index} ({reprlib.repr(item)}) cannot be pickled, so it cannot be queued: "
            f"{type(exc).__name__}: {exc}"
        ) from None


def _process_tag(pid: int) -> str:
    """``host:pid:start time``: names a process, and tells it from a later one that reuses
    its pid (the start time, in clock ticks since boot, from ``/proc``)."""
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def _start_time(pid: int) -> str:
    """The process's start time, or "" when there is none (gone, a zombie, no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return "" if fields[0] == b"Z" else fields[19].decode()


def _alive(owner: str) -> bool:
    """Is the drain that wrote ``owner`` still running? (Another host's: assumed so.)"""
    try:
        host, pid, started, _ = owner.rsplit(":", 3)
    except ValueError:
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return _start_time(int(pid)) == started or not started  # no /proc: the pid must do
