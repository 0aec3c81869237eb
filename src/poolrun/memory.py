"""How much memory a worker holds of its own: USS, read cheaply enough to do per batch.

RSS counts every page a process has mapped, including the pages a forked worker shares with
the process it was forked from: a worker forked from a caller that holds a 48 MB table
"has" 48 MB more RSS without using a byte more of the machine. ``max_rss``, recycling and the
report's peak must count what the worker alone would give back if it exited: its private
pages (USS: ``Private_Clean + Private_Dirty`` of ``/proc/PID/smaps_rollup``).

Reading USS walks the page tables (~0.3 ms for a 100 MB process), against ~15 µs for RSS.
So a gauge reads USS at most every :data:`RECALIBRATE_SECONDS`, and no more often than
keeps those readings under :data:`CALIBRATION_SHARE` of the process's time (in a worker
forked from a 200 MB caller a reading takes ~1.2 ms: every 0.1 s, that was 1.2 % of a
worker's time on long items). In between, it adds the change in RSS since the last reading:
new allocations show at once, and pages copied on write (which turn shared into private
without changing RSS) show at the next reading.

On Linux the two files are read directly: this runs in every worker on its first batch, and
importing psutil there cost each fresh worker ~15 ms before its first item. Elsewhere psutil
(``memory_info``/``memory_full_info``) gives the same two numbers.
"""

from __future__ import annotations

import contextlib
import os
import time

RECALIBRATE_SECONDS = 0.1
CALIBRATION_SHARE = 0.002
_PAGE = os.sysconf("SC_PAGE_SIZE")
_GONE = (OSError, ValueError, IndexError)  # what reading /proc raises once the process exited


class _StatmRss:
    """RSS from ``/proc/PID/statm``, kept open and read with one ``pread``, rather than
    opened, read and closed twice a batch: a worker's average reading (USS calibrations
    included) went from 65-100 µs to 42-45 µs. The path names the pid, not ``self``, so a
    descriptor inherited across a fork still reads its own process."""

    def __init__(self) -> None:
        self.fd = -1

    def __call__(self, pid: int) -> int:
        if self.fd < 0:  # opened at the first reading, where a gone process is expected
            self.fd = os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)
        return int(os.pread(self.fd, 128, 0).split()[1]) * _PAGE

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _proc_uss_rss(pid: int) -> tuple[int, int]:
    uss = rss = 0
    with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
        for line in rollup:
            if line.startswith((b"Private_Clean:", b"Private_Dirty:")):
                uss += int(line.split()[1]) * 1024
            elif line.startswith(b"Rss:"):
                rss = int(line.split()[1]) * 1024
    return uss, rss


def _psutil_readers(pid: int):  # type: ignore[no-untyped-def]
    import psutil

    process = psutil.Process(pid)

    def rss(_: int) -> int:
        return process.memory_info().rss

    def uss_rss(_: int) -> tuple[int, int]:
        full = process.memory_full_info()
        return full.uss, full.rss

    return rss, uss_rss, (*_GONE, psutil.Error)


class PrivateMemory:
    """A process's private memory in bytes (this process's, or ``pid``'s), and the highest
    value seen (``peak``).

    ``just_forked``: this process was forked a moment ago from one it shares its memory
    with, so it holds next to nothing of its own yet, and the first full reading waits
    :data:`RECALIBRATE_SECONDS` (until then private memory is what RSS grew by since
    now). Read at once, it walked the page tables of everything inherited before the
    worker's first item (1 ms under a 60 MB caller, 5 ms under a 200 MB one) to learn
    about nothing. Pages the process copies on write are counted from that first full
    reading, or at once after :meth:`stop_deferring`.
    """

    def __init__(self, pid: int | None = None, just_forked: bool = False) -> None:
        self.pid = pid or os.getpid()
        if os.path.exists("/proc/self/smaps_rollup"):
            self._rss, self._uss_rss, self._gone = _StatmRss(), _proc_uss_rss, _GONE
        else:
            self._rss, self._uss_rss, self._gone = _psutil_readers(self.pid)
        self.peak = 0
        self._uss = 0
        self._rss_then = 0
        self._due = 0.0
        self._deferred = False  # is the first full reading still put off (``just_forked``)?
        if just_forked:
            with contextlib.suppress(*self._gone):
                self._rss_then = self._rss(self.pid)
                self._due = time.monotonic() + RECALIBRATE_SECONDS
                self._deferred = True

    def stop_deferring(self) -> None:
        """If the first full reading is still put off, make the next reading that one (a run
        with ``max_rss`` wants it exact); once there has been one, the spacing stands."""
        if self._deferred:
            self._due = 0.0

    def close(self) -> None:
        """Let go of the open statm file (a gauge lives as long as its worker, or its run)."""
        close = getattr(self._rss, "close", None)
        if close is not None:
            close()

    def read(self) -> int | None:
        """Private bytes now; ``None`` once the process is gone."""
        try:
            return self._read()
        except self._gone:
            return None

    def _read(self) -> int:
        now = time.monotonic()
        if now >= self._due:
            self._uss, self._rss_then = self._uss_rss(self.pid)
            self._deferred = False
            cost = time.monotonic() - now
            self._due = now + max(RECALIBRATE_SECONDS, cost / CALIBRATION_SHARE)
            value = self._uss
        else:
            value = max(0, self._uss + self._rss(self.pid) - self._rss_then)
        self.peak = max(self.peak, value)
        return value
