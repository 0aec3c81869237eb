"""The supervisor: keeps a backend's workers fed with the batches of every open call, routes
results back to the call they belong to, and enforces deadlines and memory limits (the
clock's side lives in :mod:`poolrun.deadlines`).

Data flow (everything here runs in the caller's process)::

    call 1: input iterable ──(lazy, a batch at a time)──┐
    call 2: requeued pieces (a worker died) ────────────┤  round robin over open calls
    call N: retries whose backoff has passed ───────────┘          │
                                                                   ▼
                                   dispatch: ≤ `inflight` batches per worker ──► backend.submit
                                                                                     │
    BatchSizer (per call) ◄── BatchMemory (private bytes) ◄──┐      worker processes run batches
                                                             │                       │
                          backend.wait() ◄── BatchDone / WorkerDied / FunctionFailed ┘
                                │
                 batch id (unique in the pool) ──► its Call ──► results land in its Segments
                                │
              ordered: segments released in input order (bounded reorder window)
              unordered: released as they complete
                                ▼
                 call.ready ──► the call's consumer (map → Run, imap → ItemResults)

Several threads may run calls on one pool at once. There is no supervisor thread: whichever
consumer needs a result and finds nobody driving becomes the *driver* and runs the loop for
everyone (one step: dispatch, wait for events, handle them), then hands over as soon as its
own call has something to yield; the others wait on a condition variable. All state is
guarded by one lock, released only while the driver blocks in ``backend.wait``; a new call, a
consumer that made room, or a cancelled call wake that wait through ``backend.wake()``.

A worker that dies is replaced at once. The batch it was running is split around the item
it was running (known from the worker's shared slot; a batch of tiny items run in bulk does
not say which, so it first runs again item by item), as :mod:`poolrun.faults` decides: the
items before and after run again as batches, the item itself runs again alone, and fails
only once it has killed enough workers. A timeout kills the worker too, but blames the item
at once (the supervisor saw it overrun): it is retried like an exception, then fails.

At the tail of an input of known length (few enough items left that the workers' queues
could hold them all) batches go to idle workers only, so none sits queued behind a busy
worker's batch while the other workers run out of work; tiny items are exempt (their tail
batches are a few milliseconds, and a round trip per batch is what they cannot afford).
A call whose input is a list, a tuple or a range, and whose workers were forked holding it,
sends positions, not items.

The loop never sleeps: it blocks in ``backend.wait`` until a result or a death arrives, or
until the next deadline (an item's timeout, a worker's start-up, the next memory sample, a
retry's backoff, the next rate-limit token: see :mod:`poolrun.deadlines`).
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from . import log
from .backends.base import (
    Backend,
    BatchDone,
    BatchMemory,
    BatchRejected,
    Event,
    FunctionFailed,
    FunctionSpec,
    SetupFailed,
    WorkerDied,
)
from .batches import Batch
from .calls import Call
from .deadlines import Deadlines
from .faults import EXTERNAL_CAUSES, FaultPolicy
from .feed import Feed
from .options import Options
from .results import Segment
from .stats import Stats
from .trace import Trace

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from typing import Any


class Supervisor:
    """Runs calls on one backend's workers; safe to share between threads."""

    def __init__(self, backend: Backend, inflight: int = 2) -> None:
        self.backend = backend
        self.inflight_limit = inflight
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.driving = False
        self.calls: list[Call] = []
        self.next_call = 0  # round-robin position in ``calls``
        self.inflight: dict[int, deque[int]] = {w: deque() for w in backend.worker_ids()}
        self.size = len(self.inflight)
        self.batches: dict[int, Batch] = {}
        self.retiring: set[int] = set()
        # batch -> (its call, items, busy seconds, longest item) until its memory report
        self.awaiting_memory: dict[int, tuple[Call, int, float, float]] = {}
        self.fatal: BaseException | None = None  # every call fails with it (a broken pool)
        self.any_done = False  # has any batch finished since the workers started?
        self.startup_deaths = 0.0  # weighted: see _check_startup
        self._ids = itertools.count(1)
        self.deadlines = Deadlines(backend, self.inflight, self.batches, self.calls)

    # -- calls -------------------------------------------------------------------------

    def open(
        self,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        opts: Options,
        stats: Stats,
        trace: Trace,
        total: int | None,
    ) -> Call:
        spec = FunctionSpec(fn, opts.retry_on, opts.timeout, opts.max_rss)
        if isinstance(items, Feed):
            items.wake = self.backend.wake  # a put into an empty feed wakes the loop
        with self.lock:
            if self.fatal is not None:
                raise self.fatal
            call = Call(self.backend.register(spec), items, opts, stats, trace, total)
            self.calls.append(call)
        self.backend.wake()
        return call

    def segments(self, call: Call) -> Iterator[Segment]:
        """The call's segments as they are released; its error, if it fails, is raised."""
        try:
            while True:
                segment = self._next_segment(call)
                if segment is None:
                    return
                yield segment
        finally:
            self._close(call)

    def cancel(self, call: Call) -> None:
        """Drop an unfinished call: its batches in flight finish and are discarded.

        Only a flag and a wake-up, so it is safe from any thread, a garbage collector's
        finalizer included; the driver does the rest at its next step."""
        call.cancelled = True
        self.backend.wake()

    def fail_all(self, error: BaseException) -> None:
        """Every open call, and every later one, fails with ``error`` (the pool is going)."""
        with self.lock:
            if self.fatal is None:
                self.fatal = error
            self.changed.notify_all()
        self.backend.wake()

    def _close(self, call: Call) -> None:
        if not call.over:
            self.cancel(call)
        with self.lock:
            if call in self.calls:
                self.calls.remove(call)
            if not any(c.fn_id == call.fn_id for c in self.calls):
                self.backend.unregister(call.fn_id)

    def _next_segment(self, call: Call) -> Segment | None:
        with self.changed:
            while True:
                if call.ready:
                    return self._take(call)
                if call.error is not None:
                    raise call.error
                if self.fatal is not None:
                    raise self.fatal
                if call.done:
                    return None
                if call.cancelled:
                    raise RuntimeError("this call was cancelled")
                if not self.driving:
                    break
                self.changed.wait()
            self.driving = True
            try:
                while not (call.ready or call.over or self.fatal):
                    self._step()
            finally:
                self.driving = False
                self.changed.notify_all()
        return self._next_segment(call)

    def _take(self, call: Call) -> Segment:
        segment = call.ready.popleft()
        if call.throttled:  # room again for its next fresh batch
            call.throttled = False
            self.backend.wake()
        return segment

    # -- the loop (runs under the lock, by the driver) ---------------------------------

    def _step(self) -> None:
        """Dispatch, wait (with the lock released) for events or a deadline, handle them."""
        try:
            self._forget_cancelled()
            self._dispatch()
            # items can fail as their batch is made (they cannot be pickled): release those
            # segments now, and do not block below while a consumer could take them
            released = [c.release() for c in self.calls]
            if not any(self.inflight.values()) and not self._waiting_calls():
                if not any(released) and any(not c.over for c in self.calls):
                    raise RuntimeError("poolrun supervisor stalled with no work in flight (a bug)")
                self.changed.notify_all()
                return  # every call ended as its batches were made (empty input, input raised)
            timeout = 0.0 if any(released) else self.deadlines.wait_seconds(time.perf_counter())
            self.lock.release()
            try:
                events = self.backend.wait(timeout)
            finally:
                self.lock.acquire()
            for event in events:
                self._handle(event)
            # a worker that just finished gets its next batch now, before the results are
            # released to the consumer (which may spend milliseconds placing 50k values)
            self._dispatch()
            now = time.perf_counter()
            self.deadlines.police(now)
            for c in self.calls:
                c.release()
                c.check_budget()
        except SetupFailed as exc:
            self.fatal = exc
        self.changed.notify_all()

    def _waiting_calls(self) -> bool:
        """Is any open call waiting for something other than a result (a retry's backoff,
        rate-limit tokens, its consumer to make room, or items put into its feed)?"""
        return any(
            c.retries or c.throttled or c.requeued or c.tokens_at is not None or c.feed is not None
            for c in self.calls
            if not c.over
        )

    def _forget_cancelled(self) -> None:
        for c in self.calls:
            if c.cancelled:
                c.requeued.clear()
                c.retries.clear()

    # -- feeding workers ---------------------------------------------------------------

    def _dispatch(self) -> None:
        self._recycle_idle()
        now = time.perf_counter()
        for call in self.calls:  # set again below by a call that a free worker finds waiting
            call.tokens_at = None  # for rate-limit tokens
        # At the tail of the input a batch queued behind a busy worker's current one starts
        # late, while the other workers run out of work: there, only idle workers get one.
        tail = all(c.at_tail for c in self.calls if not c.over)
        limit = 1 if tail else self.inflight_limit
        while True:
            w = self._free_worker(limit)
            if w is None:
                return
            batch = self._next_batch(now, w)
            if batch is None:
                return
            self._send(w, batch)

    def _free_worker(self, limit: int) -> int | None:
        best, load = None, limit
        for w, ids in self.inflight.items():
            if len(ids) < load and w not in self.retiring:
                best, load = w, len(ids)
        return best

    def _next_batch(self, now: float, w: int) -> Batch | None:
        """The next batch of the open calls for worker ``w``, taken in turn so that calls
        share workers.

        A rate-limited call sends only to an idle worker: a batch queued behind another
        would start later than its tokens say, bunched with the next ones. So does a call
        whose items may be long (see ``Call.queues_behind_busy``)."""
        idle = not self.inflight[w]
        n = len(self.calls)
        for i in range(n):
            call = self.calls[(self.next_call + i) % n]
            if not idle and (call.bucket is not None or not call.queues_behind_busy):
                continue
            in_flight = functools.partial(self._items_in_flight, call, w)
            batch = call.next_batch(self._ids, now, in_flight)
            if batch is not None:
                self.next_call = (self.next_call + i + 1) % n
                return batch
        return None

    def _items_in_flight(self, call: Call, w: int) -> tuple[int, int]:
        """(items of ``call`` in flight on worker ``w``, on every worker)."""
        own = everywhere = 0
        for worker_id, ids in self.inflight.items():
            for batch_id in ids:
                batch = self.batches.get(batch_id)
                if batch is not None and batch.call is call:
                    everywhere += len(batch.items)
                    if worker_id == w:
                        own += len(batch.items)
        return own, everywhere

    def _send(self, w: int, batch: Batch) -> None:
        source = batch.call.source
        token = None if source is None else self.backend.inherited_items(w, source)
        encoded = batch.call.encode(batch, token)
        if encoded is None:
            return
        batch, payload = encoded
        self.batches[batch.id] = batch
        self.inflight[w].append(batch.id)
        batch.bulk = self.backend.runs_in_bulk and batch.call.in_bulk(batch)
        self.backend.submit(w, batch.id, batch.call.fn_id, payload, batch.bulk)

    def _recycle_idle(self) -> None:
        for w in [w for w in self.retiring if not self.inflight.get(w)]:
            self.retiring.discard(w)
            self.inflight.pop(w, None)
            self.inflight[self.backend.retire(w)] = deque()
            for c in self.calls:
                c.stats.count("recycled")
                c.stats.count("restarts")
                c.trace.mark(w, "recycled (memory)", time.perf_counter())

    # -- events ------------------------------------------------------------------------

    def _handle(self, event: Event) -> None:
        if isinstance(event, BatchDone):
            self.any_done = True
            batch = self._take_batch(event.worker, event.batch)
            if batch is not None:
                label = self.backend.describe_worker(event.worker)
                batch.call.on_done(event, batch, label)
                durations = event.durations
                timed = durations.__class__ is array and len(durations) > 0  # item by item
                slowest = max(durations) if timed else 0.0
                busy = event.ended - event.started
                self.awaiting_memory[event.batch] = (batch.call, len(durations), busy, slowest)
        elif isinstance(event, BatchMemory):
            self._on_memory(event)
        elif isinstance(event, WorkerDied):
            self._on_death(event)
        elif isinstance(event, BatchRejected):
            batch = self._take_batch(event.worker, event.batch)
            if batch is not None:
                batch.call.on_rejected(event, batch)
        elif isinstance(event, FunctionFailed):
            for c in self.calls:
                if c.fn_id == event.fn_id:
                    c.fail(SetupFailed(f"the function could not be loaded in a worker: {event}"))

    def _take_batch(self, w: int, batch_id: int) -> Batch | None:
        """The batch, unless its call has ended (its result is then dropped)."""
        ids = self.inflight.get(w)
        if ids and batch_id in ids:
            ids.remove(batch_id)
        batch = self.batches.pop(batch_id, None)
        if batch is None or batch.call.over:
            return None
        return batch

    def _on_memory(self, ev: BatchMemory) -> None:
        call, n, busy, slowest = self.awaiting_memory.pop(ev.batch, (None, 0, 0.0, 0.0))
        if call is None or call.over:
            return
        call.stats.rss_seen(ev.worker, max(ev.rss_peak, ev.max_rss))
        call.trace.memory(ev.worker, ev.batch, ev.rss_peak)
        call.sizer.observe(n, busy, ev.rss_start, ev.rss_peak, slowest)
        if call.sizer.must_recycle(ev.rss_start, ev.rss_peak) and ev.worker in self.inflight:
            self.retiring.add(ev.worker)

    def _on_death(self, ev: WorkerDied) -> None:
        w = ev.worker
        ids = list(self.inflight.pop(w, ()))
        self.retiring.discard(w)
        killed_running = self.deadlines.kill_targets.pop(w, None)
        cause = FaultPolicy.confirmed_cause(ev.cause, killed_running, ev.running)
        counters = ["worker_deaths", "restarts"]
        counters += {"timeout": ["timeouts"], "memory-limit": ["memory_kills"]}.get(cause, [])
        batches = [b for b in (self.batches.pop(i, None) for i in ids) if b is not None]
        for call in {b.call for b in batches} or set(self.calls):
            for name in counters:
                call.stats.count(name)
            call.trace.mark(w, cause, time.perf_counter(), running=ev.running, detail=ev.detail)
        log.debug("worker {} died ({}) with {} batches in flight", w, cause, len(ids))
        self._check_startup(cause, ev)
        self.inflight[self.backend.replace(w)] = deque()
        for batch in reversed(batches):  # requeued to the front, in their original order
            if batch.call.over:
                continue
            if ev.running and ev.running[0] == batch.id:
                batch.call.after_death(batch, ev.running[1], cause, w, self._ids)
            elif batch.id == ids[0]:  # the one it had started, or was about to
                batch.call.after_death(batch, None, cause, w, self._ids)
            else:  # never started: run again as it was
                batch.call.requeued.appendleft(batch)

    def _check_startup(self, cause: str, ev: WorkerDied) -> None:
        """Workers that die before any batch has finished, again and again, will never
        work: fail instead of respawning forever (an initializer that exits, a broken
        environment). Once a batch has finished, deaths are the items' doing."""
        if self.any_done or ev.running is not None or cause in ("timeout", "memory-limit"):
            return
        # a SIGKILL or SIGTERM may come from outside (a chaos test, an operator): it counts
        # a quarter, so only a steady stream of them (an OOM killer at start-up) ends the run
        self.startup_deaths += 0.25 if cause in EXTERNAL_CAUSES else 1
        if self.startup_deaths > 2 * self.size:
            raise SetupFailed(
                f"{self.startup_deaths:g} workers in a row died before running any item "
                f"({cause}); the workers' own error output above says why"
            )
