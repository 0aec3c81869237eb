"""``checkpoint=PATH``: a call's results committed to SQLite as they finish, so that running
the same call again after any crash (``kill -9`` included) computes only what is missing.

The file holds one row per finished batch (``chunks``: the input positions it covers, an
8-byte BLAKE2 hash of each item's pickled bytes, the values pickled as one list, the item
times) and one row per failed item (``failures``: the error's fields). A row per batch,
not per item, keeps the cost per item to one hash: the small benchmark's items take 50 µs
and the goal is at most 10 % more.

On a rerun the input is read as before, lazily, and checked item by item against the
file: an item whose hash differs from the one stored at its position raises ``ValueError``
naming that position (a different input must not get another input's results), and so
does a different function or length. Items already stored are skipped (failed ones run
again unless ``retry_failed=False``); the engine runs the rest. The caller still gets every
item in input order: the results of skipped items are read back from the file a batch at a
time, between the fresh ones, so they are never all held in memory twice. The report
counts them as ``resumed``.

Limits: the hash is of ``pickle`` bytes, so an item whose pickle differs from one process
to the next (a set of strings, with hash randomization) reads as a different input; one
file serves one call at a time.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import threading
from array import array
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass

from ..report import Stats
from ..results import ItemError, Segment
from .layout import Keys, copy_piece, piece, runs
from .sqlite import connect, transaction

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS chunks (start INTEGER PRIMARY KEY, n INTEGER NOT NULL, "
    "hashes BLOB NOT NULL, vals BLOB NOT NULL, durations BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS failures (pos INTEGER PRIMARY KEY, type TEXT, message TEXT, "
    "traceback TEXT, cause TEXT, attempts INTEGER, duration REAL)",
)
HASH_BYTES = 8
PAGE = 128  # chunks read from the file at a time
TIMEOUT = 30.0
PROTOCOL = pickle.HIGHEST_PROTOCOL


def function_identity(fn: Callable[..., Any]) -> str:
    """``module:qualname`` of the function (of what a ``functools.partial`` wraps)."""
    if isinstance(fn, functools.partial):
        return f"functools.partial({function_identity(fn.func)})"
    target = fn if hasattr(fn, "__qualname__") else type(fn)
    return f"{getattr(target, '__module__', '?')}:{target.__qualname__}"


def digest(item: Any) -> bytes:
    try:
        data = pickle.dumps(item, protocol=PROTOCOL)
    except Exception:  # cannot be sent to a worker either: it fails there, and runs again
        data = b""
    return hashlib.blake2b(data, digest_size=HASH_BYTES).digest()


@dataclass(frozen=True, slots=True)
class _Chunk:
    start: int
    end: int
    hashes: bytes
    failed: frozenset[int]


class Checkpoint:
    """The store behind one checkpointed call (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        fn: Callable[..., Any],
        total: int | None,
        retry_failed: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        self.db = connect(self.path, "checkpoint", SCHEMA, TIMEOUT)
        self.lock = threading.Lock()  # the driver commits while the consumer reads back
        self.retry_failed = retry_failed
        self.keys = Keys(HASH_BYTES)
        self.redo: set[int] = set()  # positions of stored failures given to the engine again
        self.skipped: deque[tuple[int, int]] = deque()  # [lo, hi) runs read back, not run
        self.placed: dict[int, list[Segment]] = {}  # id(engine segment) -> its pieces
        self.read = 0
        self._feed: Iterator[Any] | None = None
        try:
            self._check_function(function_identity(fn))
            self.stored_end = self._one("SELECT coalesce(max(start + n), 0) FROM chunks")
            self._check_length(total)
            self.engine_total = None if total is None else total - self._skipping(total)
        except BaseException:
            self.close()
            raise

    # -- what the engine runs ------------------------------------------------------------

    def feed(self, items: Iterable[Any]) -> Iterator[Any]:
        self._feed = self._fresh(items)
        return self._feed

    def _fresh(self, items: Iterable[Any]) -> Iterator[Any]:
        """The items not stored yet (or stored as failed, with ``retry_failed``), each
        checked against the file; runs of skipped positions go to ``skipped``."""
        chunks = self._chunks()
        chunk = next(chunks, None)
        run_start = None
        pos = -1
        for pos, item in enumerate(items):
            while chunk is not None and chunk.end <= pos:
                chunk = next(chunks, None)
            tag = digest(item)
            redo = False
            if chunk is not None and chunk.start <= pos:
                at = (pos - chunk.start) * HASH_BYTES
                if chunk.hashes[at : at + HASH_BYTES] != tag:
                    raise ValueError(
                        f"checkpoint {self.path}: item {pos} differs from the item stored at "
                        "that position (a different input? use another checkpoint file)"
                    )
                redo = self.retry_failed and pos in chunk.failed
                if not redo:
                    if run_start is None:
                        run_start = pos
                    continue
            if run_start is not None:
                self.skipped.append((run_start, pos))
                run_start = None
            if redo:
                self.redo.add(pos)
            self.keys.add(pos, tag)
            yield item
        self.read = pos + 1
        if run_start is not None:
            self.skipped.append((run_start, self.read))
        if self.stored_end > self.read:
            raise ValueError(
                f"checkpoint {self.path}: the input ended at item {self.read}, but the "
                f"checkpoint holds results up to item {self.stored_end - 1} (a different input?)"
            )

    def _chunks(self) -> Iterator[_Chunk]:
        """Every stored chunk's positions and hashes, in order, a page at a time."""
        after = -1
        while True:
            with self.lock:
                rows = self.db.execute(
                    "SELECT start, n, hashes FROM chunks WHERE start > ? ORDER BY start LIMIT ?",
                    (after, PAGE),
                ).fetchall()
                if not rows:
                    return
                end = rows[-1][0] + rows[-1][1]
                failed = {
                    pos
                    for (pos,) in self.db.execute(
                        "SELECT pos FROM failures WHERE pos >= ? AND pos < ?", (rows[0][0], end)
                    )
                }
            for start, n, hashes in rows:
                inside = frozenset(p for p in failed if start <= p < start + n)
                yield _Chunk(start, start + n, hashes, inside)
            after = rows[-1][0]

    # -- commits (the driver, as each segment is done) -----------------------------------

    def commit(self, segment: Segment) -> None:
        """Store a finished segment in one transaction; remember its pieces by position."""
        engine_start, n = segment.start, segment.n
        keys, tags = self.keys.get(engine_start, n)
        parts = [piece(segment, lo, hi, keys[lo]) for lo, hi in runs(keys)]
        with self.lock, transaction(self.db, self.path, TIMEOUT):
            offset = 0
            for part in parts:
                self._store(part, tags[offset * HASH_BYTES : (offset + part.n) * HASH_BYTES])
                offset += part.n
        self.keys.forget(engine_start, n)
        self.placed[id(segment)] = parts

    def _store(self, part: Segment, tags: bytes) -> None:
        redo = self.redo
        if not redo or not any(p in redo for p in range(part.start, part.start + part.n)):
            self._insert(part, tags)
            return
        lo = 0
        for i in range(part.n + 1):
            if i < part.n and part.start + i not in redo:
                continue
            if i > lo:
                chunk = copy_piece(part, lo, i, part.start + lo)
                self._insert(chunk, tags[lo * HASH_BYTES : i * HASH_BYTES])
            if i < part.n:
                self._replace(part, i)
            lo = i + 1

    def _insert(self, part: Segment, tags: bytes) -> None:
        durations = array("d", part.durations[:]).tobytes()
        values = pickle.dumps(part.values, protocol=PROTOCOL)
        self.db.execute(
            "INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?)",
            (part.start, part.n, tags, values, durations),
        )
        if part.errors:
            self.db.executemany(
                "INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?, ?, ?, ?)",
                [_failure_row(part, i) for i in part.errors],
            )

    def _replace(self, part: Segment, i: int) -> None:
        """A stored failure that ran again: its new error, or its value in its chunk."""
        pos = part.start + i
        self.redo.discard(pos)
        if i in part.errors:
            self.db.execute(
                "INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?, ?, ?, ?)",
                _failure_row(part, i),
            )
            return
        self.db.execute("DELETE FROM failures WHERE pos = ?", (pos,))
        start, blob = self.db.execute(
            "SELECT start, vals FROM chunks WHERE start <= ? ORDER BY start DESC LIMIT 1", (pos,)
        ).fetchone()
        values = pickle.loads(blob)
        values[pos - start] = part.values[i]
        blob = pickle.dumps(values, protocol=PROTOCOL)
        self.db.execute("UPDATE chunks SET vals = ? WHERE start = ?", (blob, start))

    # -- what the caller gets --------------------------------------------------------------

    def merge(
        self, segments: Generator[Segment, None, None], stats: Stats, ordered: bool = True
    ) -> Iterator[Segment]:
        """The engine's segments at their input positions, with the skipped items read
        back between them (in input order when ``ordered``); closes the file at the end."""
        try:
            for segment in segments:
                for part in self.placed.pop(id(segment)):
                    yield from self._resumed(stats, part.start if ordered else None)
                    yield part
            if self._feed is not None:
                for _ in self._feed:  # read to its end: skipped items past the last fresh one
                    raise RuntimeError(f"checkpoint {self.path}: the input grew while it ran")
            yield from self._resumed(stats, None)
            with self.lock, transaction(self.db, self.path, TIMEOUT):
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('length', ?)", (self.read,))
        finally:
            segments.close()  # the engine's call ends (cancelled if unfinished) before the file
            self.close()

    def _resumed(self, stats: Stats, before: int | None) -> Iterator[Segment]:
        while self.skipped and (before is None or self.skipped[0][0] < before):
            lo, hi = self.skipped.popleft()
            for segment in self._read_back(lo, hi):
                stats.resumed += segment.n
                stats.resumed_failed += len(segment.errors)
                yield segment

    def _read_back(self, lo: int, hi: int) -> Iterator[Segment]:
        """Stored results of positions ``[lo, hi)``, one segment per stored chunk."""
        with self.lock:
            after = self._one("SELECT coalesce(max(start), 0) FROM chunks WHERE start <= ?", lo)
        while after < hi:
            with self.lock:
                rows = self.db.execute(
                    "SELECT start, n, vals, durations FROM chunks WHERE start >= ? AND start < ? "
                    "ORDER BY start LIMIT ?",
                    (after, hi, PAGE),
                ).fetchall()
            if not rows:
                return
            for start, n, blob, durations in rows:
                yield self._segment(max(lo, start), min(hi, start + n), start, blob, durations)
            after = rows[-1][0] + 1

    def _segment(self, lo: int, hi: int, start: int, blob: bytes, raw: bytes) -> Segment:
        segment = Segment(lo, hi - lo)
        values = pickle.loads(blob)
        durations = array("d")
        durations.frombytes(raw)
        if (lo, hi) != (start, start + len(values)):
            values, durations = values[lo - start : hi - start], durations[lo - start : hi - start]
        segment.values, segment.durations, segment.remaining = values, durations, 0
        with self.lock:
            failed = self.db.execute(
                "SELECT pos, type, message, traceback, cause, attempts, duration FROM failures "
                "WHERE pos >= ? AND pos < ?",
                (lo, hi),
            ).fetchall()
        for pos, kind, message, tb, cause, attempts, _ in failed:
            segment.errors[pos - lo] = ItemError(kind, message, tb, cause)
            segment.override(pos - lo).attempts = attempts
        return segment

    # -- checks ------------------------------------------------------------------------------

    def _check_function(self, identity: str) -> None:
        with self.lock, transaction(self.db, self.path, TIMEOUT):
            row = self.db.execute("SELECT value FROM meta WHERE key = 'function'").fetchone()
            if row is None:
                self.db.execute("INSERT INTO meta VALUES ('function', ?)", (identity,))
        if row is not None and row[0] != identity:
            raise ValueError(
                f"checkpoint {self.path} holds results of {row[0]}, not of {identity}: "
                "use another checkpoint file for another function"
            )

    def _check_length(self, total: int | None) -> None:
        if total is None:
            return
        row = self.db.execute("SELECT value FROM meta WHERE key = 'length'").fetchone()
        known = int(row[0]) if row else None
        if known is not None and known != total:
            raise ValueError(
                f"checkpoint {self.path}: the input differs from item {min(known, total)} on: "
                f"it has {total} items, the checkpointed run had {known}"
            )
        if self.stored_end > total:
            raise ValueError(
                f"checkpoint {self.path}: the input differs from item {total} on: it has "
                f"{total} items, the checkpoint holds results up to item {self.stored_end - 1}"
            )

    def _skipping(self, total: int) -> int:
        """How many of the first ``total`` positions will be skipped (read back)."""
        stored = self._one(
            "SELECT coalesce(sum(min(start + n, ?) - start), 0) FROM chunks WHERE start < ?",
            total,
            total,
        )
        if self.retry_failed:
            stored -= self._one("SELECT count(*) FROM failures WHERE pos < ?", total)
        return stored

    def _one(self, sql: str, *args: Any) -> int:
        return self.db.execute(sql, args).fetchone()[0]

    def close(self) -> None:
        with self.lock:
            self.db.close()


def _failure_row(part: Segment, i: int) -> tuple[Any, ...]:
    error = part.errors[i]
    duration = part.durations[i]
    return (part.start + i, error.type, error.message, error.traceback, error.cause,
            part.attempts(i), duration)  # fmt: skip
