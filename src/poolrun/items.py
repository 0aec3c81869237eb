"""Running one batch's items in a worker: each in its own ``try``, timed one by one, or, for
items too short to time, in bulk; and how an item's failure is described for its caller.

Used by every kind of worker (:mod:`poolrun.worker` for local ones,
:mod:`poolrun.backends.dask_task` for Dask's).
"""

from __future__ import annotations

import time
from _pickle import dumps as _dumps
from array import array
from collections.abc import Callable, Sequence

from .backends.wire import PROTOCOL
from .slot import IDLE, SLOT_BATCH, SLOT_POS, SLOT_STARTED

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from typing import Any


def describe_exception(exc: BaseException, skip_frames: int = 1) -> tuple[str, str, str]:
    """(type, message, traceback) with poolrun's own frames cut, so it points at user code."""
    import traceback  # only failures need it

    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    text = "".join(traceback.format_exception(kind, exc, tb))
    return name, str(exc), text


TIMED_ITEM_SECONDS = 2e-6  # below this, reading the clock per item costs more than the item


class Uniform(Sequence):
    """``n`` equal durations, sent as two numbers instead of ``n`` (the untimed fast path)."""

    __slots__ = ("n", "value")

    def __init__(self, value: float, n: int) -> None:
        self.value, self.n = value, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self.value] * len(range(*index.indices(self.n)))
        if not -self.n <= index < self.n:
            raise IndexError("duration index out of range")
        return self.value

    def __reduce__(self) -> tuple[type[Uniform], tuple[float, int]]:
        return (Uniform, (self.value, self.n))


def run_batch(
    fn: Callable[[Any], Any],
    items: list[Any],
    batch_id: int,
    slot: memoryview,
    retry_on: tuple[type[BaseException], ...],
    track_start: bool = True,
    timed: bool = True,
    bulk: bool = False,
) -> tuple[list[Any], Sequence[float], list[Failure] | None]:
    """Run ``fn`` over ``items``; returns values, durations, errors. An item's exception
    is that item's error, never its neighbours'.

    Durations go in an ``array('d')``: it pickles as one block of bytes, not as many floats.
    Item start times are written to the slot only when a timeout needs them. With
    ``timed=False`` (items known to take under ~2 µs) each item gets the batch's mean time,
    because a clock read per item would double the cost of such work. ``bulk`` (the
    supervisor's choice, for such items and no timeout) goes further: no ``try`` and no slot
    write per item, so after a crash the slot tells the batch but not the item (the
    supervisor then runs the batch again without ``bulk``).
    """
    slot[SLOT_BATCH] = batch_id
    if track_start or (timed and not bulk):
        values, durations, errors = _run_timed(fn, items, slot, retry_on, track_start)
    else:
        started = time.perf_counter()
        if bulk:
            slot[SLOT_POS] = 0  # an item of this batch is running; the slot cannot say which
            values, errors = _run_bulk(fn, items, retry_on)
        else:
            values, errors = _run_untimed(fn, items, slot, retry_on)
        mean = (time.perf_counter() - started) / max(len(items), 1)
        durations = Uniform(mean, len(items))
    slot[SLOT_POS] = IDLE
    return values, durations, errors


Failure = tuple[int, str, str, str, bool, bytes | None]  # pos, type, message, tb, retry, exc


def _failure(pos: int, exc: BaseException, retry_on: tuple) -> Failure:
    return (pos, *describe_exception(exc), isinstance(exc, retry_on), _pickled(exc))


def _pickled(exc: BaseException) -> bytes | None:
    """The exception itself, pickled, so that the caller can raise it with its own type (an
    Executor's future does); ``None`` when it does not pickle (type, message and traceback
    still travel)."""
    try:
        return _dumps(exc, protocol=PROTOCOL)
    except Exception:
        return None


def _run_timed(fn, items, slot, retry_on, track_start):
    values: list[Any] = []
    durations = array("d")
    errors = None
    add_value, add_duration, clock = values.append, durations.append, time.perf_counter
    started = clock()
    for pos, item in enumerate(items):
        slot[SLOT_POS] = pos
        if track_start:
            slot[SLOT_STARTED] = started
        try:
            add_value(fn(item))
        except BaseException as exc:  # the item failed, not the worker
            add_value(None)
            errors = errors or []
            errors.append(_failure(pos, exc, retry_on))
        now = clock()
        add_duration(now - started)
        started = now
    return values, durations, errors


def _run_untimed(fn, items, slot, retry_on):
    values: list[Any] = []
    errors = None
    add_value = values.append
    for pos, item in enumerate(items):
        slot[SLOT_POS] = pos
        try:
            add_value(fn(item))
        except BaseException as exc:  # the item failed, not the worker
            add_value(None)
            errors = errors or []
            errors.append(_failure(pos, exc, retry_on))
    return values, errors


def _run_bulk(fn, items, retry_on):
    """``list(map(fn, items))``, with an item that raises recorded and skipped: it runs at
    the speed of ``map`` (~65 ns an item less than a loop with a ``try`` per item, a third
    of the cost of a tiny item). ``extend`` keeps what it appended before the exception, so
    the failed item's position is the length so far, and ``rest`` resumes after it."""
    values: list[Any] = []
    errors = None
    rest = iter(items)
    while True:
        try:
            values.extend(map(fn, rest))
            return values, errors
        except BaseException as exc:  # the item failed, not the worker
            errors = errors or []
            errors.append(_failure(len(values), exc, retry_on))
            values.append(None)
