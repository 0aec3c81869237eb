"""What a run is doing now, as one plain dict: the live view draws it, the status file holds it.

A :class:`Snapshotter` reads a running call (its supervisor and stats) from the monitor's
thread while the supervisor's thread changes them. It only copies whole values and builtin
containers (``list(d.items())``, ``list(deque)``, ``dict(d)``): CPython runs those in C
without releasing the GIL when the keys are ints or strings, so each copy is consistent, and
the supervisor pays nothing for being watched.

The same dict, as JSON, is the status file a CLI job writes next to its checkpoint
(:class:`StatusFile`), which is how ``poolrun watch`` draws a job running elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from .api import _Call

SPARK_SECONDS = 60  # the throughput sparkline covers the last minute
RATE_SECONDS = 10.0  # the rate shown and the ETA use the last ten seconds
FORMAT = 1


class RateHistory:
    """Items done at each sample over the last minute, turned into per-second rates."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, done: int) -> None:
        self.samples.append((now, done))
        while self.samples and self.samples[0][0] < now - SPARK_SECONDS - 1:
            self.samples.popleft()

    def recent(self, now: float, started: float, done: int) -> float:
        """Items per second over the last ``RATE_SECONDS`` (since the start, before that)."""
        since, base = started, 0
        for t, d in self.samples:
            if t >= now - RATE_SECONDS:
                break
            since, base = t, d
        return (done - base) / max(now - since, 1e-9)

    def per_second(self, now: float) -> list[float]:
        """One rate per second of the last minute, oldest first (fewer early in a run)."""
        samples = list(self.samples)
        rates: list[float] = []
        j, prev = 0, None
        for k in range(SPARK_SECONDS, -1, -1):
            edge = now - k
            while j < len(samples) and samples[j][0] <= edge:
                j += 1
            if j == 0:
                continue
            at = samples[j - 1]
            if prev is not None and at[0] > prev[0]:
                rates.append(round((at[1] - prev[1]) / (at[0] - prev[0]), 1))
            elif prev is not None:
                rates.append(rates[-1] if rates else 0.0)
            prev = at
        return rates


class Snapshotter:
    """Builds the status dict of the call ``source()`` returns (``None`` before it starts)."""

    def __init__(
        self, source: Callable[[], _Call | None] | None = None, total: int | None = None
    ) -> None:
        self.source = source
        self.total = total  # set later by the CLI, once its line count is known
        # what counts as done and failed, if not the call's items: the CLI counts lines (a
        # batch of the byte-range path is a range of many lines)
        self.counts: Callable[[], tuple[int, int]] | None = None
        self.rates = RateHistory()
        self.first_seen: dict[int, float] = {}
        self.pid = os.getpid()
        self.pid_started = psutil.Process(self.pid).create_time()

    def take(self, state: str = "running") -> dict[str, Any] | None:
        call = self.source() if self.source is not None else None
        if call is None:
            return None
        stats = call.stats
        now = time.perf_counter()
        done, failed = self.counts() if self.counts else (stats.items, stats.failed)
        total = self.total if self.total is not None else call.total
        self.rates.add(now, done)
        rate = self.rates.recent(now, stats.started, done)
        eta = None
        if total is not None and rate > 0 and state == "running":
            eta = round(max(total - done, 0) / rate, 1)
        return {
            "format": FORMAT,
            "state": state,
            "pid": self.pid,
            "pid_started": self.pid_started,
            "updated": time.time(),
            "elapsed_s": round(now - stats.started, 2),
            "done": done,
            "failed": failed,
            "total": total,
            "items_per_s": round(rate, 1),
            "rates": self.rates.per_second(now),
            "eta_s": eta,
            "batch_size": stats.sizes.last or call.call.sizer.size,
            "reason": call.call.sizer.reason,
            "faults": dict(stats.counters),
            "max_rss": call.opts.max_rss,
            "workers": self._workers(call, now),
        }

    def _workers(self, call: _Call, now: float) -> list[dict[str, Any]]:
        sup, stats, timeline = call.supervisor, call.stats, call.stats.timeline
        retiring = set(sup.retiring)
        rows = []
        for w, queue in list(sup.inflight.items()):
            ids = list(queue)
            first = self.first_seen.setdefault(w, now)
            figures = stats.per_worker.get(w)
            busy = figures.busy_s / max(now - first, 1e-9) if figures else 0.0
            batch = sup.batches.get(ids[0]) if ids else None
            rows.append(
                {
                    "name": timeline.slot_name(w),
                    "label": stats.worker_names.get(w, str(w)),
                    "state": "recycling" if w in retiring else ("busy" if ids else "idle"),
                    "batch": ids[0] if ids else None,
                    "batch_items": len(batch.items) if batch is not None else None,
                    "queued": max(len(ids) - 1, 0),
                    "items": figures.items if figures else 0,
                    "busy_pct": round(min(100.0, 100.0 * busy), 1),
                    "rss": timeline.latest_rss.get(w),
                }
            )
        for w in [w for w in self.first_seen if w not in sup.inflight]:
            del self.first_seen[w]  # gone: died or recycled
        rows.sort(key=lambda r: (r["name"] is None, int((r["name"] or "w0")[1:])))
        return rows


def status_path(output: str) -> str:
    """Where a CLI job writing ``output`` keeps its status: beside its checkpoint."""
    stem = output[: -len(".jsonl")] if output.endswith(".jsonl") else output
    return stem + ".status.json"


class StatusFile:
    """The status dict as JSON, replaced atomically (written aside, then renamed) so a
    reader never sees half a file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.scratch = self.path.with_name(self.path.name + ".tmp")

    def write(self, snap: dict[str, Any]) -> None:
        self.scratch.write_text(json.dumps(snap), encoding="utf-8")
        os.replace(self.scratch, self.path)

    def read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None


def writer_alive(snap: dict[str, Any]) -> bool:
    """Is the process that wrote ``snap`` still running (and not a later one with its pid)?"""
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(snap["pid"])
        same = abs(proc.create_time() - snap["pid_started"]) < 1.0
        return same and proc.status() != psutil.STATUS_ZOMBIE
    return False
