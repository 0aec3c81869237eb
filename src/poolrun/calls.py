"""One ``map``/``imap`` call as the supervisor sees it: its input, its batches, its results.

A :class:`Call` owns everything that is the call's own: the input iterator (read lazily, a
batch at a time), the batch sizer, the segments its results land in, the retries waiting
for their backoff, the pieces of batches to send again after a worker died, and the release
of finished segments to its consumer, in input order or as they complete. The
:class:`~poolrun.supervisor.Supervisor` owns what calls share, the workers, and moves batches
between the two. Keeping the call's state here is what lets several calls, from several
threads, share one pool's workers without ever mixing their results: a batch carries its
call, and its id is unique in the pool.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence

from . import worker
from .batches import Batch, SourceSlice, group, positions
from .batching import BatchSizer
from .faults import ALONE, FAIL, FaultPolicy
from .feed import Feed
from .items import describe_exception
from .options import Options
from .ratelimit import TokenBucket
from .results import ItemError, Segment
from .stats import Stats
from .trace import Trace

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .backends.base import BatchDone, BatchRejected


SLICEABLE = (list, tuple, range)  # inputs a worker that inherited them slices for itself
# a feed's items queue behind a busy worker's batch only when measured shorter than this: the
# round trip it hides is then over ~1.5 % of an item
QUEUE_BEHIND_SECONDS = 0.02


class FailureBudgetExceeded(Exception):
    """Internal: ``max_failures`` was passed; the API turns it into ``RunAborted``."""


class Call:
    """The state of one call; every method runs under the supervisor's lock."""

    def __init__(
        self,
        fn_id: int,
        items: Iterable[Any],
        options: Options,
        stats: Stats,
        trace: Trace,
        total: int | None,
    ) -> None:
        self.fn_id = fn_id
        self.opts = options
        self.stats = stats
        self.trace = trace
        self.total = total
        fixed = options.batch_size if isinstance(options.batch_size, int) else None
        self.sizer = BatchSizer(
            workers=options.workers,
            fixed=fixed,
            target_seconds=options.target_batch_seconds,
            max_size=options.max_batch_size,
            max_rss=options.max_rss,
        )
        self.policy = FaultPolicy(options.retries)
        self._items = iter(items)
        # a list, tuple or range read from its start: fresh batches are slices of it, which
        # a worker that inherited it can take for itself (see ``encode``)
        self.source = items if type(items) in SLICEABLE else None
        self.feed = items if isinstance(items, Feed) else None  # open-ended input: see feed.py
        self.requeued: deque[Batch] = deque()
        self.retries: list[tuple[float, int, Segment, int, Any]] = []
        self.pending: deque[Segment] = deque()  # ordered mode: unreleased, in input order
        self.completed: deque[Segment] = deque()  # unordered mode: done, not yet released
        self.ready: deque[Segment] = deque()  # released to the consumer, not yet taken
        self.unreleased = 0  # segments made and not yet released
        # the reorder window, in segments: roomy enough that a slow batch at its head does
        # not stop fresh batches while the other workers have finished theirs
        self.max_open = max(16, 8 * options.workers * options.inflight)
        self.consumed = 0  # items read from the input
        self.exhausted = False
        self.error: BaseException | None = None  # raised to the consumer, ends the call
        self.cancelled = False  # the consumer went away; results are dropped
        self.throttled = False  # waits for its consumer to take segments
        self._seq = itertools.count()
        # rate=: items start only with a token; ``tokens_at`` is when the wait for one ends
        self.bucket = TokenBucket(options.rate, time.perf_counter()) if options.rate else None
        self.tokens_at: float | None = None
        # a durable store (checkpoint=, a Queue) commits each segment the moment it is done
        self.on_finished: Callable[[Segment], None] | None = None

    @property
    def queues_behind_busy(self) -> bool:
        """May a batch wait in a busy worker's queue, behind the one it runs? That hides the
        round trip between batches (~0.3 ms), which matters when batches are short.

        A feed's items (``Executor`` submissions, joblib batches) are cut into batches as
        they come, one or a few at a time, and each may last seconds: queued behind a long
        one, an item would wait while another worker idles. They queue only once measured
        shorter than ``QUEUE_BEHIND_SECONDS``, where the round trip is worth hiding."""
        if self.feed is None:
            return True
        per_item = self.sizer.per_item_seconds
        return per_item is not None and per_item < QUEUE_BEHIND_SECONDS

    def in_bulk(self, batch: Batch) -> bool:
        """Should this batch run in bulk (``items.run_batch``)? Only tiny items gain from
        it, and only a call with no ``timeout`` can go without per-item start times."""
        return self.sizer.items_are_tiny and self.opts.timeout is None and not batch.exact

    @property
    def at_tail(self) -> bool:
        """Are the items left few enough that the workers' queues could hold them all?

        Never for tiny items: their tail batches keep milliseconds of work (see
        ``batching``), so one queued behind a busy worker waits little, while a worker
        left idle until the supervisor gets round to it waits for every round trip."""
        if self.total is None or self.feed is not None or self.sizer.items_are_tiny:
            return False
        left = self.total - self.consumed
        return left <= self.opts.workers * self.opts.inflight * self.sizer.size

    @property
    def done(self) -> bool:
        """Everything was read, and every segment released."""
        return self.exhausted and self.unreleased == 0

    @property
    def over(self) -> bool:
        """Nothing more will come of it: done, failed or cancelled."""
        return self.done or self.error is not None or self.cancelled

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error

    # -- batches out -------------------------------------------------------------------

    def next_batch(
        self,
        new_id: Iterator[int],
        now: float,
        in_flight: Callable[[], tuple[int, int]] | None = None,
    ) -> Batch | None:
        """The next batch to send; ``in_flight`` is what the sizer's balance rule asks (see
        ``BatchSizer.next_size``) for the worker it goes to."""
        if self.over:
            return None
        if self.bucket is None:
            return self._take_batch(new_id, now, None, in_flight)
        self.tokens_at = None
        allowed = self.bucket.available(now)
        batch = self._take_batch(new_id, now, allowed, in_flight) if allowed else None
        if batch is not None:
            self.bucket.take(len(batch.items), now)
            return batch
        need = len(self.requeued[0].items) if self.requeued else 1
        due = self.retries and self.retries[0][0] <= now
        if allowed < need and (self.requeued or due or not (self.exhausted or self.throttled)):
            self.tokens_at = self.bucket.ready_at(need, now)
        return None

    def _take_batch(
        self,
        new_id: Iterator[int],
        now: float,
        allowed: int | None,
        in_flight: Callable[[], tuple[int, int]] | None = None,
    ) -> Batch | None:
        """The next batch: pieces to send again, due retries, then fresh items; ``allowed``
        caps its size (the rate limit's tokens; ``None``: no cap)."""
        if self.requeued:
            if allowed is not None and len(self.requeued[0].items) > allowed:
                return None  # waits for enough tokens (it was sized within a bucketful)
            return self.requeued.popleft()
        if self.retries and self.retries[0][0] <= now:
            return self._retry_batch(new_id, now, allowed)
        if self.exhausted:
            return None
        if self.unreleased + len(self.ready) >= self.max_open:
            self.throttled = True
            return None
        try:
            return self._fresh_batch(new_id, allowed, in_flight)
        except Exception as exc:  # the caller's iterable raised: the call ends with it
            self.fail(exc)
            return None

    def _fresh_batch(
        self,
        new_id: Iterator[int],
        allowed: int | None = None,
        in_flight: Callable[[], tuple[int, int]] | None = None,
    ) -> Batch | None:
        if self.feed is not None:  # a feed that runs dry is not exhausted, unless closed
            remaining = self.feed.pending()
            if remaining is None:
                self.exhausted = True
                return None
        else:
            remaining = None if self.total is None else max(self.total - self.consumed, 0)
        size = self.sizer.next_size(remaining, in_flight)
        if allowed is not None:
            size = min(size, allowed)
        if self.source is not None:
            stop = min(self.consumed + size, len(self.source))
            items: Sequence[Any] = SourceSlice(self.source, self.consumed, stop)
        else:
            items = list(itertools.islice(self._items, size))
        if self.feed is not None:  # closed while we read (or only cancelled items were left)
            self.exhausted = self.feed.pending() is None
        elif len(items) < size or remaining == len(items):
            self.exhausted = True
        if not items:
            return None
        segment = Segment(self.consumed, len(items))
        self.consumed += len(items)
        self.unreleased += 1
        if self.opts.ordered:
            self.pending.append(segment)
        self.stats.sizes.record(len(items))
        return Batch(next(new_id), self, [(segment, range(len(items)))], items, fresh=True)

    def _retry_batch(self, new_id: Iterator[int], now: float, allowed: int | None) -> Batch:
        limit = self.sizer.next_size() if allowed is None else min(self.sizer.next_size(), allowed)
        refs, items = [], []
        while self.retries and self.retries[0][0] <= now and len(items) < limit:
            _, _, segment, pos, item = heapq.heappop(self.retries)
            refs.append((segment, pos))
            items.append(item)
        return Batch(next(new_id), self, group(refs), items)

    def piece(self, batch: Batch, new_id: Iterator[int], lo: int, hi: int) -> Batch:
        """Items ``lo``..``hi`` of a batch whose worker died, to run again item by item (a
        crash among them must name its item)."""
        refs = list(batch.refs())[lo:hi]
        piece = Batch(next(new_id), self, group(refs), batch.items[lo:hi])
        piece.exact = True
        return piece

    def encode(self, batch: Batch, token: int | None = None) -> tuple[Batch, bytes] | None:
        """Pickle a batch's items; those that cannot be pickled fail on their own.

        With ``token`` (the worker holds :attr:`source` under it), the batch travels as the
        positions of its items in the source instead: a ``range`` for a fresh batch, a few
        numbers for a piece of one sent again or for retries."""
        if token is not None:
            return batch, worker.dumps(worker.InheritedItems(token, positions(batch)))
        if type(batch.items) is SourceSlice:
            # copied now, as it is sent: a piece run again after a fault must get the items
            # this batch carried, even if the caller has changed its list since
            batch.items = batch.items[:]
        try:
            return batch, worker.dumps(batch.items)
        except Exception:
            pass
        keep_refs, keep_items = [], []
        for (segment, pos), item in zip(batch.refs(), batch.items, strict=True):
            try:
                worker.dumps(item)
            except Exception as exc:
                kind, message, _ = describe_exception(exc, 0)
                error = ItemError(kind, f"item cannot be sent to a worker: {message}")
                self.finish_item(segment, pos, None, 0.0, None, batch.id, error)
            else:
                keep_refs.append((segment, pos))
                keep_items.append(item)
        if not keep_items:
            return None
        kept = Batch(batch.id, self, group(keep_refs), keep_items)
        return kept, worker.dumps(keep_items)

    # -- results in --------------------------------------------------------------------

    def on_done(self, ev: BatchDone, batch: Batch, label: str) -> None:
        busy = ev.ended - ev.started
        self.stats.batch_done(ev.worker, ev.durations, busy)
        failed = len(ev.errors) if ev.errors else 0
        self.stats.worker_names[ev.worker] = label
        self.trace.batch(ev.worker, label, ev.batch, ev.started, ev.ended, ev.durations, failed)
        if batch.fresh and not ev.errors:
            segment = batch.parts[0][0]
            segment.fill_all(ev.values, ev.durations, ev.worker, ev.batch)
            self._segment_done(segment)
            return
        errors = {e[0]: e for e in ev.errors} if ev.errors else {}
        for i, ((segment, pos), item) in enumerate(zip(batch.refs(), batch.items, strict=True)):
            err = errors.get(i)
            if err is None:
                self.finish_item(segment, pos, ev.values[i], ev.durations[i], ev.worker, ev.batch)
                continue
            _, kind, message, tb, retryable, pickled = err
            if retryable and segment.attempts(pos) <= self.opts.retries:
                self.schedule_retry(segment, pos, item)
            else:
                error = ItemError(kind, message, tb, "exception", pickled)
                self.finish_item(segment, pos, None, ev.durations[i], ev.worker, ev.batch, error)

    def on_rejected(self, ev: BatchRejected, batch: Batch) -> None:
        message = f"batch could not be loaded in the worker: {ev.message}"
        error = ItemError(ev.type, message, ev.traceback, "exception")
        for segment, pos in batch.refs():
            self.finish_item(segment, pos, None, 0.0, ev.worker, ev.batch, error)

    def finish_item(
        self,
        segment: Segment,
        pos: int,
        value: Any,
        duration: float,
        w: int | None,
        batch_id: int | None,
        error: ItemError | None = None,
    ) -> None:
        segment.fill_one(pos, value, duration, w, batch_id, error)
        if segment.done:
            self._segment_done(segment)

    def _segment_done(self, segment: Segment) -> None:
        if self.on_finished is not None:
            try:
                self.on_finished(segment)
            except Exception as exc:  # the store failed (disk full, locked): the call ends
                self.fail(exc)
        if not self.opts.ordered:
            self.completed.append(segment)

    def release(self) -> bool:
        """Move finished segments to ``ready`` (in input order when ordered); any moved?"""
        out: deque[Segment] = self.completed
        if self.opts.ordered:
            out = deque()
            while self.pending and self.pending[0].done:
                out.append(self.pending.popleft())
        else:
            self.completed = deque()
        for segment in out:
            self.stats.items += segment.n
            self.stats.failed += len(segment.errors)
        self.unreleased -= len(out)
        self.ready.extend(out)
        return bool(out)

    def unreleased_done(self) -> list[Segment]:
        """Segments that finished but were never handed out (an aborted run's results)."""
        return [s for s in (*self.ready, *self.pending, *self.completed) if s.done]

    def check_budget(self) -> None:
        """Fail the call once the failures released to its consumer pass ``max_failures``:
        counting released ones (not every failure seen so far) means the consumer has
        seen, and written, exactly the failures the message names."""
        limit, failed = self.opts.max_failures, self.stats.failed
        if limit is None or failed == 0:
            return
        if isinstance(limit, float):
            seen = self.total or self.stats.items
            exceeded = failed > limit * seen and bool(self.total or seen >= 20)
        else:
            exceeded = failed > limit
        if exceeded:
            message = f"{failed} items failed, more than max_failures={limit}; run aborted"
            self.fail(FailureBudgetExceeded(message))

    # -- faults ------------------------------------------------------------------------

    def schedule_retry(self, segment: Segment, pos: int, item: Any) -> None:
        import random  # only retries need it

        extra = segment.override(pos)
        extra.attempts += 1
        self.stats.count("retries")
        delay = self.opts.backoff * (2 ** (extra.attempts - 2)) * random.uniform(0.5, 1.5)
        entry = (time.perf_counter() + delay, next(self._seq), segment, pos, item)
        heapq.heappush(self.retries, entry)

    def after_death(
        self, batch: Batch, running: int | None, cause: str, w: int, new_id: Iterator[int]
    ) -> None:
        """Queue again what a dead worker's batch still owes: ``running`` is the position of
        the item it died running, ``None`` if it died between items."""
        if running is not None and batch.bulk:
            # which item was running is unknown: the batch runs again, item by item, where
            # a second death names it (that first death blames no item, like an idle one)
            batch.exact = True
            self.requeued.appendleft(batch)
            return
        if running is None:
            batch.idle_deaths += 1
            ranges = self.policy.between_items(batch.idle_deaths, len(batch.items))
            if ranges is None:
                pieces = self._judge(batch, 0, cause, w, new_id)
            elif ranges == [(0, len(batch.items))]:
                pieces = [batch]
            else:
                self.stats.count("splits")
                pieces = [self.piece(batch, new_id, lo, hi) for lo, hi in ranges]
        else:
            if len(batch.items) > 1:
                self.stats.count("splits")
            ranges = self.policy.around(len(batch.items), running)
            pieces = self._judge(batch, running, cause, w, new_id)
            pieces += [self.piece(batch, new_id, lo, hi) for lo, hi in ranges]
        self.requeued.extendleft(reversed(pieces))

    def _judge(
        self, batch: Batch, pos: int, cause: str, w: int, new_id: Iterator[int]
    ) -> list[Batch]:
        """The verdict on the item that was running: [] or its batch of one."""
        segment, seg_pos = list(batch.refs())[pos]
        item = batch.items[pos]
        extra = segment.override(seg_pos)
        if cause != "timeout":
            extra.deaths += 1
        verdict = self.policy.judge(cause, extra.attempts, extra.deaths, len(batch.items) == 1)
        if verdict == ALONE:
            extra.attempts += 1
            return [self.piece(batch, new_id, pos, pos + 1)]
        if verdict == FAIL:
            duration = float(self.opts.timeout or 0) if cause == "timeout" else 0.0
            self.finish_item(segment, seg_pos, None, duration, w, None, self._death_error(cause))
        else:
            self.schedule_retry(segment, seg_pos, item)
        return []

    def _death_error(self, cause: str) -> ItemError:
        if cause == "timeout":
            message = f"item ran longer than timeout={self.opts.timeout}s; its worker was killed"
            return ItemError("TimeoutError", message, "", "timeout")
        if cause == "memory-limit":
            limit = (self.opts.max_rss or 0) / 1e6
            message = f"worker memory passed max_rss={limit:.0f} MB while running this item"
            return ItemError("MemoryLimitExceeded", message, "", "memory-limit")
        message = f"the worker process died running this item ({cause})"
        return ItemError("WorkerDied", message, "", cause)
