"""The line path for the lines of a range that need the engine's per-line handling.

A byte range is one engine item, so the engine can only blame, retry or time out a whole
range. When a worker dies in a range (a crash, a timeout, the memory limit), or lines of it
raised and ``--retries`` allows another attempt, those lines run again here one item per
line: the engine then isolates the poison line exactly as on the streaming path (it fails
alone, its neighbours succeed) and retries with backoff. This is rare, so the pool starts
on first use and stays warm for the rest of the run.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ..api import _Call, _segments, make_backend
from ..jsonl import LineTask
from ..options import make_options
from ..results import ItemResult
from ..supervisor import Supervisor


class LinePool:
    """Warm workers that run single lines through the engine, with its usual options."""

    def __init__(self, spec: str, options: dict[str, Any]) -> None:
        self.task = LineTask(spec)
        self.options = make_options(**{**options, "batch_size": "auto", "max_failures": None})
        self.supervisor: Supervisor | None = None
        self.counters: Counter[str] = Counter()

    def run(self, raws: list[bytes], retries: int) -> list[ItemResult]:
        """Each line's result, in order; ``retries`` more attempts for lines that raise."""
        if self.supervisor is None:
            backend = make_backend(self.options)
            backend.start()
            self.supervisor = Supervisor(backend, self.options.inflight)
        options = self.options.with_changes(retries=retries)
        call = _Call(self.supervisor, self.task, raws, options)
        results = [result for segment in _segments(call) for result in segment.items()]
        self.counters.update(call.stats.counters)
        return results

    def close(self) -> None:
        if self.supervisor is not None:
            self.supervisor.backend.close(wait=False)
            self.supervisor = None
