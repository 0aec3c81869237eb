"""What a run counts while it goes: items, batches, faults, worker figures, item times.

Cheap to update (one update per batch; item times go into a log-spaced histogram, so a run
of a billion items costs the same memory as a run of ten), and turned into a
:class:`~poolrun.report.Report` when the run ends. Plain classes only: this module is on the
path of every first call, and :mod:`poolrun.report` (a dataclass, the table, JSON and HTML)
is imported only when a report is asked for.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Sequence

from .items import Uniform
from .timeline import Timeline

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from typing import Any

    from .report import Report

_BINS_PER_DECADE = 50
_LOW_EXP = -8  # 10 ns
_HIGH_EXP = 5  # ~28 hours
_NBINS = (_HIGH_EXP - _LOW_EXP) * _BINS_PER_DECADE + 2
FINE_GRAINED_SECONDS = 5e-6


_FLOOR = 10.0**_LOW_EXP


def _bin(seconds: float) -> int:
    exponent = math.log10(max(seconds, _FLOOR))
    return min(int((exponent - _LOW_EXP) * _BINS_PER_DECADE) + 1, _NBINS - 1)


_EDGES: list[float] = []  # _EDGES[i]: the least duration in bin i + 1, made when first needed


def _count_into(counts: list[int], durations: Sequence[float]) -> None:
    """Add each duration to its bin: sorted once, then each bin's share found by bisection
    (3-4x faster than a ``log10`` per item, and this runs in the supervisor)."""
    if not _EDGES:
        _EDGES.extend(10.0 ** (_LOW_EXP + i / _BINS_PER_DECADE) for i in range(_NBINS))
    ordered = sorted(durations)
    low, high = _bin(ordered[0]), _bin(ordered[-1])
    start = 0
    for index in range(low, high):
        end = bisect.bisect_left(ordered, _EDGES[index], start)
        counts[index] += end - start
        start = end
    counts[high] += len(ordered) - start


class LatencyHistogram:
    """Item durations in log-spaced bins (2% wide): exact enough for p50/p95/p99.

    Plain Python on purpose: numpy would cost the supervisor ~80 ms of import on a run's
    first batch, more than many whole runs take. Binning costs a ``log10`` per timed item,
    supervisor time that two workers on two cores feel, so batches wait unbinned (their
    duration arrays, which the results hold anyway) and are binned when a figure is read,
    or once :data:`PENDING_ITEMS` items wait (16 MB: memory stays bounded on a streamed run).
    Items under ~2 µs arrive as a :class:`Uniform`: one bin for all of them, at once.
    """

    PENDING_ITEMS = 2_000_000

    def __init__(self) -> None:
        self._counts = [0] * _NBINS
        self._total = 0.0
        self._n = 0
        self._pending: list[Sequence[float]] = []
        self._pending_items = 0

    def add(self, durations: Sequence[float]) -> None:
        if not len(durations):
            return
        if isinstance(durations, Uniform):  # one value, n times: one bin
            self._total += durations.value * durations.n
            self._n += durations.n
            self._counts[_bin(durations.value)] += durations.n
            return
        self._pending.append(durations)
        self._pending_items += len(durations)
        if self._pending_items >= self.PENDING_ITEMS:
            self._flush()

    def _flush(self) -> None:
        counts = self._counts
        for durations in self._pending:
            self._total += math.fsum(durations)
            self._n += len(durations)
            _count_into(counts, durations)
        self._pending.clear()
        self._pending_items = 0

    @property
    def counts(self) -> list[int]:
        self._flush()
        return self._counts

    @property
    def total(self) -> float:
        """Seconds inside the function, all items together."""
        self._flush()
        return self._total

    @property
    def n(self) -> int:
        self._flush()
        return self._n

    def percentile(self, q: float) -> float | None:
        if self.n == 0:
            return None
        rank = max(math.ceil(q / 100.0 * self.n), 1)
        seen, idx, counts = 0, 0, self.counts
        while seen < rank:
            seen += counts[idx]
            idx += 1
        idx -= 1
        centre = _LOW_EXP + (idx - 0.5) / _BINS_PER_DECADE
        return 10.0**centre

    def buckets(self) -> list[list[float]]:
        """``[low, high, count]`` (seconds) of each bin that holds items, for a histogram."""
        return [
            [
                float(f"{10.0 ** (_LOW_EXP + (idx - 1) / _BINS_PER_DECADE):.4g}"),
                float(f"{10.0 ** (_LOW_EXP + idx / _BINS_PER_DECADE):.4g}"),
                count,
            ]
            for idx, count in enumerate(self.counts)
            if count
        ]


class SizeStats:
    """First, last, smallest and largest batch size of a run."""

    __slots__ = ("first", "last", "max", "min")

    def __init__(self) -> None:
        self.first: int | None = None
        self.last: int | None = None
        self.min: int | None = None
        self.max: int | None = None

    def to_dict(self) -> dict[str, int | None]:
        return {"first": self.first, "last": self.last, "min": self.min, "max": self.max}

    def record(self, size: int) -> None:
        if self.first is None:
            self.first = size
        self.last = size
        self.min = size if self.min is None else min(self.min, size)
        self.max = size if self.max is None else max(self.max, size)


class WorkerFigures:
    """One worker's share of a run."""

    __slots__ = ("batches", "busy_s", "items", "peak_rss")

    def __init__(self) -> None:
        self.busy_s = 0.0
        self.items = 0
        self.batches = 0
        self.peak_rss = 0


class Stats:
    """Mutable tallies the supervisor updates as batches finish and faults happen."""

    def __init__(self, backend: str, workers: int, max_rss: int | None = None) -> None:
        self.backend = backend
        self.workers = workers
        self.start_method = ""
        self.started = time.perf_counter()
        self.ended: float | None = None
        self.items = 0
        self.failed = 0
        self.resumed = 0  # items read back from a checkpoint, not run; how many had failed:
        self.resumed_failed = 0
        self.rate: dict[str, Any] = {}  # rate=: the limit and the rate held
        self.live_view_cpu_s: float | None = None  # what drawing the live view cost
        self.batches = 0
        self.latency = LatencyHistogram()
        self.per_worker: dict[int, WorkerFigures] = {}
        self.worker_names: dict[int, str] = {}
        self.counters = {
            "worker_deaths": 0,
            "restarts": 0,
            "timeouts": 0,
            "retries": 0,
            "memory_kills": 0,
            "recycled": 0,
            "splits": 0,
        }
        self.sizes = SizeStats()
        self.timeline = Timeline(self.started, workers, max_rss)

    def worker(self, worker: int) -> WorkerFigures:
        found = self.per_worker.get(worker)
        if found is None:
            found = self.per_worker[worker] = WorkerFigures()
        return found

    def batch_done(self, worker: int, durations: Sequence[float], busy: float) -> None:
        self.batches += 1
        figures = self.worker(worker)
        figures.busy_s += busy
        figures.items += len(durations)
        figures.batches += 1
        self.latency.add(durations)
        self.timeline.batch(worker, len(durations), busy)

    def rss_seen(self, worker: int, rss: int) -> None:
        figures = self.worker(worker)
        figures.peak_rss = max(figures.peak_rss, rss)
        self.timeline.rss(worker, rss)

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def finish(self) -> Report:
        from .report import Report  # imported when a report is asked for, not before

        self.ended = self.ended or time.perf_counter()
        return Report.from_stats(self)
