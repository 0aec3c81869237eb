"""A run's time series, kept in bins of equal width that merge as the run grows.

Why bins that merge: the HTML report draws throughput, batch size, busy % and each worker's
RSS over the whole run, and a run may last a second or a day. Bins start
``FIRST_BIN_SECONDS`` wide; once a run fills ``MAX_BINS`` of them, neighbours merge pairwise
and the width doubles. A day-long run keeps at most ``MAX_BINS`` points per series (about
three minutes each), a ten-second run keeps 0.1 s detail, and the cost per batch stays a
clock read and three additions, whatever the run's length.

Fault marks (deaths, timeouts, memory kills, recycles) are kept one by one, up to
``MAX_MARKS``; past that, marks of one kind close in time merge into one with a count.

Workers come and go (a dead or recycled worker is replaced by a new process), so RSS is
kept per *slot*: a new worker takes the slot its predecessor left, and the chart shows one
line per place in the pool rather than one per process that ever lived.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from typing import Any

MAX_BINS = 480
FIRST_BIN_SECONDS = 0.1
MAX_MARKS = 400


def mark_kind(name: str) -> str:
    """The four kinds of marks a report draws, from a trace marker's name (the cause)."""
    if name == "timeout":
        return "timeout"
    if name == "memory-limit":
        return "memory-kill"
    if name.startswith("recycled"):
        return "recycle"
    return "crash"


class Timeline:
    """Items, batches, busy time and peak RSS per time bin, plus the fault marks.

    Fed by :class:`~poolrun.report.Stats` (``batch``, ``rss``) and by the trace's fault
    markers (``mark``), all from the supervisor's thread; read by the report at the end and
    by the live view while the run goes (plain reads of whole values).
    """

    def __init__(
        self,
        origin: float,
        workers: int,
        max_rss: int | None = None,
        max_bins: int = MAX_BINS,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.origin = origin
        self.workers = workers
        self.max_rss = max_rss
        self.max_bins = max_bins
        self.clock = clock
        self.width = FIRST_BIN_SECONDS
        self.items: list[int] = [0]
        self.batches: list[int] = [0]
        self.busy: list[float] = [0.0]
        self.peaks: list[list[int]] = []  # per slot, per bin: the highest reading (0: none)
        self.slots: dict[int, int] = {}  # worker id -> slot
        self.free_slots: list[int] = []
        self.latest_rss: dict[int, int] = {}  # worker id -> its last reading
        self.marks: list[list[Any]] = []  # [t, kind, slot, cause, count]
        self._start = origin  # the last bin's start and end
        self._end = origin + self.width

    # -- fed while the run goes ------------------------------------------------------------

    def batch(self, worker: int, n: int, busy: float) -> None:
        """A batch of ``n`` items finished on ``worker`` after ``busy`` seconds of work."""
        now = self.clock()
        if now >= self._end:
            self._advance(now)
        if worker not in self.slots:
            self._take_slot(worker)
        self.items[-1] += n
        self.batches[-1] += 1
        if busy <= now - self._start:
            self.busy[-1] += busy
        else:
            self._spread_busy(now, busy)

    def rss(self, worker: int, rss: int) -> None:
        """A reading of ``worker``'s RSS in bytes."""
        now = self.clock()
        if now >= self._end:
            self._advance(now)
        self.latest_rss[worker] = rss
        slot = self.slots.get(worker)
        if slot is None:
            slot = self._take_slot(worker)
        series = self.peaks[slot]
        if rss > series[-1]:
            series[-1] = rss

    def mark(self, worker: int, name: str, at: float) -> None:
        """A worker ended: died (``name`` is the cause), timed out, was killed for memory,
        or was recycled. Its slot is left for its replacement."""
        slot = self.slots.pop(worker, None)
        self.latest_rss.pop(worker, None)
        if slot is not None:
            heapq.heappush(self.free_slots, slot)
        self.marks.append([at - self.origin, mark_kind(name), slot, name, 1])
        if len(self.marks) > MAX_MARKS:
            self._merge_marks()

    def slot_name(self, worker: int) -> str | None:
        slot = self.slots.get(worker)
        return None if slot is None else f"w{slot + 1}"

    # -- bins ------------------------------------------------------------------------------

    def _take_slot(self, worker: int) -> int:
        if self.free_slots:
            slot = heapq.heappop(self.free_slots)
        else:
            slot = len(self.peaks)
            self.peaks.append([0] * len(self.items))
        self.slots[worker] = slot
        return slot

    def _advance(self, now: float) -> None:
        """Add empty bins up to ``now``, merging pairs first while they would be too many."""
        needed = int((now - self.origin) / self.width) + 1
        while needed > self.max_bins:
            self._merge_bins()
            needed = int((now - self.origin) / self.width) + 1
        pad = needed - len(self.items)
        if pad > 0:
            self.items.extend([0] * pad)
            self.batches.extend([0] * pad)
            self.busy.extend([0.0] * pad)
            for series in self.peaks:
                series.extend([0] * pad)
        self._start = self.origin + (len(self.items) - 1) * self.width
        self._end = self._start + self.width

    def _merge_bins(self) -> None:
        self.width *= 2
        self.items = _pairs(self.items, sum)
        self.batches = _pairs(self.batches, sum)
        self.busy = _pairs(self.busy, sum)
        self.peaks = [_pairs(series, max) for series in self.peaks]

    def _spread_busy(self, now: float, busy: float) -> None:
        """A batch longer than the time since its bin began: its busy time goes back over
        the bins it ran in, so no bin shows a worker busier than 100 %."""
        i, end = len(self.busy) - 1, now
        while busy > 0 and i >= 0:
            start = self.origin + i * self.width
            part = min(busy, end - start)
            self.busy[i] += part
            busy -= part
            end, i = start, i - 1

    def _merge_marks(self) -> None:
        """Too many marks: merge those of one kind within ever wider windows."""
        window = self.width
        while len(self.marks) > MAX_MARKS // 2:
            merged: dict[tuple[str, int], list[Any]] = {}
            for t, kind, slot, cause, count in self.marks:
                key = (kind, int(t / window))
                found = merged.get(key)
                if found is None:
                    merged[key] = [t, kind, slot, cause, count]
                else:
                    found[4] += count
                    if found[2] != slot:
                        found[2] = None
                    if found[3] != cause:
                        found[3] = kind
            self.marks = sorted(merged.values(), key=lambda m: m[0])
            window *= 2

    # -- read at the end -------------------------------------------------------------------

    def to_dict(self, end: float) -> dict[str, Any]:
        """The series from the run's start to ``end``: JSON-ready, rounded, and small."""
        if end >= self._end:
            self._advance(end)
        width = self.width
        last = max(end - self._start, 1e-9)  # the last bin only covers up to the end
        spans = [width] * (len(self.items) - 1) + [min(last, width)]
        capacity = [s * self.workers for s in spans]
        return {
            "bin_seconds": width,
            "t": [round(i * width, 3) for i in range(len(self.items))],
            "items_per_s": [round(n / s, 1) for n, s in zip(self.items, spans, strict=True)],
            "batch_size": [
                round(n / b, 1) if b else None
                for n, b in zip(self.items, self.batches, strict=True)
            ],
            "busy_pct": [
                round(min(100.0, 100.0 * b / c), 1)
                for b, c in zip(self.busy, capacity, strict=True)
            ],
            "rss_bytes": {
                f"w{slot + 1}": [v or None for v in series]
                for slot, series in enumerate(self.peaks)
            },
            "max_rss": self.max_rss,
            "marks": [
                {
                    "t": round(t, 3),
                    "kind": kind,
                    "worker": None if slot is None else f"w{slot + 1}",
                    "cause": cause,
                    "count": count,
                }
                for t, kind, slot, cause, count in self.marks
            ],
        }


def _pairs(values: list[Any], combine: Callable[[tuple[Any, ...]], Any]) -> list[Any]:
    return [combine(values[i : i + 2]) for i in range(0, len(values), 2)]
