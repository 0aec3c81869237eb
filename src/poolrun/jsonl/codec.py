"""The worker-side codec: raw JSON lines in, encoded result lines out.

The supervisor moves bytes, not objects: workers decode each line (orjson), call the user's
function and encode its result, because pickling dicts in the parent is what makes every
other pool slower than a serial loop on cheap JSONL records.

:class:`LineTask` is the function the engine runs, for both ways a run reads its input:

* one raw line per item (stdin, ``.gz``: the supervisor reads the lines); a line that fails
  raises, and the engine records that item's error;
* one :class:`~poolrun.jsonl.ranges.Range` of a regular file per item: the worker reads the
  range itself, runs every line in it and returns one block of output lines plus the failed
  lines (a :class:`RangeResult`).

Both go through the same loop in :meth:`LineTask.__call__`, so the traceback of a failed line
(``File ..., in __call__`` above the user's frames) reads the same either way, and so does
every byte of the output.
"""

from __future__ import annotations

import io
import os
import time
import zlib
from _pickle import PickleBuffer  # not ``pickle``, which imports ``re``
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson
import psutil

from .. import worker
from ..backends.wire import OutOfBand
from ..items import describe_exception
from ..spec import resolve
from .ranges import Range
from .reader import InputError

DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE


class InvalidJSON(ValueError):
    """Raised in a worker for an input line that is not JSON; it fails that line only."""


INVALID_JSON = f"{InvalidJSON.__module__}.{InvalidJSON.__qualname__}"


def _default(value: Any) -> Any:
    """What orjson does not write by itself: numpy values it refuses (non-contiguous arrays,
    object arrays, unusual dtypes), datetime subclasses such as pandas' Timestamp, sets."""
    tolist = getattr(value, "tolist", None)
    if tolist is not None:
        return tolist()
    isoformat = getattr(value, "isoformat", None)
    if isoformat is not None:
        return isoformat()
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def encode(value: Any) -> bytes:
    """One output line: ``value`` as JSON, newline included."""
    return orjson.dumps(value, default=_default, option=DUMPS_OPTIONS)


class LineFailure(NamedTuple):
    """A line of a range that failed: where it was, what went wrong, and its bytes."""

    line: int  # 0-based within the range
    out_at: int  # bytes of the range's output block written before it
    type: str
    message: str
    traceback: str
    raw: bytes
    retryable: bool  # an Exception (a SystemExit, say, is not run again)


class RangeResult(NamedTuple):
    """What a worker sends back for one range: everything the supervisor needs to write it,
    checkpoint it and size the next range, in one message."""

    # the output lines of the lines that succeeded, in order: any bytes-like object (a
    # PickleBuffer in the worker, a view of the received message in the supervisor)
    block: Any
    failures: list[LineFailure]
    lines: int  # lines in the range, blank ones included
    crc: int  # zlib.crc32 of the range's bytes (the checkpoint chains these)
    seconds: float  # time spent on the range in the worker
    rss_start: int
    rss_end: int


class LineTask:
    """The callable the engine runs: a raw line, or a byte range of the input file.

    Only the SPEC string (and the input path) is pickled. The function is resolved when the
    task is built: in the supervisor to fail early with a clear message, and in each worker
    when the worker loads the task, so a SPEC that imports in the supervisor but not in a
    worker stops the run as a setup error (exit 2) instead of failing every line one by one.

    ``path`` is the regular file ranges are read from (opened once per worker, read with
    ``os.pread``); ``timed`` restarts the worker's item clock for every line of a range, so
    a per-line ``--timeout`` means per line, not per range.
    """

    def __init__(self, spec: str, path: str | None = None, timed: bool = False) -> None:
        self.spec = spec
        self.path = path
        self.timed = timed
        self.fn: Callable[[Any], Any] = resolve(spec)
        self._fd: int | None = None
        self._process: psutil.Process | None = None

    def __reduce__(self) -> tuple[type[LineTask], tuple[str, str | None, bool]]:
        return (LineTask, (self.spec, self.path, self.timed))

    def __call__(self, item: bytes | Range) -> Any:
        ranged = item.__class__ is Range
        if ranged:
            started, rss_start = time.perf_counter(), self._rss()
            data = self._read(item)  # type: ignore[arg-type]
            # One line at a time, as a file reads them, not ``data.split()``: 20k lines alive
            # at once fill ~5 MB of Python's small-object arenas, which go back to the system
            # when the range ends and are faulted in again for the next (~120k page faults a
            # worker per GB of input, a fifth of its time on a 3 µs transform).
            lines: Any = io.BytesIO(data)
        else:
            lines = [item]  # type: ignore[list-item]
        # One growing buffer, not a list of orjson outputs joined at the end: each bytes
        # object orjson returns keeps its 4 KiB first buffer's heap chunk pinned while it
        # lives, so 20k kept lines cost 80 MiB of fresh pages (page faults, RSS) per range.
        out = OutOfBand()  # a bytearray that travels uncopied (see backends.wire.pack)
        failures: list[LineFailure] = []
        loads, dumps, fn = orjson.loads, orjson.dumps, self.fn
        clock = self._item_clock() if ranged else None
        number = -1
        for number, line in enumerate(lines):
            try:
                record = loads(line)
            except orjson.JSONDecodeError as exc:
                if line.isspace() or not line:
                    continue  # blank lines are skipped (they still count for line numbers)
                if not ranged:
                    raise InvalidJSON(str(exc)) from None
                raw = _without_newline(line)
                failures.append(
                    LineFailure(number, len(out), INVALID_JSON, str(exc), "", raw, False)
                )
                continue
            if clock is not None:
                clock()
            try:
                out += dumps(fn(record), default=_default, option=DUMPS_OPTIONS)
            except BaseException as exc:  # the line failed, not the worker
                if not ranged:
                    raise
                kind, message, text = describe_exception(exc, 0)
                retryable = isinstance(exc, Exception)
                raw = _without_newline(line)
                failures.append(LineFailure(number, len(out), kind, message, text, raw, retryable))
        if not ranged:
            return bytes(out)
        seconds = time.perf_counter() - started
        block = PickleBuffer(out)
        return RangeResult(
            block, failures, number + 1, zlib.crc32(data), seconds, rss_start, self._rss()
        )

    def _rss(self) -> int:
        """This worker's RSS, for sizing ranges by memory as well as by time."""
        if self._process is None:
            self._process = psutil.Process()
        return self._process.memory_info().rss

    def _item_clock(self) -> Callable[[], None] | None:
        return worker.restart_item_clock if self.timed else None

    def _read(self, piece: Range) -> bytes:
        """The range's bytes, read by this worker (the file stays open between ranges)."""
        assert self.path is not None
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        data = os.pread(self._fd, piece.length, piece.offset)
        if len(data) < piece.length:
            raise InputError(
                f"{self.path!r} became shorter while it was read (no bytes at offset "
                f"{piece.offset + len(data)}); run again on a file that stays as it is"
            )
        return data


def _without_newline(line: bytes) -> bytes:
    """A line as the errors file records it: without its ``\\n`` (a ``\\r`` before it stays)."""
    return line[:-1] if line.endswith(b"\n") else line
