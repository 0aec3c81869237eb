"""JSON Lines in and out: the streaming reader, the worker-side codec, the writers.

The supervisor moves bytes, not objects: it reads raw lines and hands them to workers as they
are; a :class:`LineTask` in each worker decodes a line, calls the user's function and encodes
the result, and the supervisor writes the encoded bytes out. Pickling dicts in the parent is
what makes every other pool slower than a serial loop on cheap JSONL records.

A line travels as ``(line number, raw bytes)``: the number goes to the errors file, the
bytes to a worker, and their length and hash to the resume checkpoint.
"""

from __future__ import annotations

import gzip
import os
import stat
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from operator import itemgetter
from typing import IO, Any

import orjson

from .results import ItemError
from .spec import resolve

Line = tuple[int, bytes]
GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20
DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE


class InvalidJSON(ValueError):
    """Raised in a worker for an input line that is not JSON; it fails that line only."""


INVALID_JSON = f"{InvalidJSON.__module__}.{InvalidJSON.__qualname__}"


class InputError(Exception):
    """The input cannot be read (missing, not gzip after all, truncated); one-line message."""


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


class LineTask:
    """The callable the engine runs: one raw input line in, one encoded output line out.

    Only the SPEC string is pickled. The function is resolved when the task is built: in the
    supervisor to fail early with a clear message, and in each worker when the worker loads
    the task, so a SPEC that imports in the supervisor but not in a worker stops the run as a
    setup error (exit 2) instead of failing every line one by one.
    """

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.fn: Callable[[Any], Any] = resolve(spec)

    def __reduce__(self) -> tuple[type[LineTask], tuple[str]]:
        return (LineTask, (self.spec,))

    def __call__(self, line: bytes) -> bytes:
        if line.isspace():
            return b""  # blank lines are skipped (they still count for line numbers)
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InvalidJSON(str(exc)) from None
        return encode(self.fn(record))


# -- reading ------------------------------------------------------------------------------


class Input:
    """An opened INPUT: a file or ``-`` for stdin, gzip-compressed or not (told by its first
    bytes, so a compressed stdin works too)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.is_stdin = path == "-"
        try:
            raw: Any = sys.stdin.buffer if self.is_stdin else open(path, "rb", buffering=CHUNK)  # noqa: SIM115
        except OSError as exc:
            raise InputError(f"cannot read {path!r}: {exc.strerror or exc}") from None
        self.size: int | None = None if self.is_stdin else os.fstat(raw.fileno()).st_size
        self.compressed = raw.peek(2)[:2] == GZIP_MAGIC
        self.stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if self.compressed else raw
        self._raw = raw

    def skip(self, nbytes: int, hasher: Any) -> None:
        """Read past the first ``nbytes`` (already handled by an earlier run), hashing them."""
        left = nbytes
        while left > 0:
            chunk = self._read(min(CHUNK, left))
            if not chunk:
                break
            hasher.update(chunk)
            left -= len(chunk)

    def lines(self, line: int = 0) -> Iterator[Line]:
        """Every line from here on as ``(number, raw)``, numbered after ``line``; read lazily."""
        try:
            for raw in self.stream:
                line += 1
                yield line, raw
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"cannot read {self.path!r} past line {line}: {exc}") from None

    def _read(self, n: int) -> bytes:
        try:
            return self.stream.read(n)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(f"cannot read {self.path!r}: {exc}") from None

    def close(self) -> None:
        if not self.is_stdin:
            self.stream.close()
            self._raw.close()


class LineCounter(threading.Thread):
    """Counts the lines of a plain file after ``offset`` in the background, so the progress
    bar gets a total and an ETA without delaying the start of the run."""

    def __init__(self, path: str, offset: int = 0) -> None:
        super().__init__(name="poolrun-line-counter", daemon=True)
        self.path = path
        self.offset = offset
        self.total: int | None = None

    def run(self) -> None:
        count, last = 0, b"\n"
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                while chunk := f.read(CHUNK):
                    count += chunk.count(b"\n")
                    last = chunk[-1:]
        except OSError:
            return
        self.total = count + (last != b"\n")


def read_errors(path: str) -> Iterator[Line]:
    """The failed lines of a poolrun errors file, to run again: ``(line, raw line)``.

    Lines that were not JSON are given back as their raw text; the others re-encoded.
    Records come back sorted by line number (an ``--unordered`` run writes them unsorted).
    """
    records = _errors_records(path)
    if _sorted(_errors_records(path)):
        yield from records
    else:
        yield from sorted(records, key=itemgetter(0))


def _sorted(records: Iterator[Line]) -> bool:
    previous = 0
    for line, _ in records:
        if line < previous:
            return False
        previous = line
    return True


def _errors_records(path: str) -> Iterator[Line]:
    source = Input(path)
    try:
        for number, text in source.lines():
            if text.isspace():
                continue
            try:
                record = orjson.loads(text)
                line, value, cause = record["line"], record["input"], record["error"]["cause"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise InputError(f"{path!r} line {number} is not a poolrun errors record") from None
            raw = value.encode() if cause == "invalid-json" else orjson.dumps(value)
            yield line, raw + b"\n"
    finally:
        source.close()


# -- writing ------------------------------------------------------------------------------


def error_record(line: int, raw: bytes, error: ItemError) -> bytes:
    """One errors-file line: the input line number, the input, and what went wrong.

    The input is the parsed JSON when the line is JSON, else the raw text (cause
    ``invalid-json``); the traceback of an invalid line would only point into poolrun.
    """
    if error.type == INVALID_JSON:
        fields = {
            "type": "JSONDecodeError",
            "message": error.message,
            "traceback": "",
            "cause": "invalid-json",
        }
        return encode({"line": line, "input": _text(raw), "error": fields})
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = _text(raw)
    fields = {
        "type": error.type,
        "message": error.message,
        "traceback": error.traceback,
        "cause": error.cause,
    }
    return encode({"line": line, "input": value, "error": fields})


def _text(raw: bytes) -> str:
    """The line as text, without its newline (``retry`` puts it back, to rerun the same bytes)."""
    return raw.removesuffix(b"\n").decode("utf-8", "replace")


class LineWriter:
    """Appends lines to a file (``path``) or stdout (``None``) and counts the bytes, so a
    checkpoint can say exactly how much of the file is complete.

    ``size`` is where a resumed file is cut back to (0 for a new run). A ``lazy`` file is
    created by its first line, so a run with no failures leaves no empty errors file.
    """

    def __init__(self, path: str | None, size: int = 0, lazy: bool = False) -> None:
        self.path = path
        self.size = size
        self._file: IO[bytes] | None = None
        self._regular = False
        if path is not None:
            _cut(path, size, remove_empty=lazy)
        if not lazy:
            self._open()

    def _open(self) -> None:
        if self.path is None:
            self._file = sys.stdout.buffer
            return
        self._file = open(self.path, "ab", buffering=CHUNK)  # noqa: SIM115
        self._regular = stat.S_ISREG(os.fstat(self._file.fileno()).st_mode)

    def write(self, data: bytes) -> None:
        if self._file is None:
            self._open()
        self._file.write(data)  # type: ignore[union-attr]
        self.size += len(data)

    def sync(self) -> None:
        """Flush, and make it durable for a regular file: a checkpoint may now name its size."""
        if self._file is None:
            return
        self._file.flush()
        if self._regular:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None and self.path is not None:
            self._file.close()
        elif self._file is not None:
            self._file.flush()
        self._file = None


def _cut(path: str, size: int, remove_empty: bool) -> None:
    """Cut a regular file back to ``size`` bytes (only regular ones: ``-o /dev/null`` works)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(info.st_mode):
        return
    if size == 0 and remove_empty:
        os.unlink(path)
    else:
        os.truncate(path, size)
