"""The public Python API: ``task``, ``map``, ``imap`` and ``Pool``.

``map``/``imap`` without a pool start workers for the one call and stop them after it;
``Pool`` keeps them warm across calls. Either way the work goes through one
:class:`~poolrun.supervisor.Supervisor` per call.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .backends.base import Backend
from .monitor import progress_display
from .options import Options, make_options
from .report import Report, Stats
from .results import ItemResult, Run, RunAborted, Segment
from .supervisor import FailureBudgetExceeded, Supervisor
from .trace import Trace

POOL_LEVEL = ("workers", "start_method", "initializer", "initargs", "backend", "scheduler")


def _preload_module(fn: Callable[..., Any]) -> tuple[str, ...]:
    module = getattr(fn, "__module__", None)
    if not module or module == "__main__" or module not in sys.modules:
        return ()
    return (module,)


def make_backend(opts: Options, preload: tuple[str, ...] = ()) -> Backend:
    if opts.backend == "dask":
        from .backends.dask import DaskBackend

        return DaskBackend(opts.workers, opts.scheduler, opts.initializer, opts.initargs)
    from .backends.local import LocalBackend

    return LocalBackend(opts.workers, opts.start_method, opts.initializer, opts.initargs, preload)


def _total(items: Iterable[Any]) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None


class _Call:
    """One map/imap call: a supervisor plus the report, trace and progress around it."""

    def __init__(
        self,
        backend: Backend,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        opts: Options,
        pooled: bool = False,
    ) -> None:
        self.items = items
        self.opts = opts
        self.total = _total(items)
        self.stats = Stats(backend.name, opts.workers, opts.max_rss)
        self.trace = Trace(
            self.stats.started, with_items=opts.trace_items, on_mark=self.stats.timeline.mark
        )
        # A pool's workers outlive the call: one that ends early must leave them clean.
        self.supervisor = Supervisor(
            backend, fn, opts, self.stats, self.trace, self.total, reset_on_abandon=pooled
        )

    def segments_iter(self) -> Iterator[Segment]:
        # made here, not in __init__: a live view's thread starts only once the call runs
        self.progress = progress_display(self.opts.progress, self.total, lambda: self)
        try:
            for segment in self.supervisor.run(self.items):
                self.progress.update(segment.n, len(segment.errors), self.supervisor.sizer.size)
                yield segment
        finally:
            self.stats.ended = time.perf_counter()
            self.progress.close()

    def report(self) -> Report:
        return self.stats.finish()

    def run(self, keep: list[Segment]) -> Run:
        return Run(keep, self.report(), self.trace)


def _collect(call: _Call) -> Run:
    kept: list[Segment] = []
    try:
        for segment in call.segments_iter():
            kept.append(segment)
    except FailureBudgetExceeded as exc:
        kept.extend(call.supervisor.unreleased())
        raise RunAborted(str(exc), call.run(kept)) from None
    return call.run(kept)


def _segments(call: _Call) -> Iterator[Segment]:
    try:
        yield from call.segments_iter()
    except FailureBudgetExceeded as exc:
        raise RunAborted(str(exc), call.run(call.supervisor.unreleased())) from None


def _stream(call: _Call) -> Iterator[ItemResult]:
    for segment in _segments(call):
        yield from segment.items()


class _OneShot:
    """Start a backend for one call and make sure it is gone afterwards, on every path."""

    def __init__(self, fn: Callable[[Any], Any], opts: Options) -> None:
        self.backend = make_backend(opts, _preload_module(fn))

    def __enter__(self) -> Backend:
        try:
            self.backend.start()
        except BaseException:
            self.backend.close(wait=False)
            raise
        return self.backend

    def __exit__(self, kind: Any, *_: Any) -> None:
        self.backend.close(wait=kind is None)


def map(fn: Callable[[Any], Any], items: Iterable[Any], **options: Any) -> Run:
    """Run ``fn`` over ``items`` in worker processes; returns a :class:`Run` in input order."""
    opts = make_options(**options)
    with _OneShot(fn, opts) as backend:
        return _collect(_Call(backend, fn, items, opts))


def imap(fn: Callable[[Any], Any], items: Iterable[Any], **options: Any) -> Iterator[ItemResult]:
    """Stream :class:`ItemResult` objects as they finish (input order unless ``ordered=False``).

    ``items`` is consumed lazily: only a bounded number of items is read ahead.
    """
    return Streaming(fn, items, **options).results()


class Streaming:
    """An ``imap`` call that keeps its report and trace, for callers that stream results
    somewhere themselves (the CLI writes them to files) and still want the numbers after.

    ``results()`` is the same generator ``imap`` returns; ``report()``, ``trace``,
    ``batch_size`` and ``worker_rss`` can be read while it runs or after it ended (they are
    ``None`` before the workers started).
    """

    def __init__(self, fn: Callable[[Any], Any], items: Iterable[Any], **options: Any) -> None:
        self.options = make_options(**options)
        self._fn = fn
        self._items = items
        self._call: _Call | None = None

    def results(self) -> Iterator[ItemResult]:
        for segment in self.segments():
            yield from segment.items()

    def segments(self) -> Iterator[Segment]:
        """Results a batch at a time (:class:`~poolrun.results.Segment`: ``start``, ``n``,
        ``values``, ``errors`` by position), for callers that would otherwise pay for one
        ``ItemResult`` object per item (the CLI writes a whole batch's lines at once)."""
        with _OneShot(self._fn, self.options) as backend:
            self._call = _Call(backend, self._fn, self._items, self.options)
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
        return self._call.supervisor.sizer.size if self._call else None

    @property
    def worker_rss(self) -> int | None:
        """The highest RSS any worker reached so far, in bytes."""
        if self._call is None:
            return None
        return max((w.peak_rss for w in self._call.stats.per_worker.values()), default=0)


class Pool:
    """Warm workers reused across calls: ``with poolrun.Pool(workers=4) as pool: pool.map(...)``.

    Pool-level options (``workers``, ``start_method``, ``initializer``, ``initargs``,
    ``backend``, ``scheduler``) are fixed when the pool is made; the others can be changed
    per call.
    """

    def __init__(self, **options: Any) -> None:
        self.options = make_options(**options)
        self._backend: Backend | None = None
        self._closed = False

    def _ready(
        self, fn: Callable[[Any], Any], overrides: dict[str, Any]
    ) -> tuple[Backend, Options]:
        if self._closed:
            raise ValueError("this Pool is closed")
        fixed = sorted(set(overrides) & set(POOL_LEVEL))
        if fixed:
            raise ValueError(f"{', '.join(fixed)} cannot change per call; make another Pool")
        opts = self.options.with_changes(**overrides)
        if self._backend is None:
            backend = make_backend(self.options, _preload_module(fn))
            try:
                backend.start()
            except BaseException:
                backend.close(wait=False)
                raise
            self._backend = backend
        return self._backend, opts

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], **overrides: Any) -> Run:
        backend, opts = self._ready(fn, overrides)
        try:
            return _collect(_Call(backend, fn, items, opts, pooled=True))
        except KeyboardInterrupt:
            self.terminate()  # Ctrl-C: don't wait for busy workers
            raise

    def imap(
        self, fn: Callable[[Any], Any], items: Iterable[Any], **overrides: Any
    ) -> Iterator[ItemResult]:
        backend, opts = self._ready(fn, overrides)
        return _stream(_Call(backend, fn, items, opts, pooled=True))

    def close(self) -> None:
        """Let workers finish and exit; waits for them."""
        self._closed = True
        if self._backend is not None:
            self._backend.close(wait=True)
            self._backend = None

    def terminate(self) -> None:
        """Kill workers at once."""
        self._closed = True
        if self._backend is not None:
            self._backend.close(wait=False)
            self._backend = None

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.terminate()

    def __del__(self) -> None:
        if getattr(self, "_backend", None) is not None:
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


def task(fn: Callable[[Any], Any] | None = None, **options: Any) -> Any:
    """Decorator: ``@poolrun.task`` or ``@poolrun.task(workers=4, timeout=30)``."""
    if fn is None:
        return lambda f: Task(f, options)
    return Task(fn, options)
