"""Per-item results: what the user gets back, and the columnar store behind it.

Workers send plain lists (values, durations) per batch, and only the failed items' errors.
A :class:`Segment` keeps those lists as they arrived for one contiguous run of input items;
:class:`ItemResult` objects are built only when someone asks for them, because wrapping every
item in an object costs more than the work itself in fine-grained jobs.
"""

from __future__ import annotations

import bisect
from array import array
from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator, Sequence

from .items import Uniform

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from typing import Any

    from .report import Report
    from .trace import Trace


# ItemError and ItemResult are named tuples: immutable records with the fields below, a
# readable repr and value equality, which is what a frozen dataclass would give, at a small
# fraction of its cost on the first call's import path (the dataclasses module and one
# generated class each cost ~10 ms there).


class ItemError(
    namedtuple(
        "ItemError", "type message traceback cause pickled", defaults=("", "exception", None)
    )
):
    """Why one item failed: ``type``, ``message``, ``traceback`` and ``cause``, which says
    what kind of failure it was: ``"exception"`` (the function raised), ``"timeout"``,
    ``"memory-limit"``, ``"worker-died: SIGSEGV"`` (or ``"worker-died: exit 3"``).
    ``pickled`` is the raised exception itself, pickled in the worker (``None`` when it did
    not pickle; see :meth:`exception`); it is left out of the repr and of comparisons."""

    __slots__ = ()

    def __repr__(self) -> str:
        return (
            f"ItemError(type={self.type!r}, message={self.message!r}, "
            f"traceback={self.traceback!r}, cause={self.cause!r})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ItemError) and self[:4] == other[:4]

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self[:4])

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type

    def exception(self) -> BaseException | None:
        """The exception the function raised, with its own type, when it could be sent back
        (it pickled in the worker and unpickles here); ``None`` otherwise."""
        if self.pickled is None:
            return None
        import pickle

        try:
            return pickle.loads(self.pickled)
        except Exception:
            return None


class ItemResult(
    namedtuple(
        "ItemResult",
        "index ok value error attempts worker batch duration",
        defaults=(None, None, 1, None, None, 0.0),
    )
):
    """The outcome of one input item: ``index``, ``ok``, ``value`` or ``error``
    (:class:`ItemError`), ``attempts``, ``worker`` (pid), ``batch`` (id) and ``duration``
    (seconds inside the function)."""

    __slots__ = ()


class ItemsFailed(Exception):
    """Raised by :attr:`Run.values` when some items failed; ``.errors`` holds them all."""

    def __init__(self, errors: list[ItemResult], total: int) -> None:
        self.errors = errors
        self.total = total
        first = errors[0]
        super().__init__(
            f"{len(errors)} of {total} items failed; first: item {first.index}: {first.error}"
        )


class RunAborted(Exception):
    """Raised when ``max_failures`` is exceeded; ``.run`` holds the results gathered so far."""

    def __init__(self, message: str, run: Run) -> None:
        super().__init__(message)
        self.run = run


class _Override:
    """Per-item facts that differ from the segment's defaults (set when an item was re-run)."""

    __slots__ = ("attempts", "batch", "deaths", "worker")

    def __init__(self, worker: int | None = None, batch: int | None = None) -> None:
        self.attempts = 1
        self.worker = worker
        self.batch = batch
        self.deaths = 0


class Segment:
    """Results of ``n`` consecutive input items starting at ``start``, filled in by batches.

    A fresh batch covers exactly one segment; items that must run again (retries, a dead
    worker) are re-sent in smaller batches but still land in the segment they came from, so
    ordered release stays a matter of releasing whole segments in order.
    """

    __slots__ = (
        "batch",
        "durations",
        "errors",
        "n",
        "overrides",
        "remaining",
        "start",
        "values",
        "worker",
    )

    def __init__(self, start: int, n: int) -> None:
        self.start = start
        self.n = n
        self.values: list[Any] = []
        self.durations: Sequence[float] = array("d")
        self.errors: dict[int, ItemError] = {}
        self.overrides: dict[int, _Override] = {}
        self.remaining = n
        self.worker: int | None = None
        self.batch: int | None = None

    @property
    def done(self) -> bool:
        return self.remaining == 0

    def fill_all(
        self, values: list[Any], durations: Sequence[float], worker: int, batch: int
    ) -> None:
        """The fast path: one batch delivered every item of this segment."""
        self.values, self.durations = values, durations
        self.worker, self.batch = worker, batch
        self.remaining = 0

    def prepare(self, worker: int | None, batch: int | None) -> None:
        """Make room for per-item filling (a batch that covers only part of the segment)."""
        if not self.values:
            self.values = [None] * self.n
            self.durations = array("d", bytes(8 * self.n))
            self.worker, self.batch = worker, batch

    def fill_one(
        self,
        pos: int,
        value: Any,
        duration: float,
        worker: int | None,
        batch: int | None,
        error: ItemError | None = None,
    ) -> None:
        self.prepare(worker, batch)
        self.values[pos] = value
        self.durations[pos] = duration
        if error is not None:
            self.errors[pos] = error
        else:
            self.errors.pop(pos, None)
        if worker != self.worker or batch != self.batch:
            self.override(pos).worker, self.override(pos).batch = worker, batch
        self.remaining -= 1

    def override(self, pos: int) -> _Override:
        found = self.overrides.get(pos)
        if found is None:
            found = self.overrides[pos] = _Override(worker=self.worker, batch=self.batch)
        return found

    def attempts(self, pos: int) -> int:
        found = self.overrides.get(pos)
        return found.attempts if found else 1

    def item(self, pos: int) -> ItemResult:
        error = self.errors.get(pos)
        extra = self.overrides.get(pos)
        return ItemResult(
            index=self.start + pos,
            ok=error is None,
            value=None if error is not None else self.values[pos],
            error=error,
            attempts=extra.attempts if extra else 1,
            worker=extra.worker if extra else self.worker,
            batch=extra.batch if extra else self.batch,
            duration=self.durations[pos],
        )

    def items(self) -> Iterator[ItemResult]:
        for pos in range(self.n):
            yield self.item(pos)


class Columns:
    """A run's released results as columns, filled a segment at a time.

    Keeping every :class:`Segment` of a long run (one per batch) cost ~350 bytes a batch:
    600k items in batches of 4 grew the supervisor by 180 MB for 21 MB of values. Here each
    segment is a row of three numbers (where it starts, its worker, its batch) plus the
    entries of two sparse dicts (errors, and items that ran more than once), and its values
    and durations go into *parts*: a segment of :data:`KEPT_WHOLE` items or more is a part
    as it came from its worker, smaller ones are copied together into a part of their own.
    Big segments are not copied because copying was most of what collecting cost: 200k tiny
    items went through three 1.6 MB copies (values, durations, then :attr:`Run.values`), in
    fresh memory, page faults and all: 6.7 ms of the supervisor's CPU a call to collect them
    (0.08 ms kept whole) and 1.5 ms to copy them out.
    Segments released out of order (``ordered=False``) wait until the ones before them
    arrive.
    """

    KEPT_WHOLE = 1024

    def __init__(self) -> None:
        self.starts = array("q")  # per segment: the input index of its first item
        self.offsets = array("q")  # per segment: where its first value is, counting all parts
        self.workers = array("q")  # per segment (-1: none)
        self.batches = array("q")
        self.rows_part = array("q")  # per segment: the part that holds its values
        self.parts: list[list[Any]] = []
        self.part_durations: list[Sequence[float]] = []
        self.part_offsets = array("q")  # per part: where its first value is
        self.size = 0
        self._copy: tuple[list[Any], array] | None = None  # the part small segments join
        self.errors: dict[int, ItemError] = {}  # by input index
        self.overrides: dict[int, _Override] = {}
        self._waiting: dict[int, Segment] = {}

    def add(self, segment: Segment) -> None:
        if segment.start != self._next_start():
            self._waiting[segment.start] = segment
            return
        self._append(segment)
        while self._next_start() in self._waiting:
            self._append(self._waiting.pop(self._next_start()))

    def finish(self) -> Columns:
        """Take in segments still waiting (an aborted run leaves gaps); returns itself."""
        for start in sorted(self._waiting):
            self._append(self._waiting.pop(start))
        return self

    def _next_start(self) -> int:
        if not self.starts:
            return 0
        return self.starts[-1] + self.size - self.offsets[-1]

    def _append(self, segment: Segment) -> None:
        start = segment.start
        self.starts.append(start)
        self.offsets.append(self.size)
        self.workers.append(-1 if segment.worker is None else segment.worker)
        self.batches.append(-1 if segment.batch is None else segment.batch)
        self._store(segment.values, segment.durations)
        for pos, error in segment.errors.items():
            self.errors[start + pos] = error
        for pos, extra in segment.overrides.items():
            self.overrides[start + pos] = extra

    def _store(self, values: list[Any], durations: Sequence[float]) -> None:
        if len(values) >= self.KEPT_WHOLE:
            self._new_part(values, durations)
            self._copy = None
        else:
            if self._copy is None:
                self._copy = ([], array("d"))
                self._new_part(*self._copy)
            copied_values, copied_durations = self._copy
            copied_values.extend(values)
            if isinstance(durations, array):
                copied_durations.extend(durations)
            elif type(durations) is Uniform:  # n equal times: repeated in C, not via a list
                copied_durations.extend(array("d", (durations.value,)) * len(durations))
            else:  # a plain sequence
                copied_durations.extend(array("d", durations[:]))
        self.rows_part.append(len(self.parts) - 1)
        self.size += len(values)

    def _new_part(self, values: list[Any], durations: Sequence[float]) -> None:
        self.part_offsets.append(self.size)
        self.parts.append(values)
        self.part_durations.append(durations)

    def values(self) -> list[Any]:
        """Every value in input order, as a new list: one copy. (Extending an empty list
        measured faster than filling one made to size: glibc grows a big list in place.)"""
        out: list[Any] = []
        for part in self.parts:
            out.extend(part)
        return out

    def __len__(self) -> int:
        return self.size

    def item(self, row: int, dense: int) -> ItemResult:
        """The result at ``dense`` (its place among all values), which is in segment ``row``."""
        index = self.starts[row] + dense - self.offsets[row]
        part = self.rows_part[row]
        at = dense - self.part_offsets[part]
        error = self.errors.get(index)
        extra = self.overrides.get(index)
        worker, batch = self.workers[row], self.batches[row]
        return ItemResult(
            index=index,
            ok=error is None,
            value=None if error is not None else self.parts[part][at],
            error=error,
            attempts=extra.attempts if extra else 1,
            worker=extra.worker if extra else (None if worker < 0 else worker),
            batch=extra.batch if extra else (None if batch < 0 else batch),
            duration=self.part_durations[part][at],
        )

    def items(self) -> Iterator[ItemResult]:
        rows = len(self.starts)
        for row in range(rows):
            end = self.offsets[row + 1] if row + 1 < rows else self.size
            for dense in range(self.offsets[row], end):
                yield self.item(row, dense)

    def find(self, index: int) -> ItemResult:
        row = bisect.bisect_right(self.starts, index) - 1
        return self.item(row, self.offsets[row] + index - self.starts[row])


class Run:
    """The outcome of ``map``: every item's result in input order, a report and a trace."""

    def __init__(
        self,
        segments: Columns | Iterable[Segment],
        report: Report | Callable[[], Report],
        trace: Trace,
    ) -> None:
        if not isinstance(segments, Columns):
            columns = Columns()
            for segment in segments:
                columns.add(segment)
            segments = columns
        self._columns = segments.finish()
        self._report = report
        self.trace = trace
        self._results: list[ItemResult] | None = None

    @property
    def report(self) -> Report:
        """The run's :class:`~poolrun.report.Report` (made on first use: a one-off script
        that only wants the values does not pay for it)."""
        if callable(self._report):
            self._report = self._report()
        return self._report

    def __len__(self) -> int:
        return len(self._columns)

    def __repr__(self) -> str:
        return f"<poolrun.Run items={len(self)} failed={self.failed}>"

    @property
    def failed(self) -> int:
        return len(self._columns.errors)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    @property
    def values(self) -> list[Any]:
        """Return values in input order; raises :class:`ItemsFailed` if any item failed."""
        if self.failed:
            raise ItemsFailed(self.errors, len(self))
        return self._columns.values()

    @property
    def results(self) -> list[ItemResult]:
        if self._results is None:
            self._results = list(self._columns.items())
        return self._results

    @property
    def errors(self) -> list[ItemResult]:
        return [self._columns.find(index) for index in sorted(self._columns.errors)]

    def __iter__(self) -> Iterator[ItemResult]:
        return iter(self.results)
