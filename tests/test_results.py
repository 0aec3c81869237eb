"""The columnar store behind a Run: what comes out must be what went in, in input order."""

from __future__ import annotations

import random
from array import array

from hypothesis import given, settings
from hypothesis import strategies as st

from poolrun.items import Uniform
from poolrun.results import Columns, ItemError, Run, Segment
from poolrun.trace import Trace

KEPT = Columns.KEPT_WHOLE


def _segment(start: int, n: int, kind: int, failing: set[int]) -> Segment:
    """A segment of values ``start..start+n`` with durations of one of the three kinds a
    worker sends (an array, ``Uniform``, a plain list), failed where ``failing`` says."""
    segment = Segment(start, n)
    values = [f"v{i}" for i in range(start, start + n)]
    durations: object
    if kind == 0:
        durations = array("d", [i / 1000 for i in range(start, start + n)])
    elif kind == 1:
        durations = Uniform(start / 1000, n)
    else:
        durations = [i / 1000 for i in range(start, start + n)]
    segment.fill_all(values, durations, worker=100 + start, batch=start)
    for i in failing & set(range(start, start + n)):
        segment.values[i - start] = None
        segment.errors[i - start] = ItemError("ValueError", f"bad {i}")
    return segment


def _expected_duration(start: int, index: int, kind: int) -> float:
    return start / 1000 if kind == 1 else index / 1000


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(
        st.one_of(st.integers(1, 40), st.integers(KEPT - 2, KEPT + 300)), min_size=0, max_size=12
    ),
    kinds=st.lists(st.integers(0, 2), min_size=12, max_size=12),
    seed=st.integers(0, 2**16),
)
def test_columns_give_back_every_item_in_input_order(
    sizes: list[int], kinds: list[int], seed: int
) -> None:
    """Segments big enough to be kept whole and small ones copied together, added out of
    order, come back as the same values, durations, workers, batches and errors."""
    rng = random.Random(seed)
    total = sum(sizes)
    failing = {rng.randrange(total) for _ in range(3)} if total else set()
    segments, starts, start = [], {}, 0
    for n, kind in zip(sizes, kinds, strict=False):
        segments.append(_segment(start, n, kind, failing))
        starts[start] = kind
        start += n
    columns = Columns()
    for segment in rng.sample(segments, len(segments)):
        columns.add(segment)
    run = Run(columns, report=lambda: None, trace=Trace(0.0))

    assert len(run) == total
    assert run.failed == len(failing)
    expected_values = [None if i in failing else f"v{i}" for i in range(total)]
    assert columns.values() == expected_values
    results = run.results
    assert [r.index for r in results] == list(range(total))
    assert [r.value for r in results] == expected_values
    assert [r.ok for r in results] == [i not in failing for i in range(total)]
    segment_of = {i: s for s in starts for i in range(s, s + sizes[list(starts).index(s)])}
    for r in results:
        first = segment_of[r.index]
        assert r.worker == 100 + first and r.batch == first
        assert r.duration == _expected_duration(first, r.index, starts[first])
    assert [e.index for e in run.errors] == sorted(failing)


def test_values_are_a_new_list_each_time() -> None:
    """The caller owns what ``values`` returns: changing it changes nothing in the run."""
    columns = Columns()
    columns.add(_segment(0, KEPT + 5, 0, set()))
    run = Run(columns, report=lambda: None, trace=Trace(0.0))
    values = run.values
    values[0] = "changed"
    values.append("extra")
    assert run.values[0] == "v0" and len(run.values) == KEPT + 5
    assert run.results[0].value == "v0"
