"""Trace events of a run, exported as Chrome trace event JSON (Perfetto, chrome://tracing).

One complete ("X") event per batch on its worker's track, optional per-item events inside
it, and instant ("i") markers for faults: worker deaths, timeouts, memory kills, recycling.
Timestamps come from ``time.perf_counter``, which on Linux is the system-wide monotonic
clock, so the workers' and the supervisor's times line up on one axis.

Memory stays bounded whatever the run's length: the trace keeps the most recent
``max_events`` events and counts the older ones it dropped (the report says so). A trace
opened with :meth:`Trace.stream_to` drops nothing: events that leave the window are written
to the file as the run goes, so a day-long run's trace is complete and memory stays flat.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable, Sequence

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from typing import Any


MAX_EVENTS = 20_000  # ~10 MB of events: the last few minutes of a busy run


class Trace:
    def __init__(
        self,
        origin: float,
        with_items: bool = False,
        on_mark: Callable[[int, str, float], None] | None = None,
    ) -> None:
        self.origin = origin
        self.with_items = with_items
        self.on_mark = on_mark  # told of each fault marker (the report's timeline keeps them)
        self.events: deque[dict[str, Any]] = deque()
        self.max_events = MAX_EVENTS
        self.dropped = 0
        self._stream: Any = None  # the open file of stream_to(), if any
        self._streamed = 0
        self._tracks: dict[int, dict[str, Any]] = {}
        self.pid = os.getpid()

    def _us(self, t: float) -> float:
        return round((t - self.origin) * 1e6, 3)

    def _track(self, worker: int, label: str) -> None:
        if worker not in self._tracks:
            meta = {"name": "thread_name", "ph": "M", "pid": self.pid, "tid": worker}
            self._tracks[worker] = {**meta, "args": {"name": label}}

    def _add(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if len(self.events) > self.max_events:
            old = self.events.popleft()
            if self._stream is not None:
                self._write(old)
            else:
                self.dropped += 1

    def stream_to(self, path: str | os.PathLike[str]) -> None:
        """Write events to ``path`` as they leave the in-memory window; :meth:`close`
        writes the rest and ends the JSON document."""
        self._stream = open(path, "w")  # noqa: SIM115  (kept open for the run)
        self._stream.write('{"displayTimeUnit": "ms", "traceEvents": [\n')
        for event in self.events:
            self._write(event)
        self.events.clear()

    def _write(self, event: dict[str, Any]) -> None:
        import json

        self._stream.write(("" if not self._streamed else ",\n") + json.dumps(event))
        self._streamed += 1

    def close(self) -> None:
        """End a streamed trace: the window's events and the track names, then the close."""
        if self._stream is None:
            return
        for event in [*self.events, *self._tracks.values()]:
            self._write(event)
        self._stream.write("\n]}\n")
        self._stream.close()
        self._stream = None
        self.events.clear()

    def batch(
        self,
        worker: int,
        label: str,
        batch: int,
        started: float,
        ended: float,
        durations: Sequence[float],
        failed: int,
    ) -> None:
        self._track(worker, label)
        self._add(
            {
                "name": f"batch {batch}",
                "cat": "batch",
                "ph": "X",
                "pid": self.pid,
                "tid": worker,
                "ts": self._us(started),
                "dur": round((ended - started) * 1e6, 3),
                "args": {"batch": batch, "size": len(durations), "failed": failed},
            }
        )
        if self.with_items:
            t = started
            for pos, d in enumerate(durations):
                self._add(
                    {
                        "name": f"item {pos}",
                        "cat": "item",
                        "ph": "X",
                        "pid": self.pid,
                        "tid": worker,
                        "ts": self._us(t),
                        "dur": round(d * 1e6, 3),
                        "args": {"batch": batch},
                    }
                )
                t += d

    def memory(self, worker: int, batch: int, rss: int) -> None:
        """Attach the worker's RSS after a batch to that batch's event (it arrives just after)."""
        for event in itertools.islice(reversed(self.events), 64):
            if (
                event.get("cat") == "batch"
                and event["tid"] == worker
                and event["args"]["batch"] == batch
            ):
                event["args"]["rss_after"] = rss
                return

    def mark(self, worker: int, name: str, at: float, **args: Any) -> None:
        if self.on_mark is not None:
            self.on_mark(worker, name, at)
        self._add(
            {
                "name": name,
                "cat": "fault",
                "ph": "i",
                "s": "t",
                "pid": self.pid,
                "tid": worker,
                "ts": self._us(at),
                "args": args,
            }
        )

    def to_dict(self) -> dict[str, Any]:
        events = [*self._tracks.values(), *self.events]
        return {"traceEvents": events, "displayTimeUnit": "ms", "droppedEvents": self.dropped}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the trace as JSON (a streamed trace is completed in its own file instead)."""
        if self._stream is not None:
            self.close()
            return
        import json  # here, not at import: nothing on a run's path needs it

        with open(path, "w") as out:
            out.write(json.dumps(self.to_dict()))
