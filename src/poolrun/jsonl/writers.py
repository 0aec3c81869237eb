"""Output and errors files that count their bytes, so a checkpoint can name their sizes."""

from __future__ import annotations

import os
import stat
import sys
from typing import IO

CHUNK = 1 << 20


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

    def write(self, data: bytes | memoryview) -> None:
        if self._file is None:
            self._open()
        self._file.write(data)  # type: ignore[union-attr]
        self.size += memoryview(data).nbytes

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
