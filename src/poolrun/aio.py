"""asyncio: ``await poolrun.amap(...)`` and ``async for r in poolrun.aimap(...)`` (also on a
``Pool``), without ever blocking the event loop.

The engine waits in blocking calls (``poll`` on the workers' pipes), so a coroutine cannot
drive it itself. Each async call gets one thread of its own (a one-thread executor) that does
every blocking step in turn: starting the workers, waiting for the next batch's results,
and, last, closing the call. The loop only awaits those steps. Because the close is queued
behind whatever step is in flight, a cancelled task or an abandoned ``async for`` cancels the
call cleanly, never while the thread is still inside it.

A one-shot ``amap`` starts its workers in that thread, where the process is no longer
single-threaded, so they start by forkserver; a ``Pool`` made before the loop runs forks
them from a template of the program (faster to start) and keeps them warm across calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from .api import Pool, _Call, _OneShot
from .calls import FailureBudgetExceeded
from .options import Options, make_options
from .results import Columns, ItemResult, Run, Segment

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from typing import Any

Opener = Callable[[], tuple[_Call, Callable[[bool], None] | None]]


class _Offloaded:
    """One call run for a coroutine: every blocking step runs in this object's thread."""

    def __init__(self, opener: Opener) -> None:
        self._opener = opener
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="poolrun-aio")
        self.call: _Call | None = None
        self._segments: Any = None
        self._stop: Callable[[bool], None] | None = None

    def _open(self) -> None:
        self.call, self._stop = self._opener()
        self._segments = self.call.segments_iter()

    def _next(self) -> tuple[Segment, list[ItemResult] | None] | None:
        segment = next(self._segments, None)
        return None if segment is None else (segment, None)

    def _next_items(self) -> tuple[Segment, list[ItemResult] | None] | None:
        """A segment and its ItemResults, built here rather than in the loop's thread."""
        found = self._next()
        return None if found is None else (found[0], list(found[0].items()))

    def _close(self, ok: bool) -> None:
        if self._segments is not None:
            self._segments.close()  # an unfinished call is cancelled
        if self._stop is not None:
            self._stop(ok)

    async def _in_thread(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.wrap_future(self._thread.submit(fn))

    async def segments(
        self, with_items: bool = False
    ) -> AsyncIterator[tuple[Segment, list[ItemResult] | None]]:
        ok = False
        step = self._next_items if with_items else self._next
        try:
            await self._in_thread(self._open)
            while (found := await self._in_thread(step)) is not None:
                yield found
            ok = True
        finally:
            self._thread.submit(self._close, ok)  # after any step still in flight
            self._thread.shutdown(wait=False)


def _one_shot(fn: Callable[[Any], Any], items: Iterable[Any], opts: Options) -> Opener:
    def opener() -> tuple[_Call, Callable[[bool], None]]:
        workers = _OneShot(fn, opts)
        supervisor = workers.__enter__()
        try:
            call = _Call(supervisor, fn, items, opts)
        except BaseException:
            workers.__exit__(Exception)
            raise
        return call, lambda ok: workers.__exit__(None if ok else Exception)

    return opener


def _on_pool(
    pool: Pool, fn: Callable[[Any], Any], items: Iterable[Any], overrides: dict[str, Any]
) -> Opener:
    supervisor, opts = pool._ready(overrides)  # a bad option or a closed pool fails now
    return lambda: (_Call(supervisor, fn, items, opts), None)


async def _collect(offloaded: _Offloaded) -> Run:
    kept = Columns()
    try:
        async with contextlib.aclosing(offloaded.segments()) as segments:
            async for segment, _ in segments:
                kept.add(segment)
    except FailureBudgetExceeded as exc:
        assert offloaded.call is not None
        raise offloaded.call.aborted(exc, kept) from None
    assert offloaded.call is not None
    return offloaded.call.run(kept)


async def _stream(offloaded: _Offloaded) -> AsyncIterator[ItemResult]:
    try:
        async with contextlib.aclosing(offloaded.segments(with_items=True)) as segments:
            async for _, results in segments:
                for result in results or ():
                    yield result
    except FailureBudgetExceeded as exc:
        assert offloaded.call is not None
        raise offloaded.call.aborted(exc, Columns()) from None


async def amap(fn: Callable[[Any], Any], items: Iterable[Any], **options: Any) -> Run:
    """``await poolrun.amap(fn, items, **options)``: :func:`poolrun.map` for asyncio."""
    return await _collect(_Offloaded(_one_shot(fn, items, make_options(**options))))


def aimap(
    fn: Callable[[Any], Any], items: Iterable[Any], **options: Any
) -> AsyncIterator[ItemResult]:
    """``async for r in poolrun.aimap(fn, items, **options)``: :func:`poolrun.imap` for
    asyncio; leaving the loop early cancels the rest of the call."""
    return _stream(_Offloaded(_one_shot(fn, items, make_options(**options))))


async def pool_amap(
    pool: Pool, fn: Callable[[Any], Any], items: Iterable[Any], overrides: dict[str, Any]
) -> Run:
    return await _collect(_Offloaded(_on_pool(pool, fn, items, overrides)))


def pool_aimap(
    pool: Pool, fn: Callable[[Any], Any], items: Iterable[Any], overrides: dict[str, Any]
) -> AsyncIterator[ItemResult]:
    return _stream(_Offloaded(_on_pool(pool, fn, items, overrides)))
