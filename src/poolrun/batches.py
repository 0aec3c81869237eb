"""A batch: items sent together to one worker, and where each one's result belongs.

A batch names its results by (segment, position) pairs, so that pieces of batches and
retries can mix items of several segments; its items are a :class:`SourceSlice` of the
call's input when that input is a list, a tuple or a range (nothing copied), else a list.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from .results import Segment

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from typing import Any

    from .calls import Call


class Batch:
    """Items sent together to one worker, and where each one's result belongs."""

    __slots__ = ("bulk", "call", "exact", "fresh", "id", "idle_deaths", "items", "parts")

    def __init__(
        self,
        id: int,
        call: Call,
        parts: list[tuple[Segment, Sequence[int]]],
        items: Sequence[Any],
        fresh: bool = False,
    ) -> None:
        self.id, self.call, self.parts, self.items = id, call, parts, items
        self.fresh = fresh
        self.idle_deaths = 0  # times its worker died before or after running it
        self.bulk = False  # sent to run in bulk: a crash then does not tell which item
        self.exact = False  # made again after a fault: never in bulk

    def refs(self) -> Iterator[tuple[Segment, int]]:
        for segment, positions in self.parts:
            for pos in positions:
                yield segment, pos


class SourceSlice:
    """Items ``start``..``stop`` of a call's list, tuple or range input, not copied.

    A fresh batch of such an input travels as positions to a worker that inherited it, so
    the supervisor never needs its items, unless the batch runs again after a fault: a copy
    of each batch (``list(islice(...))``) was a tenth of the supervisor's time on tiny items.
    """

    __slots__ = ("source", "start", "stop")

    def __init__(self, source: Sequence[Any], start: int, stop: int) -> None:
        self.source, self.start, self.stop = source, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            lo, hi, step = index.indices(len(self))
            return self.source[self.start + lo : self.start + hi : step]
        if not -len(self) <= index < len(self):
            raise IndexError("batch item index out of range")
        return self.source[self.start + index % len(self)]

    def __iter__(self) -> Iterator[Any]:
        return iter(self[:])


def group(refs: Iterable[tuple[Segment, int]]) -> list[tuple[Segment, Sequence[int]]]:
    """(segment, positions) runs from (segment, position) pairs, keeping their order."""
    parts: list[tuple[Segment, list[int]]] = []
    for segment, pos in refs:
        if parts and parts[-1][0] is segment:
            parts[-1][1].append(pos)
        else:
            parts.append((segment, [pos]))
    return parts  # type: ignore[return-value]


def positions(batch: Batch) -> Sequence[int]:
    """Where a batch's items are in its call's input (a segment starts where it was read)."""
    if len(batch.parts) == 1:
        segment, positions = batch.parts[0]
        if type(positions) is range and positions.step == 1:
            return range(segment.start + positions.start, segment.start + positions.stop)
    return [segment.start + pos for segment, pos in batch.refs()]
