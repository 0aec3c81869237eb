"""The thread that watches a run: it draws the live view and writes the CLI's status file.

Why a thread: the supervisor blocks in ``wait`` until a worker reports, which may be many
seconds when items are slow, and a view that only moved when batches finished would look
hung. The monitor wakes ``REFRESH_SECONDS`` apart, takes one snapshot (see
:mod:`poolrun.status`: copies of whole values, nothing the supervisor must lock), redraws,
and every ``STATUS_SECONDS`` replaces the status file. The supervisor's loop is unchanged.

:class:`Monitor` stands in for :class:`~poolrun.progress.Progress` (``update``, ``close``,
``total``, ``bar``): when the live view is not drawn, the plain progress output (a tqdm bar,
or a line every few seconds when stderr is not a terminal) still goes through it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from .progress import Progress
from .status import Snapshotter, StatusFile

if TYPE_CHECKING:
    from .api import _Call
    from .live import LiveDisplay

REFRESH_SECONDS = 0.5  # twice a second: a frame costs ~3 ms of the GIL
STATUS_SECONDS = 1.0
# progress=True on a terminal: the live view, once the run has gone this long and is not
# about to end (a run of a second or two gets no display rather than a flash of one).
AUTO_AFTER_SECONDS = 1.0
AUTO_MIN_ETA_SECONDS = 2.0
MODES = (False, True, "auto", "live", "bar")


class Monitor:
    """Snapshots a call a few times a second for a live display and/or a status file."""

    def __init__(
        self,
        snapshots: Snapshotter,
        fallback: Progress,
        display: LiveDisplay | None = None,
        defer: bool = False,
        status: StatusFile | None = None,
    ) -> None:
        self.snapshots = snapshots
        self.fallback = fallback
        self.display = display
        self.defer = defer
        self.status = status
        self.next_status = 0.0
        # CPU time the view's frames took, the final one included: the run's report shows
        # what watching it cost (seconds; None when nothing was drawn)
        self.cpu_s: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if snapshots.source is not None:
            self._start()

    # -- the Progress interface ------------------------------------------------------------

    @property
    def total(self) -> int | None:
        return self.snapshots.total

    @total.setter
    def total(self, value: int | None) -> None:
        self.snapshots.total = value
        self.fallback.total = value

    @property
    def bar(self) -> Any:
        return self.fallback.bar

    @property
    def shows_progress(self) -> bool:
        """Does anything show (or record) progress? Then a line count for the total helps."""
        return self.fallback.enabled or self.display is not None or self.status is not None

    def update(
        self, n: int, failed: int = 0, batch_size: int | None = None, rss: int | None = None
    ) -> None:
        self.fallback.update(n, failed, batch_size, rss)

    def close(self) -> None:
        """Stop the thread, then draw and write the final state once more."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            snap = self.snapshots.take("finished")
            if self.display is not None and self.display.started:
                self._timed(self.display.close, snap)
            if self.status is not None and snap is not None:
                self.status.write(snap)
        self.fallback.close()

    # -- the thread ------------------------------------------------------------------------

    def follow(
        self,
        source: Callable[[], _Call | None],
        counts: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        """Watch the call ``source()`` returns, once it exists (the CLI's job makes its call
        after its progress display); ``counts`` gives (done, failed) when they are not the
        call's items (the CLI's lines)."""
        self.snapshots.source = source
        self.snapshots.counts = counts
        self._start()

    def _start(self) -> None:
        if self._thread is None and (self.display is not None or self.status is not None):
            self._thread = threading.Thread(target=self._loop, name="poolrun-monitor", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            snap = self.snapshots.take()
            if snap is None:
                continue
            if self.display is not None and (self.display.started or due(snap, self.defer)):
                self._timed(self.display.show, snap)
            now = time.monotonic()
            if self.status is not None and now >= self.next_status:
                self.next_status = now + STATUS_SECONDS
                self.status.write(snap)

    def _timed(self, draw: Callable[[Any], None], snap: dict[str, Any] | None) -> None:
        """Draw, adding the CPU time it took to ``cpu_s`` (frames only, not the status file)."""
        before = time.thread_time()
        draw(snap)
        self.cpu_s = (self.cpu_s or 0.0) + time.thread_time() - before


def due(snap: dict[str, Any], defer: bool) -> bool:
    """Should the live view appear now? At once, unless deferred: then once the run has
    gone on for a while and does not look about to end."""
    if not defer:
        return True
    if snap["elapsed_s"] < AUTO_AFTER_SECONDS:
        return False
    return snap["eta_s"] is None or snap["eta_s"] >= AUTO_MIN_ETA_SECONDS


def progress_display(
    mode: bool | str,
    total: int | None,
    source: Callable[[], _Call | None] | None,
    stream: TextIO | None = None,
    status_path: str | None = None,
) -> Progress | Monitor:
    """The progress output for ``progress=mode``.

    ``False``: none. ``"bar"``: the tqdm bar. ``True``/``"auto"``: the live view on a
    terminal once the run looks longer than a few seconds. ``"live"``: the live view at
    once. Off a terminal, every mode but ``False`` prints a line every few seconds. With
    ``status_path`` (the CLI), a status file is written whatever is shown.
    """
    stream = stream or sys.stderr
    live = mode in (True, "auto", "live") and stream.isatty()
    fallback = Progress(total, bool(mode) and not live, stream)
    if not live and status_path is None:
        return fallback
    display = None
    if live:
        from .live import LiveDisplay  # rich loads only when the view is drawn

        display = LiveDisplay(stream)
    status = StatusFile(status_path) if status_path else None
    return Monitor(Snapshotter(source, total), fallback, display, mode != "live", status)
