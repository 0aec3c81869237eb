"""Where the engine's items come from: the key of each one (an input position, a job id)
by engine index, and a finished segment cut into pieces of consecutive keys.

A durable store gives the engine only the items that still need running, so the engine's
index of an item is not its place in the input (a checkpoint skipped the items done
before) nor its job id (a queue hands out jobs by priority). :class:`Keys` remembers each
item's key from when the engine reads it until its segment is committed, and no longer:
memory follows the items in flight, not the input.
"""

from __future__ import annotations

import heapq
from array import array

from ..results import Segment


class Keys:
    """Keys (and a fixed-width tag each, e.g. a hash) of the items the engine read, by
    engine index, kept until the segment holding them is done."""

    def __init__(self, tag_width: int = 0) -> None:
        self.base = 0  # engine index of ``keys[0]``
        self.keys = array("q")
        self.tags = bytearray()
        self.width = tag_width
        self._done: list[tuple[int, int]] = []  # finished engine ranges not yet dropped

    def add(self, key: int, tag: bytes = b"") -> None:
        self.keys.append(key)
        self.tags += tag

    def get(self, start: int, n: int) -> tuple[array, bytes]:
        lo = start - self.base
        w = self.width
        return self.keys[lo : lo + n], bytes(self.tags[lo * w : (lo + n) * w])

    def forget(self, start: int, n: int) -> None:
        """The engine range ``[start, start + n)`` is committed; drop what nobody needs."""
        heapq.heappush(self._done, (start, start + n))
        drop = 0
        while self._done and self._done[0][0] == self.base + drop:
            drop = heapq.heappop(self._done)[1] - self.base
        if drop:
            del self.keys[:drop]
            del self.tags[: drop * self.width]
            self.base += drop


def runs(keys: array) -> list[tuple[int, int]]:
    """``[lo, hi)`` index ranges of ``keys`` whose keys go up by one."""
    n = len(keys)
    out, lo = [], 0
    for i in range(1, n):
        if keys[i] != keys[i - 1] + 1:
            out.append((lo, i))
            lo = i
    if n:
        out.append((lo, n))
    return out


def piece(segment: Segment, lo: int, hi: int, start: int) -> Segment:
    """Items ``[lo, hi)`` of a finished segment as a segment of their own at ``start``."""
    if lo == 0 and hi == segment.n:
        segment.start = start
        return segment
    return copy_piece(segment, lo, hi, start)


def copy_piece(segment: Segment, lo: int, hi: int, start: int) -> Segment:
    """Like :func:`piece`, but always a new segment (``segment`` stays as it is)."""
    out = Segment(start, hi - lo)
    out.values = segment.values[lo:hi]
    out.durations = array("d", segment.durations[lo:hi])
    out.errors = {p - lo: e for p, e in segment.errors.items() if lo <= p < hi}
    out.overrides = {p - lo: o for p, o in segment.overrides.items() if lo <= p < hi}
    out.worker, out.batch, out.remaining = segment.worker, segment.batch, 0
    return out
