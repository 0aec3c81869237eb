"""Trace events of a run, exported as Chrome trace event JSON (Perfetto, chrome://tracing).

One complete ("X") event per batch on its worker's track, optional per-item events inside
it, and instant ("i") markers for faults: worker deaths, timeouts, memory kills, recycling.
Timestamps come from ``time.perf_counter``, which on Linux is the system-wide monotonic
clock, so the workers' and the supervisor's times line up on one axis.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


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
        self.events: list[dict[str, Any]] = []
        self._tracks: set[int] = set()
        self.pid = os.getpid()

    def _us(self, t: float) -> float:
        return round((t - self.origin) * 1e6, 3)

    def _track(self, worker: int, label: str) -> None:
        if worker not in self._tracks:
            self._tracks.add(worker)
            self.events.append(
                {
                    "name": "thread_name",
                    "ph": "M",
                    "pid": self.pid,
                    "tid": worker,
                    "args": {"name": label},
                }
            )

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
        self.events.append(
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
                self.events.append(
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
        for event in reversed(self.events[-64:]):
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
        self.events.append(
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
        return {"traceEvents": self.events, "displayTimeUnit": "ms"}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))
