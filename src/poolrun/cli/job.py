"""The job behind ``poolrun run`` and ``poolrun retry``: results into files, never apart
from the resume watermark.

:class:`Guard` holds SIGINT/SIGTERM back while a result is written; :class:`Job` drains the
engine's segments through a feed (:mod:`.feeds`: lines or byte ranges), which writes them to
the output and errors files and advances the watermark, and saves checkpoints on a clock.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from ..jsonl import LineCounter, LineWriter
from ..monitor import Monitor
from ..results import RunAborted, Segment
from .feeds import Feed
from .resume import EXIT_INTERRUPTED, Resumable
from .streaming import Streaming

TICK_SECONDS = 0.1
BUDGET_MIN_LINES = 20  # a percentage --max-failures judges no fewer lines than this


class Interrupted(KeyboardInterrupt):
    """The first SIGINT/SIGTERM. A KeyboardInterrupt, so the engine kills its workers at
    once and no ``except Exception`` on the way can swallow it."""


# -- signals ------------------------------------------------------------------------------


class Guard:
    """SIGINT/SIGTERM handling that never leaves the outputs and the watermark apart.

    The first signal raises :class:`Interrupted` at once while the supervisor waits for
    workers, but is held back while a result is being written (between :meth:`hold` and
    :meth:`release`), so a line and the watermark always move together. A second signal
    exits at once: nothing needs cleaning, workers exit when their supervisor is gone and
    the last checkpoint is consistent by construction.
    """

    def __init__(self) -> None:
        self.holding = False
        self.pending = False
        self.signals = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Guard:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *_: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals += 1
        if self.signals > 1:
            os.write(2, b"poolrun: interrupted again; exiting now\n")
            os._exit(EXIT_INTERRUPTED)
        if self.holding:
            self.pending = True
        else:
            raise Interrupted(signal.Signals(signum).name)

    def hold(self) -> None:
        self.holding = True

    def release(self) -> None:
        self.holding = False
        if self.pending:
            self.pending = False
            raise Interrupted("signal")


# -- the job ------------------------------------------------------------------------------


@dataclass
class Outcome:
    status: str  # "done", "interrupted", "aborted" (--max-failures) or "error"
    message: str = ""


class BudgetExceeded(Exception):
    """``--max-failures`` was passed on a feed that keeps its own count (byte ranges)."""


@dataclass
class Budget:
    """``--max-failures`` judged on lines, for feeds whose engine items are not lines."""

    limit: int | float
    failed_before: int

    def check(self, failed: int, done: int) -> None:
        failed_now = failed - self.failed_before
        if isinstance(self.limit, float):
            exceeded = done >= BUDGET_MIN_LINES and failed_now > self.limit * done
        else:
            exceeded = failed > self.limit
        if exceeded:
            raise BudgetExceeded(
                f"{failed_now} lines failed, more than max_failures={self.limit}; run aborted"
            )


class Job:
    """Drains the engine's segments through ``feed`` into the output and errors files.

    Results arrive in input order (unless unordered); the feed writes each one to the output
    or the errors file and advances the watermark, all while signals are held. On every way
    out (end, interrupt, ``--max-failures``, an error) the outputs are synced and a last
    checkpoint is saved, so whatever happened the run can be resumed.
    """

    def __init__(
        self,
        feed: Feed,
        options: dict[str, Any],
        out: LineWriter,
        errors: LineWriter,
        guard: Guard,
        progress: Monitor,
        resumable: Resumable | None = None,
        counter: LineCounter | None = None,
        failed: int = 0,
        budget: Budget | None = None,
        trace_path: str | None = None,
    ) -> None:
        self.feed = feed
        self.stream = Streaming(feed.task, feed.items(), trace_path, **options)
        self.stream.on_started = self._start_threads
        self.out = out
        self.errors = errors
        self.guard = guard
        self.progress = progress
        self.resumable = resumable
        self.counter = counter
        self.budget = budget
        self.failed = failed
        self.done = 0
        self.shown = (0, failed)
        self.next_tick = 0.0

    def run(self) -> Outcome:
        segments = self.stream.segments()
        try:
            self._drain(segments)
        except Interrupted:
            return self._stop(segments, Outcome("interrupted"))
        except (RunAborted, BudgetExceeded) as exc:
            return self._stop(segments, Outcome("aborted", str(exc)))
        except BaseException:
            self._stop(segments, Outcome("error"))
            raise
        return self._stop(segments, Outcome("done"))

    def _drain(self, segments: Generator[Segment, None, None]) -> None:
        guard, clock = self.guard, time.monotonic
        watermark = self.resumable.watermark if self.resumable else None
        for segment in segments:
            guard.hold()
            lines, failed = self.feed.write(segment, self.out, self.errors, watermark)
            self.done += lines
            self.failed += failed
            now = clock()
            if now >= self.next_tick:
                self._tick(now)
            guard.release()
            if self.budget is not None and failed:
                self.budget.check(self.failed, self.done)

    def _tick(self, now: float) -> None:
        self.next_tick = now + TICK_SECONDS
        self._show_progress()
        if self.resumable is not None and self.resumable.checkpoint.due(now):
            self._save()

    def _start_threads(self) -> None:
        """The line count and the monitor, once the workers have started (see Streaming)."""
        if self.counter is not None:
            self.counter.start()
        self.progress.follow(lambda: self.stream.call, lambda: (self.done, self.failed))

    def _show_progress(self) -> None:
        total = self.feed.estimated_lines()
        if self.counter is not None and self.counter.total is not None:
            total = self.counter.total
            self.counter = None
        if total is not None and total != self.progress.total:
            self.progress.total = total
            if self.progress.bar is not None:
                self.progress.bar.total = total
        done, failed = self.shown
        self.shown = (self.done, self.failed)
        size = self.feed.batch_lines or self.stream.batch_size
        self.progress.update(self.done - done, self.failed - failed, size, self.stream.worker_rss)

    def _save(self, complete: bool = False) -> None:
        assert self.resumable is not None
        self.out.sync()
        self.errors.sync()
        sizes = (self.out.size, self.errors.size)
        mark = self.resumable.watermark.snapshot(self.resumable.base, sizes, self.failed, complete)
        self.resumable.checkpoint.save(mark)

    def _stop(self, segments: Generator[Segment, None, None], outcome: Outcome) -> Outcome:
        """Close the engine (workers are killed if it did not finish), then save for good."""
        self.guard.hold()
        segments.close()
        self.feed.close()
        self._show_progress()
        self.progress.close()
        if self.stream.call is not None:
            self.stream.call.stats.live_view_cpu_s = self.progress.cpu_s
        if self.resumable is not None:
            self._save(complete=outcome.status == "done")
        else:
            self.out.sync()
            self.errors.sync()
        self.out.close()
        self.errors.close()
        return outcome

    @property
    def complete_through(self) -> int:
        """The last input line the outputs are complete up to."""
        return self.resumable.watermark.line if self.resumable else 0
