"""``poolrun.Executor``: a ``concurrent.futures.Executor`` on poolrun's workers.

Code written for ``ProcessPoolExecutor`` runs unchanged, and gains what poolrun does: a
segfault, a ``timeout`` or a ``max_rss`` kill fails that one future (with
:class:`TaskFailed`, which says why) instead of breaking the pool, and every other future,
pending or later, still runs.

How it works: the executor owns a :class:`~poolrun.Pool` and runs one long call on it whose
input is a :class:`~poolrun.feed.Feed` of submissions. ``submit`` puts ``(future, call)``
into the feed and returns; the supervisor cuts batches from whatever is pending whenever a
worker is free, so a burst of small submissions travels in a few batches, not one round
trip each. A thread of the executor consumes the call's results and resolves the futures
(and runs their callbacks, as ``ProcessPoolExecutor``'s thread does). A future cancelled
before a batch takes it is skipped: it never runs.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from .feed import Feed
from .results import ItemError, Segment

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from typing import Any

    from .api import Pool
    from .report import Report

Future = concurrent.futures.Future


class TaskFailed(Exception):
    """A submitted call failed without an exception of its own to raise: its worker died (a
    segfault, ``os._exit``), it ran past ``timeout``, it passed ``max_rss``, or what it
    raised or returned could not be sent back. ``cause`` says which (as
    :attr:`ItemError.cause`: ``"worker-died: SIGSEGV"``, ``"timeout"``, ...); ``error`` is
    the :class:`~poolrun.ItemError` itself."""

    def __init__(self, error: ItemError) -> None:
        super().__init__(f"{error} (cause: {error.cause})")
        self.error = error
        self.cause = error.cause


class RemoteTraceback(Exception):
    """Set as ``__cause__`` of an exception raised in a worker: the worker's traceback."""

    def __str__(self) -> str:
        return self.args[0]


def _as_exception(error: ItemError) -> BaseException:
    """What ``future.result()`` raises for a failed item: the function's own exception when
    it came back, else :class:`TaskFailed`."""
    exc = error.exception() if error.cause == "exception" else None
    if exc is None:
        return TaskFailed(error)
    if error.traceback:
        exc.__cause__ = RemoteTraceback(f'\n"""\n{error.traceback.rstrip()}\n"""')
    return exc


# -- what runs in the worker --------------------------------------------------------------


def invoke(call: tuple[Any, tuple[Any, ...], dict[str, Any]]) -> Any:
    """Run one submission in a worker: ``fn(*args, **kwargs)``; ``fn`` arrives cloudpickled
    (as bytes) when plain pickle cannot name it (a lambda, a nested function)."""
    fn, args, kwargs = call
    if type(fn) is bytes:
        import cloudpickle

        fn = cloudpickle.loads(fn)
    return fn(*args, **kwargs)


def _portable(fn: Callable[..., Any]) -> Any:
    if "<" in getattr(fn, "__qualname__", ""):  # <lambda>, <locals>: pickle cannot name it
        import cloudpickle

        return cloudpickle.dumps(fn)
    return fn


def run_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    """``map(..., chunksize=n)``: one submission runs ``n`` calls, as in the standard one."""
    return [fn(*args) for args in chunk]


# -- the executor -------------------------------------------------------------------------


class _Submissions(Feed):
    """The feed of an executor: ``(future, call)`` pairs in, calls out to the workers; knows
    which future each call read from it belongs to (by its index in the call's input)."""

    def __init__(self) -> None:
        super().__init__()
        self.futures: dict[int, Future] = {}  # taken, not yet resolved; by input index
        self.broken: BaseException | None = None  # why the executor cannot run anything
        self._taken = itertools.count()

    def __next__(self) -> Any:
        while True:
            future, call = super().__next__()
            if future.set_running_or_notify_cancel():  # False: cancelled, so it never runs
                self.futures[next(self._taken)] = future
                return call

    def cancel_pending(self) -> None:
        for future, _ in self.take_pending():
            future.cancel()

    def resolve(self, segment: Segment) -> None:
        futures, values, errors = self.futures, segment.values, segment.errors
        for pos in range(segment.n):
            future = futures.pop(segment.start + pos)
            error = errors.get(pos) if errors else None
            if error is None:
                future.set_result(values[pos])
            else:
                future.set_exception(_as_exception(error))

    def fail_all(self, exc: BaseException) -> None:
        """The pool broke (its workers cannot start, ``max_failures`` was passed): every
        future still owed fails with ``exc``."""
        self.broken = exc
        self.close()
        pending = [f for f, _ in self.take_pending() if f.set_running_or_notify_cancel()]
        for future in [*self.futures.values(), *pending]:
            if not future.done():
                future.set_exception(exc)
        self.futures.clear()


_LIVE: weakref.WeakSet[_Submissions] = weakref.WeakSet()


def _close_live() -> None:
    """At interpreter exit (before non-daemon threads are joined): close every executor's
    feed, so their threads finish the work already submitted and end."""
    for feed in list(_LIVE):
        feed.close()


threading._register_atexit(_close_live)  # what ProcessPoolExecutor does too


def _drive(call: Any, feed: _Submissions, pool: Pool) -> None:
    """The executor's thread: resolve futures as batches come back, then close the pool."""
    from .api import _segments

    try:
        for segment in _segments(call):
            feed.resolve(segment)
    except BaseException as exc:
        feed.fail_all(exc)
        pool.terminate()
    else:
        pool.close()


class Executor(concurrent.futures.Executor):
    """``concurrent.futures.Executor`` on poolrun workers: ``Executor(max_workers=4,
    timeout=30, max_rss="1GB", retries=2, ...)``; every ``poolrun.map`` option works.

    Unlike ``ProcessPoolExecutor``, a worker that crashes, times out or passes ``max_rss``
    fails only the future it was running (with :class:`TaskFailed`); the executor stays
    usable. Safe to share between threads.
    """

    def __init__(self, max_workers: int | None = None, **options: Any) -> None:
        from .api import Pool, _Call

        if max_workers is not None and "workers" in options:
            raise TypeError("give max_workers or workers=, not both")
        options.setdefault("workers", max_workers)
        # the pool starts before the thread below: a single-threaded caller's workers are
        # then forked from a template of it (start_method="auto")
        self._pool = Pool(**options)
        self._feed = _Submissions()
        try:
            supervisor, opts = self._pool._ready({"ordered": False})
            self._call = call = _Call(supervisor, invoke, self._feed, opts)
        except BaseException:
            self._pool.terminate()
            raise
        self._window = 512 * opts.workers  # map()'s default buffersize
        _LIVE.add(self._feed)
        self._thread = threading.Thread(
            target=_drive, args=(call, self._feed, self._pool), name="poolrun-executor"
        )
        self._thread.start()
        weakref.finalize(self, self._feed.close).atexit = False  # dropped: finish, then end

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)``; returns a standard ``Future``."""
        future: Future = Future()
        if not self._feed.put((future, (_portable(fn), args, kwargs))):
            if self._feed.broken is not None:
                raise RuntimeError(f"this executor is broken: {self._feed.broken}")
            raise RuntimeError("cannot schedule new futures after shutdown")
        return future

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[Any]:
        """``fn`` over ``zip(*iterables)``, results in order, read lazily: at most
        ``buffersize`` submissions (default 512 per worker; ``chunksize`` calls each) are in
        flight ahead of the consumer, as with Python 3.14's ``buffersize``. Raises
        ``TimeoutError`` when a result is not there ``timeout`` seconds after the call."""
        if chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, got {chunksize!r}")
        if buffersize is not None and (not isinstance(buffersize, int) or buffersize < 1):
            raise ValueError(f"buffersize must be None or an int >= 1, got {buffersize!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        calls: Iterator[tuple[Any, ...]] = zip(*iterables, strict=False)  # as the standard map
        if chunksize > 1:  # each submission runs run_chunk(fn, [args, ...])
            arguments, one = calls, fn
            chunks = iter(lambda: list(itertools.islice(arguments, chunksize)), [])
            calls = ((one, chunk) for chunk in chunks)
            fn = run_chunk
        window = buffersize or max(1, self._window // chunksize)
        futures = deque(self.submit(fn, *args) for args in itertools.islice(calls, window))
        results = self._ordered(fn, futures, calls, deadline)
        return itertools.chain.from_iterable(results) if chunksize > 1 else results

    def _ordered(
        self,
        fn: Callable[..., Any],
        futures: deque[Future],
        calls: Iterator[tuple[Any, ...]],
        deadline: float | None,
    ) -> Iterator[Any]:
        try:
            while futures:
                future = futures.popleft()
                left = None if deadline is None else deadline - time.monotonic()
                try:
                    result = future.result(left)
                except BaseException:
                    future.cancel()
                    raise
                for args in itertools.islice(calls, 1):  # keep the window full
                    futures.append(self.submit(fn, *args))
                del future
                yield result
        finally:
            for future in futures:
                future.cancel()

    def report(self) -> Report:
        """The executor's run so far in numbers, as ``poolrun.map``'s report: items,
        batches, faults, time per worker (final once ``shutdown`` has returned)."""
        stats = self._call.stats
        ended = stats.ended  # None while running: the report must not freeze it
        try:
            return self._call.report()
        finally:
            if self._thread.is_alive():
                stats.ended = ended

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submissions; with ``cancel_futures`` the pending ones are cancelled (those
        already running finish). With ``wait``, returns once every future is done and the
        workers have exited."""
        if cancel_futures:
            self._feed.cancel_pending()
        self._feed.close()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()
