"""The supervisor: turns an iterable into batches, keeps workers fed, and gives results back.

Data flow (everything here runs in the caller's process, in one thread)::

    input iterable ──(lazy, islice)──► fresh batch ──┐
                                                     ├─► dispatch ──► backend.submit(worker)
    requeued pieces (after a worker died) ───────────┤    ≤ `inflight` batches per worker
    retries whose backoff has passed ────────────────┘          │
                                                                ▼
    BatchSizer ◄── BatchMemory (RSS) ◄──┐              worker processes run batches
      (next size)                       │                        │
                                        └── backend.wait() ◄─────┘ BatchDone / WorkerDied
                                                  │
                                  results land in their Segment (one per fresh batch)
                                                  │
                     ordered: release segments in input order (bounded reorder window)
                     unordered: release segments as they complete
                                                  ▼
                                       caller (map → Run, imap → ItemResults)

A worker that dies is replaced at once; the batch it was running is split around the item
it was running (known from the worker's shared slot): the items before and after run again
as batches, the item itself runs again alone, and fails only if it kills a worker again.
A timeout or a memory kill blames the running item the same way.

The loop never sleeps: it blocks in ``backend.wait`` until a result or a death arrives, or
until the next deadline it owns (an item's timeout, the next RSS sample, a retry's backoff).
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from . import log, worker
from .backends.base import (
    Backend,
    BatchDone,
    BatchMemory,
    BatchRejected,
    Event,
    FunctionSpec,
    SetupFailed,
    WorkerDied,
)
from .batching import BatchSizer
from .options import Options
from .report import Stats
from .results import ItemError, Segment
from .trace import Trace

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from typing import Any

RSS_SAMPLE_SECONDS = 0.05
DEATHS_BEFORE_BLAME = 2  # an item fails after killing this many workers (the last time alone)
# A SIGKILL or SIGTERM may come from outside (the OOM killer, an operator, a chaos test) and
# hit whatever item happened to run, so it takes more evidence to blame an item for one.
EXTERNAL_DEATHS_BEFORE_BLAME = 4
EXTERNAL_CAUSES = ("worker-died: SIGKILL", "worker-died: SIGTERM", "worker-died: dask worker lost")


class FailureBudgetExceeded(Exception):
    """Internal: ``max_failures`` was passed; the API turns it into ``RunAborted``."""


@dataclass(slots=True)
class Batch:
    """Items sent together to one worker, and where each one's result belongs."""

    id: int
    parts: list[tuple[Segment, Sequence[int]]]
    items: list[Any]
    fresh: bool = False
    idle_deaths: int = 0

    def refs(self) -> Iterator[tuple[Segment, int]]:
        for segment, positions in self.parts:
            for pos in positions:
                yield segment, pos


def _group(refs: Iterable[tuple[Segment, int]]) -> list[tuple[Segment, Sequence[int]]]:
    parts: list[tuple[Segment, list[int]]] = []
    for segment, pos in refs:
        if parts and parts[-1][0] is segment:
            parts[-1][1].append(pos)
        else:
            parts.append((segment, [pos]))
    return parts  # type: ignore[return-value]


class Supervisor:
    """Runs one function over one iterable on a backend; iterate :meth:`run` for segments."""

    def __init__(
        self,
        backend: Backend,
        fn: Callable[[Any], Any],
        options: Options,
        stats: Stats,
        trace: Trace,
        total: int | None = None,
        reset_on_abandon: bool = True,
    ) -> None:
        self.backend = backend
        self.opts = options
        self.stats = stats
        self.trace = trace
        self.total = total
        spec = FunctionSpec(fn, options.retry_on, options.timeout, options.max_rss)
        self.fn_id = backend.register(spec)
        fixed = options.batch_size if isinstance(options.batch_size, int) else None
        self.sizer = BatchSizer(
            workers=options.workers,
            fixed=fixed,
            target_seconds=options.target_batch_seconds,
            max_size=options.max_batch_size,
            max_rss=options.max_rss,
        )
        self.inflight: dict[int, deque[int]] = {w: deque() for w in backend.worker_ids()}
        self.batches: dict[int, Batch] = {}
        self.requeued: deque[Batch] = deque()
        self.retries: list[tuple[float, int, Segment, int, Any]] = []
        self.pending: deque[Segment] = deque()  # ordered mode: unreleased, in input order
        self.completed: deque[Segment] = deque()  # unordered mode: done, not yet released
        self.open_segments = 0
        self.max_open = max(8, 4 * options.workers * options.inflight)
        self.consumed = 0
        self.failures = 0
        self.exhausted = False
        self.retiring: set[int] = set()
        self.kill_targets: dict[int, tuple[int, int] | None] = {}
        self.awaiting_memory: dict[int, tuple[int, float]] = {}
        self.any_done = False  # has any batch of this run finished?
        self.startup_deaths = 0  # deaths of workers seen before any batch finished
        self.next_rss_sample = 0.0
        self._ids = itertools.count(1)
        self._seq = itertools.count()
        self._items: Iterator[Any] = iter(())
        self.reset_on_abandon = reset_on_abandon

    # -- the loop ----------------------------------------------------------------------

    def run(self, items: Iterable[Any]) -> Iterator[Segment]:
        """Yield finished segments; on early exit, work in flight is dropped (workers reset)."""
        self._items = iter(items)
        finished = False
        try:
            while True:
                self._dispatch()
                released = self._release()
                if released:
                    yield from released
                    continue
                if self.exhausted and self.open_segments == 0:
                    finished = True
                    return
                self._step()
        finally:
            if not finished:
                self.abandon()

    def _step(self) -> None:
        if not any(self.inflight.values()) and not self.retries and not self.requeued:
            raise RuntimeError("poolrun supervisor stalled with no work in flight (a bug)")
        events = self.backend.wait(self._wait_seconds(time.perf_counter()))
        for event in events:
            self._handle(event)
        self._police(time.perf_counter())
        self._check_budget()

    def abandon(self) -> None:
        """Reset workers still busy with this run, so a reused pool starts clean (a
        one-shot call's backend is closed right after, so there is nothing to reset)."""
        if not self.reset_on_abandon:
            return
        for w, ids in list(self.inflight.items()):
            if ids:
                self.inflight.pop(w)
                self.inflight[self.backend.replace(w)] = deque()
        self.batches.clear()

    def unreleased(self) -> list[Segment]:
        """Segments that finished but were not yet handed out (for an aborted run's results)."""
        return [s for s in (*self.pending, *self.completed) if s.done]

    # -- feeding workers ---------------------------------------------------------------

    def _dispatch(self) -> None:
        self._recycle_idle()
        while True:
            w = self._free_worker()
            if w is None:
                return
            batch = self._next_batch()
            if batch is None:
                return
            self._send(w, batch)

    def _free_worker(self) -> int | None:
        best, load = None, self.opts.inflight
        for w, ids in self.inflight.items():
            if len(ids) < load and w not in self.retiring:
                best, load = w, len(ids)
        return best

    def _next_batch(self) -> Batch | None:
        if self.requeued:
            return self.requeued.popleft()
        if self.retries and self.retries[0][0] <= time.perf_counter():
            return self._retry_batch()
        if self.exhausted or self.open_segments >= self.max_open:
            return None
        return self._fresh_batch()

    def _fresh_batch(self) -> Batch | None:
        remaining = None if self.total is None else max(self.total - self.consumed, 0)
        size = self.sizer.next_size(remaining)
        items = list(itertools.islice(self._items, size))
        if len(items) < size or remaining == len(items):
            self.exhausted = True
        if not items:
            return None
        segment = Segment(self.consumed, len(items))
        self.consumed += len(items)
        self.open_segments += 1
        if self.opts.ordered:
            self.pending.append(segment)
        self.stats.sizes.record(len(items))
        return Batch(next(self._ids), [(segment, range(len(items)))], items, fresh=True)

    def _retry_batch(self) -> Batch:
        now, limit = time.perf_counter(), self.sizer.next_size()
        refs, items = [], []
        while self.retries and self.retries[0][0] <= now and len(items) < limit:
            _, _, segment, pos, item = heapq.heappop(self.retries)
            refs.append((segment, pos))
            items.append(item)
        return Batch(next(self._ids), _group(refs), items)

    def _send(self, w: int, batch: Batch) -> None:
        try:
            payload = worker.dumps(batch.items)
        except Exception:
            kept = self._fail_unpicklable(batch)
            if kept is None:
                return
            batch, payload = kept, worker.dumps(kept.items)
        self.batches[batch.id] = batch
        self.inflight[w].append(batch.id)
        self.backend.submit(w, batch.id, self.fn_id, payload)

    def _fail_unpicklable(self, batch: Batch) -> Batch | None:
        """Items that cannot be pickled fail on their own; the rest still run."""
        keep_refs, keep_items = [], []
        for (segment, pos), item in zip(batch.refs(), batch.items, strict=True):
            try:
                worker.dumps(item)
            except Exception as exc:
                kind, message, _ = worker.describe_exception(exc, 0)
                error = ItemError(kind, f"item cannot be sent to a worker: {message}")
                self._finish_item(segment, pos, None, 0.0, None, batch.id, error)
            else:
                keep_refs.append((segment, pos))
                keep_items.append(item)
        if not keep_items:
            return None
        return Batch(batch.id, _group(keep_refs), keep_items)

    def _recycle_idle(self) -> None:
        for w in [w for w in self.retiring if not self.inflight.get(w)]:
            self.retiring.discard(w)
            self.inflight.pop(w, None)
            self.inflight[self.backend.retire(w)] = deque()
            self.stats.count("recycled")
            self.stats.count("restarts")
            self.trace.mark(w, "recycled (memory)", time.perf_counter())

    # -- results -----------------------------------------------------------------------

    def _handle(self, event: Event) -> None:
        if isinstance(event, BatchDone):
            self._on_done(event)
        elif isinstance(event, BatchMemory):
            self._on_memory(event)
        elif isinstance(event, WorkerDied):
            self._on_death(event)
        elif isinstance(event, BatchRejected):
            self._on_rejected(event)

    def _take(self, w: int, batch_id: int) -> Batch | None:
        ids = self.inflight.get(w)
        if ids and batch_id in ids:
            ids.remove(batch_id)
        return self.batches.pop(batch_id, None)

    def _on_done(self, ev: BatchDone) -> None:
        self.any_done = True
        batch = self._take(ev.worker, ev.batch)
        if batch is None:
            return
        busy = ev.ended - ev.started
        self.stats.batch_done(ev.worker, ev.durations, busy)
        self.awaiting_memory[ev.batch] = (len(ev.durations), busy)
        failed = len(ev.errors) if ev.errors else 0
        label = self.backend.describe_worker(ev.worker)
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
                self._finish_item(segment, pos, ev.values[i], ev.durations[i], ev.worker, ev.batch)
                continue
            _, kind, message, tb, retryable = err
            if retryable and segment.attempts(pos) <= self.opts.retries:
                self._schedule_retry(segment, pos, item)
            else:
                error = ItemError(kind, message, tb, "exception")
                self._finish_item(segment, pos, None, ev.durations[i], ev.worker, ev.batch, error)

    def _on_memory(self, ev: BatchMemory) -> None:
        self.stats.rss_seen(ev.worker, max(ev.rss_peak, ev.max_rss))
        self.trace.memory(ev.worker, ev.batch, ev.rss_peak)
        n, busy = self.awaiting_memory.pop(ev.batch, (0, 0.0))
        self.sizer.observe(n, busy, ev.rss_start, ev.rss_peak)
        if self.sizer.must_recycle(ev.rss_start, ev.rss_peak) and ev.worker in self.inflight:
            self.retiring.add(ev.worker)

    def _on_rejected(self, ev: BatchRejected) -> None:
        batch = self._take(ev.worker, ev.batch)
        if batch is None:
            return
        error = ItemError(
            ev.type,
            f"batch could not be loaded in the worker: {ev.message}",
            ev.traceback,
            "exception",
        )
        for segment, pos in batch.refs():
            self._finish_item(segment, pos, None, 0.0, ev.worker, ev.batch, error)

    def _finish_item(
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
        if error is not None:
            self.failures += 1
        if segment.done:
            self._segment_done(segment)

    def _segment_done(self, segment: Segment) -> None:
        if not self.opts.ordered:
            self.completed.append(segment)

    def _release(self) -> list[Segment]:
        out: list[Segment] = []
        if self.opts.ordered:
            while self.pending and self.pending[0].done:
                out.append(self.pending.popleft())
        else:
            out.extend(self.completed)
            self.completed.clear()
        self.open_segments -= len(out)
        for segment in out:
            self.stats.items += segment.n
            self.stats.failed += len(segment.errors)
        return out

    # -- faults ------------------------------------------------------------------------

    def _schedule_retry(self, segment: Segment, pos: int, item: Any) -> None:
        extra = segment.override(pos)
        extra.attempts += 1
        self.stats.count("retries")
        delay = self.opts.backoff * (2 ** (extra.attempts - 2)) * random.uniform(0.5, 1.5)
        entry = (time.perf_counter() + delay, next(self._seq), segment, pos, item)
        heapq.heappush(self.retries, entry)

    def _on_death(self, ev: WorkerDied) -> None:
        w = ev.worker
        ids = list(self.inflight.pop(w, ()))
        self.retiring.discard(w)
        cause = self._confirmed_cause(ev)
        self.stats.count("worker_deaths")
        self.stats.count("restarts")
        if cause == "timeout":
            self.stats.count("timeouts")
        elif cause == "memory-limit":
            self.stats.count("memory_kills")
        self.trace.mark(w, cause, time.perf_counter(), running=ev.running, detail=ev.detail)
        log.debug("worker {} died ({}) with {} batches in flight", w, cause, len(ids))
        self._check_startup(cause, ev)
        self.inflight[self.backend.replace(w)] = deque()
        pieces: list[Batch] = []
        for batch_id in ids:
            batch = self.batches.pop(batch_id, None)
            if batch is None:
                continue
            if ev.running and ev.running[0] == batch_id:
                pieces += self._split_around(batch, ev.running[1], cause, w)
            elif batch_id == ids[0]:
                pieces += self._died_between_items(batch, cause, w)
            else:
                pieces.append(batch)  # never started: re-run as it was
        self.requeued.extendleft(reversed(pieces))

    def _check_startup(self, cause: str, ev: WorkerDied) -> None:
        """Workers that die before this run has finished a single batch, again and again,
        will never work: fail the run instead of respawning forever (an initializer that
        exits, a broken environment). Once any batch has finished, deaths are the items'
        doing and are handled by blaming and splitting."""
        if self.any_done or ev.running is not None or cause in ("timeout", "memory-limit"):
            return
        self.startup_deaths += 1
        if self.startup_deaths > 2 * self.opts.workers:
            raise SetupFailed(
                f"{self.startup_deaths} workers in a row died before running any item "
                f"({cause}); the workers' own error output above says why"
            )

    def _confirmed_cause(self, ev: WorkerDied) -> str:
        """A timeout or memory kill blames the item seen at kill time, not a later one."""
        target = self.kill_targets.pop(ev.worker, None)
        if ev.cause in ("timeout", "memory-limit") and target is not None and target != ev.running:
            return "worker-died: SIGKILL"
        return ev.cause

    def _split_around(self, batch: Batch, culprit: int, cause: str, w: int) -> list[Batch]:
        refs = list(batch.refs())
        pieces = []
        for lo, hi in ((0, culprit), (culprit + 1, len(refs))):
            if lo < hi:
                pieces.append(Batch(next(self._ids), _group(refs[lo:hi]), batch.items[lo:hi]))
        if len(refs) > 1:
            self.stats.count("splits")
        segment, pos = refs[culprit]
        alone = self._blame(segment, pos, batch.items[culprit], cause, len(refs) == 1, w)
        if alone is not None:
            pieces.insert(0, alone)
        return pieces

    def _died_between_items(self, batch: Batch, cause: str, w: int) -> list[Batch]:
        """The worker died loading or sending this batch; halve it if that keeps happening."""
        batch.idle_deaths += 1
        if batch.idle_deaths < DEATHS_BEFORE_BLAME:
            return [batch]
        refs = list(batch.refs())
        if len(refs) == 1:
            alone = self._blame(refs[0][0], refs[0][1], batch.items[0], cause, True, w)
            return [alone] if alone else []
        self.stats.count("splits")
        half = len(refs) // 2
        return [
            Batch(next(self._ids), _group(refs[lo:hi]), batch.items[lo:hi])
            for lo, hi in ((0, half), (half, len(refs)))
        ]

    def _blame(
        self, segment: Segment, pos: int, item: Any, cause: str, alone: bool, w: int
    ) -> Batch | None:
        """The item was running when its worker died: fail it, or give it another run alone."""
        extra = segment.override(pos)
        if cause == "timeout":
            if extra.attempts <= self.opts.retries:
                self._schedule_retry(segment, pos, item)
                return None
            message = f"item ran longer than timeout={self.opts.timeout}s; its worker was killed"
            self._finish_item(
                segment,
                pos,
                None,
                float(self.opts.timeout or 0),
                w,
                None,
                ItemError("TimeoutError", message, "", "timeout"),
            )
            return None
        extra.deaths += 1
        needed = EXTERNAL_DEATHS_BEFORE_BLAME if cause in EXTERNAL_CAUSES else DEATHS_BEFORE_BLAME
        if extra.deaths >= needed + self.opts.retries and alone:
            self._finish_item(segment, pos, None, 0.0, w, None, self._death_error(cause))
            return None
        extra.attempts += 1
        refs = [(segment, pos)]
        return Batch(next(self._ids), _group(refs), [item])

    def _death_error(self, cause: str) -> ItemError:
        if cause == "memory-limit":
            limit = (self.opts.max_rss or 0) / 1e6
            return ItemError(
                "MemoryLimitExceeded",
                f"worker RSS passed max_rss={limit:.0f} MB while running this item",
                "",
                "memory-limit",
            )
        return ItemError(
            "WorkerDied", f"the worker process died running this item ({cause})", "", cause
        )

    def _police(self, now: float) -> None:
        """Enforce per-item timeouts and the memory limit on busy workers."""
        sample = self.opts.max_rss is not None and now >= self.next_rss_sample
        for w, ids in self.inflight.items():
            if not ids or w in self.kill_targets:
                continue
            running = self.backend.running(w)
            if self.opts.timeout and running and now - running[2] > self.opts.timeout:
                self.kill_targets[w] = running[:2]
                self.backend.kill(w, "timeout")
            elif sample:
                rss = self.backend.rss(w)
                if rss is not None:
                    self.stats.rss_seen(w, rss)
                    if rss > (self.opts.max_rss or 0):
                        self.kill_targets[w] = running[:2] if running else None
                        self.backend.kill(w, "memory-limit")
        if sample:
            self.next_rss_sample = now + RSS_SAMPLE_SECONDS

    def _wait_seconds(self, now: float) -> float | None:
        deadlines = []
        busy = [w for w, ids in self.inflight.items() if ids]
        if self.opts.timeout and busy:
            for w in busy:
                running = self.backend.running(w)
                deadlines.append((running[2] if running else now) + self.opts.timeout)
        if self.opts.max_rss and busy:
            deadlines.append(self.next_rss_sample)
        if self.retries:
            deadlines.append(self.retries[0][0])
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    def _check_budget(self) -> None:
        limit = self.opts.max_failures
        if limit is None or self.failures == 0:
            return
        if isinstance(limit, float):
            seen = self.total or self.consumed
            exceeded = self.failures > limit * seen and (self.total or seen >= 20)
        else:
            exceeded = self.failures > limit
        if exceeded:
            raise FailureBudgetExceeded(
                f"{self.failures} items failed, more than max_failures={limit}; run aborted"
            )
