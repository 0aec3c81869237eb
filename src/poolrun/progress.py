"""Progress display: a tqdm bar on a terminal, a periodic one-line log elsewhere.

tqdm is the standard bar (rate, ETA, terminal width handling); when stderr is not a terminal
(CI logs, pipes) a bar would fill the log with carriage returns, so a line every few seconds
is written instead.
"""

from __future__ import annotations

import sys
import time

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from typing import TextIO

LOG_EVERY_SECONDS = 5.0


def _bar_class() -> type:
    """tqdm without its monitor thread: a thread left alive in the caller would make the
    next call's workers start from the forkserver, not from a fork of the caller."""
    from tqdm import tqdm  # imported only when a bar is shown: it is slow to import

    return type("PoolrunBar", (tqdm,), {"monitor_interval": 0})


class Progress:
    def __init__(self, total: int | None, enabled: bool, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.total = total
        self.done = 0
        self.failed = 0
        self.started = time.perf_counter()
        self.last_line = self.started
        self.bar = None
        if enabled and self.stream.isatty():
            self.bar = _bar_class()(
                total=total, unit="item", file=self.stream, dynamic_ncols=True, smoothing=0.1
            )

    def update(
        self, n: int, failed: int = 0, batch_size: int | None = None, rss: int | None = None
    ) -> None:
        if not self.enabled:
            return
        self.done += n
        self.failed += failed
        if self.bar is not None:
            extra = {"failed": self.failed}
            if batch_size:
                extra["batch"] = batch_size
            if rss:
                extra["rss"] = f"{rss / 1e6:.0f}MB"
            self.bar.set_postfix(extra, refresh=False)
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last_line >= LOG_EVERY_SECONDS:
            self.last_line = now
            self.stream.write(self._line(now) + "\n")
            self.stream.flush()

    def _line(self, now: float) -> str:
        rate = self.done / max(now - self.started, 1e-9)
        of = f"/{self.total}" if self.total is not None else ""
        return f"poolrun: {self.done}{of} items, {self.failed} failed, {rate:,.0f} items/s"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
