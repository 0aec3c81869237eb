"""Opening a poolrun SQLite file: the kind check, WAL mode, and clear errors.

Every file says what it is in a ``meta`` table (``kind``), so a queue is never opened as a
checkpoint (nor any other database as either). WAL mode lets readers (``status()`` from
another process) go on while a drain commits; ``synchronous=NORMAL`` keeps every committed
transaction through a crash of the process (``kill -9``), not through a power cut, which is
what a checkpoint is for. Writers take the lock up front (``BEGIN IMMEDIATE``), so a claim
or a commit never fails half-way for want of it; one that cannot get it within the timeout
fails with :class:`DatabaseLocked`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator

VERSION = "1"


class DatabaseLocked(TimeoutError):
    """Another process held the file's write lock for longer than the timeout."""


def connect(
    path: str | os.PathLike[str], kind: str, schema: tuple[str, ...], timeout: float
) -> sqlite3.Connection:
    """A connection to the ``kind`` file at ``path``, made (``schema``: its statements) if
    missing.

    Raises ``ValueError`` when the file exists but is not a poolrun ``kind`` file."""
    path = os.fspath(path)
    fresh = not os.path.exists(path) or os.path.getsize(path) == 0
    try:
        db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        if fresh:
            with transaction(db, path, timeout):
                db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
                for statement in schema:
                    db.execute(statement)
                db.execute("INSERT OR IGNORE INTO meta VALUES ('kind', ?)", (kind,))
                db.execute("INSERT OR IGNORE INTO meta VALUES ('version', ?)", (VERSION,))
        found = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('kind', 'version')"))
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.DatabaseError as exc:
        if _is_locked(exc):
            raise DatabaseLocked(_locked_message(path, timeout)) from None
        raise ValueError(f"{path} is not a poolrun {kind} ({exc})") from None
    if found.get("kind") != kind:
        db.close()
        what = f"a poolrun {found['kind']}" if found.get("kind") else "another database"
        raise ValueError(f"{path} is not a poolrun {kind}: it is {what}")
    if found.get("version") != VERSION:
        db.close()
        raise ValueError(
            f"{path} is a poolrun {kind} of format {found.get('version')}, not {VERSION}"
        )
    return db


@contextlib.contextmanager
def transaction(db: sqlite3.Connection, path: str, timeout: float) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on any error); a lock held elsewhere
    past the timeout becomes :class:`DatabaseLocked`."""
    try:
        db.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if _is_locked(exc):
            raise DatabaseLocked(_locked_message(path, timeout)) from None
        raise
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    try:
        db.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        db.execute("ROLLBACK")
        if _is_locked(exc):
            raise DatabaseLocked(_locked_message(path, timeout)) from None
        raise


def _is_locked(exc: sqlite3.Error) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _locked_message(path: str, timeout: float) -> str:
    return f"{path} stayed locked by another process for more than {timeout:g}s (timeout=)"
