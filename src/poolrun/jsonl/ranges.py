"""Byte ranges of a regular input file: how the supervisor cuts it without reading it.

For a regular file the supervisor no longer moves lines. It cuts the file into ranges that
end at a line end and hands each worker ``(offset, length)``; the worker reads the range
itself (``os.pread``), splits, decodes, calls and encodes. Finding where a range ends costs
one small read near the wanted size and one ``find``: the supervisor touches a few KiB per
range, never every byte.

Line numbers are not known when a range is cut (that would mean counting every newline);
each range has an ``index``, the worker returns how many lines it held, and the supervisor
numbers lines as it writes ranges in order.
"""

from __future__ import annotations

import os
from typing import NamedTuple

WINDOW = 64 * 1024  # bytes read at a time to find a line end


class Range(NamedTuple):
    """One piece of the input: ``length`` bytes from ``offset``, the ``index``-th range."""

    index: int
    offset: int
    length: int


class Cutter:
    """Finds line starts in a file of ``end`` bytes (its size when the run started)."""

    def __init__(self, fd: int, end: int, window: int = WINDOW) -> None:
        self.fd = fd
        self.end = end
        self.window = window

    def line_start(self, at: int) -> int:
        """The first line start at or after ``at`` (``end`` if none): a range boundary.

        The byte before ``at`` decides whether ``at`` itself starts a line, so a line that
        ends exactly there is not cut off; a line longer than the window (lines of several
        MB) is searched window by window.
        """
        if at <= 0 or at >= self.end:
            return min(max(at, 0), self.end)
        pos = at - 1
        while pos < self.end:
            chunk = os.pread(self.fd, min(self.window, self.end - pos), pos)
            if not chunk:
                return self.end
            found = chunk.find(b"\n")
            if found >= 0:
                return pos + found + 1
            pos += len(chunk)
        return self.end

    def after_lines(self, at: int, lines: int) -> int:
        """The start of the line ``lines`` lines after ``at`` (a fixed ``--batch-size``)."""
        pos = at
        while lines > 0 and pos < self.end:
            chunk = os.pread(self.fd, min(self.window, self.end - pos), pos)
            if not chunk:
                break
            found = -1
            while lines > 0:
                found = chunk.find(b"\n", found + 1)
                if found < 0:
                    break
                lines -= 1
            if lines == 0:
                return pos + found + 1
            pos += len(chunk)
        return min(pos, self.end)
