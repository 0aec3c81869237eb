"""The streaming reader: lines of a file, a ``.gz`` file or stdin, read by the supervisor.

A regular file is cut into byte ranges that workers read themselves (:mod:`.ranges`); stdin
and compressed input cannot be read at an offset, so the supervisor reads them line by line
and sends the raw lines on. A line travels as ``(line number, raw bytes)``: the number goes
to the errors file, the bytes to a worker, and their length and checksum to the checkpoint.
"""

from __future__ import annotations

import gzip
import os
import sys
import threading
import zlib
from collections.abc import Iterator
from typing import IO, Any

Line = tuple[int, bytes]
GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20


class InputError(Exception):
    """The input cannot be read (missing, not gzip after all, truncated); one-line message."""


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
        info = os.fstat(raw.fileno())
        self.mode = info.st_mode
        self.size: int | None = None if self.is_stdin else info.st_size
        self.compressed = raw.peek(2)[:2] == GZIP_MAGIC
        self.stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if self.compressed else raw
        self._raw = raw

    def fileno(self) -> int:
        return self._raw.fileno()

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
