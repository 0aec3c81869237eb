"""The pure parts of the durable stores: keys by engine index, and segments cut by key."""

from __future__ import annotations

from array import array

from poolrun.durable.layout import Keys, piece, runs
from poolrun.results import ItemError, Segment


def test_keys_are_kept_until_their_segment_is_committed_in_any_order():
    keys = Keys(tag_width=2)
    for k in range(10):
        keys.add(100 + k, bytes([k, k]))
    assert keys.get(4, 3) == (array("q", [104, 105, 106]), bytes([4, 4, 5, 5, 6, 6]))
    keys.forget(4, 3)  # done out of order: nothing can be dropped yet
    assert keys.base == 0 and len(keys.keys) == 10
    keys.forget(0, 4)
    assert keys.base == 7 and list(keys.keys) == [107, 108, 109]
    assert keys.get(8, 2)[0] == array("q", [108, 109])


def test_runs_split_where_keys_do_not_follow_on():
    assert runs(array("q", [5, 6, 7])) == [(0, 3)]
    assert runs(array("q", [1, 3, 2, 4])) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert runs(array("q", [0, 1, 5, 6, 9])) == [(0, 2), (2, 4), (4, 5)]
    assert runs(array("q")) == []


def test_piece_keeps_values_errors_and_times_at_their_new_positions():
    segment = Segment(0, 4)
    for pos in range(4):
        error = ItemError("ValueError", "no") if pos == 2 else None
        segment.fill_one(pos, pos * 10, pos / 10, 1, 9, error)
    part = piece(segment, 1, 4, 50)
    assert [(r.index, r.ok, r.value, r.duration) for r in part.items()] == [
        (50, True, 10, 0.1), (51, False, None, 0.2), (52, True, 30, 0.3)
    ]  # fmt: skip
    assert segment.start == 0  # a piece of it is a copy
    assert piece(segment, 0, 4, 7) is segment and segment.start == 7  # the whole: moved
