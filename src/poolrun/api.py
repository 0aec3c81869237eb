"""The public Python API: ``task``, ``map``, ``imap``, ``starmap`` and ``Pool``.

``map``/``imap`` without a pool start workers for the one call and stop them after it;
``Pool`` keeps them warm across calls, and may be shared between threads. Either way a call
is a :class:`~poolrun.calls.Call` run by the :class:`~poolrun.supervisor.Supervisor` of the
workers it runs on.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator

from .backends.base import Backend
from .calls import SLICEABLE, FailureBudgetExceeded
from .options import Options, make_options
from .progress import Progress
from .ratelimit import describe_rate
from .results import Columns, ItemResult, Run, RunAborted, Segment
from .stats import Stats
from .supervisor import Supervisor
from .trace import Trace

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from typing import Any

    from .report import Report

POOL_LEVEL = (
    "workers",
    "start_method",
    "start_timeout",
    "initializer",
    "initargs",
    "backend",
    "scheduler",
    "inflight",
)


def _preload_module(fn: Callable[..., Any]) -> tuple[str, ...]:
    module = getattr(fn, "__module__", None)
    if not module or module == "__main__" or module not in sys.modules:
        return ()
    return (module,)


def make_backend(
    opts: Options, fn: Callable[[Any], Any] | None = None, inherit: bool = False, items: Any = None
) -> Backend:
    """The backend for ``opts``. ``fn`` is preloaded by a forkserver; with ``inherit`` (a
    one-shot call) workers forked from a template hold it already and are not sent it, nor
    ``items`` if given (the call's input, when it is a list, a tuple or a range)."""
    if opts.backend == "dask":
        from .backends.dask import DaskBackend

        return DaskBackend(opts.workers, opts.scheduler, opts.initializer, opts.initargs)
    from .backends.local import LocalBackend

    preload = _preload_module(fn) if fn is not None else ()
    inherited = fn if inherit else None
    return LocalBackend(
        opts.workers,
        opts.start_method,
        opts.initializer,
        opts.initargs,
        preload,
        inherited,
        items if inherit else None,
    )


def _total(items: Iterable[Any]) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None


class _Call:
    """One map/imap call: its place in the supervisor, plus the report, trace and progress."""

    def __init__(
        self,
        supervisor: Supervisor,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        opts: Options,
        store: Any = None,
    ) -> None:
        backend = supervisor.backend
        self.supervisor = supervisor
        self.opts = opts
        self.total = _total(items)
        self.stats = Stats(backend.name, opts.workers, opts.max_rss)
        self.stats.start_method = f"{backend.start_method} ({backend.start_reason})"
        self.trace = Trace(
            self.stats.started, with_items=opts.trace_items, on_mark=self.stats.timeline.mark
        )
        # a durable store (checkpoint=, or a Queue's drain) picks the items the engine
        # runs, commits each finished segment, and places results (see poolrun.durable)
        self.store = store if store is not None else _checkpoint(fn, opts, self.total)
        engine_items, engine_total = items, self.total
        if self.store is not None:
            engine_items, engine_total = self.store.feed(items), self.store.engine_total
        self.call = supervisor.open(fn, engine_items, opts, self.stats, self.trace, engine_total)
        if self.store is not None:
            self.call.on_finished = self.store.commit
        self.progress: Any = None

    def segments_iter(self) -> Iterator[Segment]:
        # made here, not in __init__: a live view's thread starts only once the call runs
        self.progress = _display(self.opts.progress, self.total, self)
        segments = self.supervisor.segments(self.call)
        if self.store is not None:
            segments = self.store.merge(segments, self.stats, self.opts.ordered)
        try:
            for segment in segments:
                self.progress.update(segment.n, len(segment.errors), self.call.sizer.size)
                yield segment
        finally:
            self.stats.ended = time.perf_counter()
            self.progress.close()
            self.stats.live_view_cpu_s = getattr(self.progress, "cpu_s", None)

    def report(self) -> Report:
        bucket = self.call.bucket
        if bucket is not None:  # rate=: the limit, and the rate items really started at
            held = bucket.held()
            self.stats.rate = {
                "limit": describe_rate(bucket.rate),
                "held_per_s": None if held is None else round(held, 2),
            }
        report = self.stats.finish()
        dropped = report.trace_events_dropped = self.trace.dropped
        if dropped:
            report.notes.append(
                f"the trace kept its last {self.trace.max_events:,} events; {dropped:,} older "
                "ones were dropped (the command line's --trace streams every event to its file)"
            )
        return report

    def run(self, kept: Columns) -> Run:
        return Run(kept, self.report, self.trace)  # the report is made when first read

    def aborted(self, exc: FailureBudgetExceeded, kept: Columns) -> RunAborted:
        placed = self.store.placed if self.store is not None else {}
        for segment in self.call.unreleased_done():
            for part in placed.pop(id(segment), [segment]):  # a store's: at their positions
                kept.add(part)
        return RunAborted(str(exc), self.run(kept))


def _checkpoint(fn: Callable[..., Any], opts: Options, total: int | None) -> Any:
    """The ``checkpoint=`` store of a call, or ``None`` (sqlite3 is imported only then)."""
    if opts.checkpoint is None:
        return None
    from .durable.checkpoint import Checkpoint

    return Checkpoint(opts.checkpoint, fn, total, opts.retry_failed)


def _display(mode: bool | str, total: int | None, call: _Call) -> Any:
    """The progress output: none, a bar or line, or the live view (see ``poolrun.monitor``,
    imported only when asked for: it brings rich and psutil)."""
    if not mode:
        return Progress(total, False)
    from .monitor import progress_display

    return progress_display(mode, total, lambda: call)


def _collect(call: _Call) -> Run:
    kept = Columns()
    try:
        for segment in call.segments_iter():
            kept.add(segment)
    except FailureBudgetExceeded as exc:
        raise call.aborted(exc, kept) from None
    return call.run(kept)


def _segments(call: _Call) -> Iterator[Segment]:
    try:
        yield from call.segments_iter()
    except FailureBudgetExceeded as exc:
        raise call.aborted(exc, Columns()) from None


def _stream(call: _Call) -> Iterator[ItemResult]:
    for segment in _segments(call):
        yield from segment.items()


class _OneShot:
    """Start a backend for one call and make sure it is gone afterwards, on every path.

    ``items``, a list, tuple or range that the call reads whole before anything else can
    change it (``map``), is handed down to workers forked from the template with the
    function: batches then name slices of it, and the items are never pickled."""

    def __init__(self, fn: Callable[[Any], Any], opts: Options, items: Any = None) -> None:
        self.backend = make_backend(opts, fn, inherit=True, items=items)
        self.inflight = opts.inflight

    def __enter__(self) -> Supervisor:
        try:
            self.backend.start()
        except BaseException:
            self.backend.close(wait=False)
            raise
        return Supervisor(self.backend, self.inflight)

    def __exit__(self, kind: Any, *_: Any) -> None:
        self.backend.close(wait=kind is None)


def map(fn: Callable[[Any], Any], items: Iterable[Any], **options: Any) -> Run:
    """Run ``fn`` over ``items`` in worker processes; returns a :class:`Run` in input order."""
    opts = make_options(**options)
    held = items if type(items) in SLICEABLE else None
    with _OneShot(fn, opts, held) as supervisor:
        return _collect(_Call(supervisor, fn, items, opts))


def imap(fn: Callable[[Any], Any], items: Iterable[Any], **options: Any) -> Iterator[ItemResult]:
    """Stream :class:`ItemResult` objects as they finish (input order unless ``ordered=False``).

    ``items`` is consumed lazily: only a bounded number of items is read ahead.
    """
    opts = make_options(**options)  # a bad option fails here, not at the first result
    return _one_shot_stream(fn, items, opts)


def _one_shot_stream(
    fn: Callable[[Any], Any], items: Iterable[Any], opts: Options
) -> Iterator[ItemResult]:
    with _OneShot(fn, opts) as supervisor:
        yield from _stream(_Call(supervisor, fn, items, opts))


class _Starred:
    """``fn(*item)`` for each tuple ``item``: what ``starmap`` runs (picklable, unlike a
    lambda; named after ``fn``'s module so a forkserver preloads that module)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.__module__ = getattr(fn, "__module__", None) or __name__

    def __call__(self, args: Iterable[Any]) -> Any:
        return self.fn(*args)


def starmap(fn: Callable[..., Any], items: Iterable[Iterable[Any]], **options: Any) -> Run:
    """``fn(*args)`` for each tuple in ``items``: :func:`map` for functions of several
    arguments, as ``multiprocessing.Pool.starmap``."""
    return map(_Starred(fn), items, **options)


class PoolClosed(RuntimeError):
    """The pool was closed or terminated while a call was still running on it."""


class Pool:
    """Warm workers reused across calls: ``with poolrun.Pool(workers=4) as pool: pool.map(...)``.

    Safe to share between threads: any number of threads may call ``map`` and ``imap`` at
    once; their calls share the workers (batches are taken from each open call in turn) and
    each gets its own results. Pool-level options (``workers``, ``start_method``,
    ``initializer``, ``initargs``, ``backend``, ``scheduler``, ``inflight``) are fixed when
    the pool is made; the others can be changed per call. The workers start when the pool is
    made, so a pool made before the program starts threads forks them from a template of
    the program (see ``start_method``), and keeps doing so after.
    """

    def __init__(self, **options: Any) -> None:
        self.options = make_options(**options)
        self._lock = threading.Lock()
        self._closed = False
        backend = make_backend(self.options)
        try:
            backend.start()
        except BaseException:
            backend.close(wait=False)
            raise
        self._supervisor: Supervisor | None = Supervisor(backend, self.options.inflight)

    def _ready(self, overrides: dict[str, Any]) -> tuple[Supervisor, Options]:
        fixed = sorted(set(overrides) & set(POOL_LEVEL))
        if fixed:
            raise ValueError(f"{', '.join(fixed)} cannot change per call; make another Pool")
        opts = self.options.with_changes(**overrides)
        with self._lock:
            if self._supervisor is None:
                raise ValueError("this Pool is closed")
            return self._supervisor, opts

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], **overrides: Any) -> Run:
        supervisor, opts = self._ready(overrides)
        try:
            return _collect(_Call(supervisor, fn, items, opts))
        except KeyboardInterrupt:
            self.terminate()  # Ctrl-C: don't wait for busy workers
            raise

    def imap(
        self, fn: Callable[[Any], Any], items: Iterable[Any], **overrides: Any
    ) -> Iterator[ItemResult]:
        supervisor, opts = self._ready(overrides)
        return _stream(_Call(supervisor, fn, items, opts))

    def starmap(
        self, fn: Callable[..., Any], items: Iterable[Iterable[Any]], **overrides: Any
    ) -> Run:
        """``fn(*args)`` for each tuple in ``items`` (see :func:`starmap`)."""
        return self.map(_Starred(fn), items, **overrides)

    async def amap(self, fn: Callable[[Any], Any], items: Iterable[Any], **overrides: Any) -> Run:
        """``await pool.amap(...)``: :meth:`map` without blocking the event loop."""
        from .aio import pool_amap

        return await pool_amap(self, fn, items, overrides)

    def aimap(
        self, fn: Callable[[Any], Any], items: Iterable[Any], **overrides: Any
    ) -> AsyncIterator[ItemResult]:
        """``async for r in pool.aimap(...)``: :meth:`imap` for asyncio."""
        from .aio import pool_aimap

        return pool_aimap(self, fn, items, overrides)

    def close(self) -> None:
        """Let workers finish and exit; returns once every one has (calls still running in
        other threads fail with :class:`PoolClosed`)."""
        self._shut(wait=True)

    def terminate(self) -> None:
        """Kill workers at once."""
        self._shut(wait=False)

    def _shut(self, wait: bool) -> None:
        with self._lock:
            supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.fail_all(PoolClosed("the pool was closed while this call was running"))
            supervisor.backend.close(wait=wait)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.terminate()

    def __del__(self) -> None:
        if getattr(self, "_supervisor", None) is not None:
            self.terminate()


class Task:
    """A function made parallel by ``@poolrun.task``: call it as before, or ``.map`` it."""

    def __init__(self, fn: Callable[[Any], Any], options: dict[str, Any]) -> None:
        make_options(**options)  # fail at decoration time, not at the first map
        self.fn = fn
        self.options = options
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def map(self, items: Iterable[Any], **overrides: Any) -> Run:
        return map(self.fn, items, **{**self.options, **overrides})

    def imap(self, items: Iterable[Any], **overrides: Any) -> Iterator[ItemResult]:
        return imap(self.fn, items, **{**self.options, **overrides})

    def starmap(self, items: Iterable[Iterable[Any]], **overrides: Any) -> Run:
        return starmap(self.fn, items, **{**self.options, **overrides})


def task(fn: Callable[[Any], Any] | None = None, **options: Any) -> Any:
    """Decorator: ``@poolrun.task`` or ``@poolrun.task(workers=4, timeout=30)``."""
    if fn is None:
        return lambda f: Task(f, options)
    return Task(fn, options)
