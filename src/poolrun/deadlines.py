"""What a supervisor enforces by the clock, and how long it may sleep before it must.

Between events the supervisor polices its workers: one still starting (its initializer, or
loading a call's function) past ``start_timeout``, an item past its ``timeout``, a worker
past ``max_rss`` (sampled every :data:`RSS_SAMPLE_SECONDS`) is killed, and the kill is
remembered so that the death it causes is reported with its true cause. The earliest of
those deadlines, a retry's backoff and the next rate-limit token, is how long the
supervisor's wait may last.
"""

from __future__ import annotations

from collections import deque

from .backends.base import Backend, SetupFailed
from .batches import Batch
from .calls import Call

RSS_SAMPLE_SECONDS = 0.05


class Deadlines:
    """The clock's side of a supervisor; shares (does not copy) the supervisor's workers'
    queues, batches and open calls, which the supervisor changes in place."""

    def __init__(
        self,
        backend: Backend,
        inflight: dict[int, deque[int]],
        batches: dict[int, Batch],
        calls: list[Call],
    ) -> None:
        self.backend = backend
        self.inflight = inflight
        self.batches = batches
        self.calls = calls
        # workers killed on purpose -> the (batch, position) they were running, if known
        self.kill_targets: dict[int, tuple[int, int] | None] = {}
        self.next_rss_sample = 0.0

    def _call_of(self, w: int, batch_id: int | None = None) -> Call | None:
        ids = self.inflight.get(w)
        key = batch_id if batch_id is not None else (ids[0] if ids else None)
        batch = self.batches.get(key) if key is not None else None
        return batch.call if batch else None

    def police(self, now: float) -> None:
        """Enforce start-up deadlines, per-item timeouts and memory limits."""
        sample = now >= self.next_rss_sample
        for w, ids in self.inflight.items():
            if w in self.kill_targets:
                continue
            starting = self.backend.starting(w)
            if starting is not None:
                self._police_start(w, starting, now)
                continue
            if not ids:
                continue
            running = self.backend.running(w)
            call = self._call_of(w, running[0] if running else None)
            if call is None:
                continue
            timeout, max_rss = call.opts.timeout, call.opts.max_rss
            if timeout and running and now - running[2] > timeout:
                self.kill_targets[w] = running[:2]
                self.backend.kill(w, "timeout")
            elif sample and max_rss:
                rss = self.backend.rss(w)
                if rss is not None:
                    call.stats.rss_seen(w, rss)
                    if rss > max_rss:
                        self.kill_targets[w] = running[:2] if running else None
                        self.backend.kill(w, "memory-limit")
        if sample:
            self.next_rss_sample = now + RSS_SAMPLE_SECONDS

    def _police_start(self, w: int, starting: tuple[str, int, float], now: float) -> None:
        """A worker still starting (initializer) or loading a call's function past its
        ``start_timeout`` is killed, and what it was doing fails with ``SetupFailed``."""
        phase, _, since = starting
        calls, limit = self._start_limit(starting)
        if limit is None or now - since <= limit:
            return
        self.kill_targets[w] = None
        self.backend.kill(w, "start-timeout")
        what = "running its initializer" if phase == "initializer" else "loading the function"
        error = SetupFailed(
            f"a worker was still {what} after start_timeout={limit:g}s and was killed "
            "(a hanging initializer or import?)"
        )
        if phase == "initializer":
            raise error
        for c in calls:
            c.fail(error)

    def _start_limit(self, starting: tuple[str, int, float]) -> tuple[list[Call], float | None]:
        """The open calls waiting on a starting worker (all of them for its initializer,
        the function's calls while it loads one), and the shortest ``start_timeout``."""
        phase, fn_id, _ = starting
        calls = [c for c in self.calls if not c.over]
        if phase == "loading":
            calls = [c for c in calls if c.fn_id == fn_id]
        return calls, min((c.opts.start_timeout for c in calls), default=None)

    def wait_seconds(self, now: float) -> float | None:
        """How long the supervisor may sleep: until the earliest deadline (``None``: none)."""
        deadlines = []
        for w, ids in self.inflight.items():
            starting = self.backend.starting(w)
            if starting is not None:
                limit = self._start_limit(starting)[1]
                if limit is not None:
                    deadlines.append(starting[2] + limit)
            call = self._call_of(w) if ids else None
            if call is None:
                continue
            if call.opts.timeout:  # an item not started yet cannot be late before now+timeout
                running = None if starting else self.backend.running(w)
                deadlines.append((running[2] if running else now) + call.opts.timeout)
            if call.opts.max_rss:
                deadlines.append(self.next_rss_sample)
        for call in self.calls:
            if call.retries and not call.over:
                deadlines.append(call.retries[0][0])
            if call.tokens_at is not None and not call.over:
                deadlines.append(call.tokens_at)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)
