"""The batch sizer as a pure object: fake timings and fake RSS readings, no processes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poolrun.batching import TAIL_MIN_SECONDS, WARMUP_BATCHES, BatchSizer


def test_grows_under_a_fast_clock_until_the_target():
    sizer = BatchSizer(workers=2, target_seconds=0.02, max_size=100_000)
    sizes = []
    for _ in range(12):
        n = sizer.next_size()
        sizes.append(n)
        sizer.observe(n, busy_seconds=n * 1e-6)  # 1 µs per item
    assert sizes[0] == 1
    assert sizes == sorted(sizes)
    assert sizes[-1] == 20_000  # 0.02 s / 1 µs


def test_first_measurement_sets_the_size_from_the_time_per_item():
    sizer = BatchSizer(workers=2, target_seconds=0.02)
    sizer.observe(1, busy_seconds=20e-6)  # 20 µs an item: 1,000 make 20 ms
    assert sizer.next_size() == 1000


def test_growth_is_capped_per_step_after_the_warm_up():
    sizer = BatchSizer(workers=2, target_seconds=1.0)
    for _ in range(WARMUP_BATCHES):
        sizer.observe(1, busy_seconds=0.1)
    assert sizer.next_size() == 10
    sizer.observe(10, busy_seconds=10e-9)
    assert sizer.next_size() == 40


def test_a_slow_first_item_does_not_keep_batches_small():
    sizer = BatchSizer(workers=2, target_seconds=0.02)
    sizer.observe(1, busy_seconds=5e-3)  # a fresh worker's first item: imports, page faults
    assert sizer.next_size() == 4
    sizer.observe(1, busy_seconds=0.25e-3)  # the same work, warm
    assert sizer.next_size() == 80  # straight to 20 ms worth, no 4x steps


def test_a_large_batch_outweighs_the_small_ones_before_it():
    sizer = BatchSizer(workers=2, target_seconds=0.02)
    sizer.observe(1, busy_seconds=1e-3)  # a slow first item (a lazy import, say)
    sizer.observe(20, busy_seconds=20 * 1e-5)
    assert sizer.per_item_seconds < 1e-4


def test_shrinks_when_items_get_slow():
    sizer = BatchSizer(workers=2, target_seconds=0.02, initial=1000)
    for _ in range(WARMUP_BATCHES):
        sizer.observe(1000, busy_seconds=1000 * 1e-6)
    sizer.observe(1000, busy_seconds=1000 * 1e-3)
    sizer.observe(1000, busy_seconds=1000 * 1e-3)
    assert sizer.next_size() < 40


def test_shrinks_under_rising_rss():
    limit = 1_000_000_000
    sizer = BatchSizer(workers=2, target_seconds=10, max_rss=limit, initial=64)
    rss, sizes = 100_000_000, []
    for _ in range(12):
        n = sizer.next_size()
        sizes.append(n)
        peak = rss + n * 4_000_000  # each item holds 4 MB until the batch ends
        sizer.observe(n, busy_seconds=n * 1e-3, rss_start=rss, rss_peak=peak)
        rss += 30_000_000  # and the worker keeps growing
    assert sizes[-1] < sizes[1]
    assert all(s >= 1 for s in sizes)
    # every batch it chose after the first keeps the worker under the soft limit
    assert all(
        100_000_000 + i * 30_000_000 + s * 4_000_000 < 0.8 * limit
        for i, s in enumerate(sizes)
        if i > 0 and s > 1
    )


def test_halves_when_a_peak_nears_the_limit_and_recycles_above():
    sizer = BatchSizer(workers=2, max_rss=1000, initial=64)
    sizer.observe(64, 0.01, rss_start=100, rss_peak=800)
    assert sizer.next_size() == 32
    assert not sizer.must_recycle(rss_start=100, rss_peak=800)
    assert sizer.must_recycle(rss_start=100, rss_peak=950)
    assert sizer.must_recycle(rss_start=760, rss_peak=770)


def test_fair_share_near_the_end():
    sizer = BatchSizer(workers=2, initial=1000)
    assert sizer.next_size(remaining=100_000) == 1000
    assert sizer.next_size(remaining=2000) == 500  # a fair share: 2 batches per worker
    assert sizer.next_size(remaining=400) == 100
    assert sizer.next_size(remaining=60) == 15
    assert sizer.next_size(remaining=30) == 10  # never below a hundredth of the size...
    assert sizer.next_size(remaining=8) == 8  # ...unless fewer items are left
    assert sizer.next_size(remaining=3) == 3
    assert sizer.next_size(remaining=0) == 1


def _sized_at_1000(per_item_times: list[float]) -> BatchSizer:
    """A sizer at 1,000 items a batch that has seen batches with these times per item."""
    sizer = BatchSizer(workers=2, target_seconds=1.0)
    for per_item in per_item_times:
        sizer.observe(1000, busy_seconds=1000 * per_item)
    sizer.size = 1000
    return sizer


def test_fair_share_counts_the_items_in_flight_when_items_look_alike():
    """An idle worker at the tail, while the other holds 600 items: its part of the 1,000
    items left is (400 + 600) / 2 = 500, and it takes half of that now, where counting only
    the 400 undispatched gave a quarter of them (100), and so 4x the round trips."""
    sizer = _sized_at_1000([1e-3, 1.1e-3, 0.9e-3, 1e-3, 1.05e-3, 0.95e-3])
    assert sizer.items_look_alike
    assert sizer.next_size(remaining=400) == 100  # nothing known of what is in flight
    assert sizer.next_size(remaining=400, in_flight=lambda: (0, 600)) == 250
    # a worker that already holds its part gets the floor (a hundredth of the size)
    assert sizer.next_size(remaining=400, in_flight=lambda: (600, 600)) == 10
    # only asked when the balance rule cuts: mid-run, the time-based size stands
    assert sizer.next_size(remaining=100_000, in_flight=lambda: 1 / 0) == 1000


def test_fair_share_ignores_the_items_in_flight_when_items_differ():
    """Items 100x dearer here and there: counting items in flight as equal would hand an
    idle worker big batches that may hold them, so the quarter rule stays."""
    sizer = _sized_at_1000([1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 9e-3, 1e-3])
    assert not sizer.items_look_alike
    assert sizer.next_size(remaining=400, in_flight=lambda: (0, 600)) == 100


def test_one_dear_item_among_cheap_ones_makes_items_differ():
    """Batch means can hide 5 items of 10 ms among 500 of 0.1 ms; the slowest item does not."""
    sizer = _sized_at_1000([1e-4] * 6)
    assert sizer.items_look_alike
    sizer.observe(1000, busy_seconds=0.1, slowest_item=0.5e-3)  # 5x the mean: preempted?
    assert sizer.items_look_alike
    sizer.observe(1000, busy_seconds=0.1, slowest_item=10e-3)
    assert not sizer.items_look_alike
    assert sizer.next_size(remaining=400, in_flight=lambda: (0, 600)) == 100


def test_the_first_batches_of_each_worker_do_not_count_as_spread():
    """A fresh worker's first items pay one-time costs: slow first batches, one per worker
    and then some, do not make alike items look different."""
    sizer = _sized_at_1000([9e-3, 8e-3, 7e-3, 6e-3, 1e-3, 1.2e-3])
    assert sizer.items_look_alike


def test_fixed_size_is_fixed():
    sizer = BatchSizer(workers=2, fixed=64)
    sizer.observe(64, busy_seconds=100.0, rss_start=1, rss_peak=2)
    assert sizer.next_size() == 64
    assert sizer.next_size(remaining=10) == 10
    # the time per item is still learnt: the dispatcher asks it whether items are short
    assert sizer.per_item_seconds == pytest.approx(100.0 / 64)


@given(
    st.lists(
        st.tuples(st.floats(0, 10), st.integers(0, 10**10), st.integers(0, 10**10)),
        max_size=50,
    ),
    st.integers(1, 5000),
    st.one_of(st.none(), st.integers(1, 10**10)),
)
def test_never_below_one_never_above_the_cap(observations, cap, max_rss):
    sizer = BatchSizer(workers=3, max_size=cap, max_rss=max_rss)
    for busy, start, peak in observations:
        n = sizer.next_size()
        assert 1 <= n <= cap
        sizer.observe(n, busy, start, peak)
    assert 1 <= sizer.next_size() <= cap


def _measured(per_item: float) -> BatchSizer:
    sizer = BatchSizer(workers=2, target_seconds=0.05)
    for _ in range(WARMUP_BATCHES + 2):
        sizer.observe(1000, busy_seconds=1000 * per_item)
    return sizer


def test_the_tail_shrinks_batches_but_not_tiny_items_below_2_ms_of_work():
    """At the tail, batches shrink to a fair share of what is left, so workers finish
    together; for items of a few µs, not below 2 ms of work, or the tail is round trips."""
    tiny = _measured(0.3e-6)  # 0.3 µs: 2 ms is ~6,666 items
    assert tiny.next_size(remaining=20_000) == int(TAIL_MIN_SECONDS / 0.3e-6)
    assert tiny.next_size(remaining=3_000) == 3_000  # never more than is left
    slow = _measured(0.3e-3)  # 0.3 ms items: the floor stays a hundredth of the size
    assert slow.next_size(remaining=20) == 5  # a fair share: 20 / (2 x 2 workers)
    assert slow.next_size(remaining=2) == 1


def _call_over(n: int, items=None):
    from poolrun.calls import Call
    from poolrun.options import make_options
    from poolrun.stats import Stats
    from poolrun.trace import Trace

    opts = make_options(workers=2)
    return Call(1, range(n) if items is None else items, opts, Stats("local", 2), Trace(0.0), n)


def test_tiny_items_are_never_at_the_tail():
    """At the tail, batches go to idle workers only, each after a round trip through the
    supervisor. Tail batches of tiny items keep 2 ms of work, so they may queue instead."""
    slow, tiny = _call_over(100), _call_over(100)
    slow.sizer.observe(1, busy_seconds=1e-3)
    tiny.sizer.observe(1, busy_seconds=1e-7)
    assert slow.at_tail and not slow.sizer.items_are_tiny
    assert tiny.sizer.items_are_tiny and not tiny.at_tail


@given(st.lists(st.integers(), max_size=30), st.integers(0, 30), st.integers(0, 30))
def test_a_source_slice_reads_as_the_copy_it_replaces(source, start, stop):
    from poolrun.batches import SourceSlice

    start, stop = sorted((min(start, len(source)), min(stop, len(source))))
    view, copy = SourceSlice(source, start, stop), source[start:stop]
    assert len(view) == len(copy) and list(view) == copy and view[:] == copy
    assert [view[i] for i in range(-len(copy), len(copy))] == copy + copy
    assert view[1:-1] == copy[1:-1] and view[::2] == copy[::2]
    with pytest.raises(IndexError):
        view[len(copy)]


def test_fresh_batches_of_a_list_input_are_not_copied():
    source = list(range(50))
    call = _call_over(50, source)
    batch = call.next_batch(iter(range(1, 9)), 0.0)
    assert batch.items.source is source and list(batch.items) == source[: len(batch.items)]


def test_a_batch_sent_pickled_keeps_the_items_it_carried():
    """Sent to a worker that did not inherit the input, a batch is copied as it is pickled:
    a piece of it run again after a fault gets those items, even if the list changed."""
    source = list(range(50))
    call = _call_over(50, source)
    batch = call.next_batch(iter(range(1, 9)), 0.0)
    call.encode(batch, token=None)
    source[0] = "changed"
    assert call.piece(batch, iter([99]), 0, 1).items == [0]
