"""One engine call whose results the command line writes itself, a batch at a time.

It exists because the command line needs more than ``imap`` gives: whole
:class:`~poolrun.results.Segment` objects (one write per batch, no ``ItemResult`` per line),
and the report, trace, batch size and worker memory while and after the call runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..api import _Call, _OneShot, _segments
from ..options import make_options
from ..report import Report
from ..results import Segment
from ..trace import Trace


class Streaming:
    """A one-shot call: workers start with :meth:`segments` and stop when it ends.

    ``report()``, ``trace``, ``batch_size`` and ``worker_rss`` can be read while it runs or
    after it ended (they are ``None`` before the workers started).
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        trace_path: str | None = None,
        **options: Any,
    ) -> None:
        self.options = make_options(**options)
        self._fn = fn
        self._items = items
        self._trace_path = trace_path  # stream trace events there as the run goes
        self._call: _Call | None = None
        # called once the workers have started: a thread started before them would make
        # start_method="auto" fall back to the forkserver
        self.on_started: Callable[[], None] | None = None

    def segments(self) -> Iterator[Segment]:
        """Results a batch at a time (``start``, ``n``, ``values``, ``errors`` by position)."""
        with _OneShot(self._fn, self.options) as supervisor:
            self._call = _Call(supervisor, self._fn, self._items, self.options)
            if self.on_started is not None:
                self.on_started()  # the workers are up: threads are safe to start now
            if self._trace_path:
                self._call.trace.stream_to(self._trace_path)
            yield from _segments(self._call)

    def report(self) -> Report | None:
        return self._call.report() if self._call else None

    @property
    def trace(self) -> Trace | None:
        return self._call.trace if self._call else None

    @property
    def call(self) -> _Call | None:
        """The call running (supervisor, stats): what a live view or status file reads."""
        return self._call

    @property
    def batch_size(self) -> int | None:
        """The size the adaptive sizer gives the next batch."""
        return self._call.call.sizer.size if self._call else None

    @property
    def worker_rss(self) -> int | None:
        """The highest private memory any worker reached so far, in bytes."""
        if self._call is None:
            return None
        return max((w.peak_rss for w in self._call.stats.per_worker.values()), default=0)
