"""``checkpoint=``: a map killed with ``kill -9`` resumes where its commits end; the input
and the function are checked; failed items run again unless ``retry_failed=False``."""

from __future__ import annotations

import pytest

import poolrun
from durable_funcs import fails_while_flagged, logged_fail_on_seven, logged_square, logging_to
from durable_helpers import finish, kill_when_logged, lines, start

N = 3000
WORKERS, INFLIGHT, BATCH = 2, 2, 10
SCRIPT = f"""
import sys
import poolrun
from durable_funcs import logged_square
run = poolrun.map(logged_square, range({N}), workers={WORKERS}, inflight={INFLIGHT},
                  batch_size={BATCH}, checkpoint=sys.argv[1])
assert run.values == [x * x for x in range({N})], "wrong values"
print(run.report.resumed, run.report.items)
"""


def test_killed_map_resumes_without_redoing_committed_items(tmp_path):
    path = str(tmp_path / "job.sqlite")
    first_log = tmp_path / "first.log"
    kill_when_logged(start(SCRIPT, first_log, path), first_log, 1200)
    ran_before_kill = set(map(int, lines(first_log)))
    assert 1200 <= len(ran_before_kill) < N

    second_log = tmp_path / "second.log"
    resumed, items = map(int, finish(start(SCRIPT, second_log, path)).split())
    rerun = list(map(int, lines(second_log)))
    assert items == N
    assert resumed + len(rerun) == N  # every item either read back or run again, once
    assert len(set(rerun)) == len(rerun)
    assert set(range(N)) - ran_before_kill <= set(rerun)  # what never ran, ran now
    in_flight = WORKERS * INFLIGHT * BATCH  # the most items sent and not yet committed
    assert len(set(rerun) & ran_before_kill) <= in_flight

    third_log = tmp_path / "third.log"
    resumed, items = map(int, finish(start(SCRIPT, third_log, path)).split())
    assert (resumed, items) == (N, N)
    assert lines(third_log) == []  # a third run computes nothing

    changed = list(range(N))
    changed[1234] = -1
    with pytest.raises(ValueError, match="item 1234 differs"):
        poolrun.map(logged_square, changed, workers=1, checkpoint=path)


def test_same_run_twice_gives_the_same_results_and_report(tmp_path):
    log_opts = logging_to(str(tmp_path / "log"))
    path = tmp_path / "c.sqlite"
    first = poolrun.map(logged_square, range(200), workers=2, checkpoint=path, **log_opts)
    again = poolrun.map(logged_square, iter(range(200)), workers=2, checkpoint=path, **log_opts)
    assert again.values == first.values == [x * x for x in range(200)]
    assert [r.index for r in again.results] == list(range(200))
    assert (first.report.resumed, again.report.resumed, again.report.items) == (0, 200, 200)
    assert "resumed" in str(again.report)
    assert len(lines(tmp_path / "log")) == 200


def test_failed_items_run_again_unless_retry_failed_is_false(tmp_path):
    log = tmp_path / "log"
    log_opts = logging_to(str(log))
    path = tmp_path / "c.sqlite"
    items = list(range(40))
    first = poolrun.map(
        logged_fail_on_seven, items, workers=2, batch_size=6, checkpoint=path, **log_opts
    )
    assert [r.index for r in first.errors] == [7, 17, 27, 37]

    kept = poolrun.map(
        logged_fail_on_seven, items, workers=2, checkpoint=path, retry_failed=False, **log_opts
    )
    assert len(lines(log)) == 40  # nothing ran
    assert [(r.index, r.error.message) for r in kept.errors] == [
        (7, "seven: 7"), (17, "seven: 17"), (27, "seven: 27"), (37, "seven: 37")
    ]  # fmt: skip
    assert (kept.report.resumed, kept.report.failed) == (40, 4)

    again = poolrun.map(logged_fail_on_seven, items, workers=2, checkpoint=path, **log_opts)
    assert sorted(map(int, lines(log)[40:])) == [7, 17, 27, 37]  # only the failed ones
    assert [r.index for r in again.errors] == [7, 17, 27, 37]
    ok = [r.value for r in again.results if r.ok]
    assert ok == [x * x for x in items if x % 10 != 7]


def test_failed_item_that_succeeds_on_rerun_is_stored(tmp_path):
    log = tmp_path / "log"
    log_opts = logging_to(str(log))
    path = tmp_path / "c.sqlite"
    items = list(range(12))
    buggy = logging_to(log, fail=True)
    assert poolrun.map(fails_while_flagged, items, workers=2, checkpoint=path, **buggy).failed == 1
    # the bug is fixed: the same function (by name) now succeeds
    fixed = poolrun.map(fails_while_flagged, items, workers=2, checkpoint=path, **log_opts)
    assert fixed.values == [x * x for x in items]
    assert lines(log)[12:] == ["7"]
    again = poolrun.map(fails_while_flagged, items, workers=2, checkpoint=path, **log_opts)
    assert again.values == [x * x for x in items]
    assert (again.report.resumed, len(lines(log))) == (12, 13)


def test_imap_unordered_with_checkpoint_yields_every_item_once(tmp_path):
    log_opts = logging_to(str(tmp_path / "log"))
    path = tmp_path / "c.sqlite"
    poolrun.map(
        logged_square, range(0, 300, 2), workers=2, checkpoint=tmp_path / "x.sqlite", **log_opts
    )
    first = list(poolrun.imap(logged_square, range(100), workers=2, checkpoint=path, **log_opts))
    again = list(
        poolrun.imap(
            logged_square, range(100), workers=2, checkpoint=path, ordered=False, **log_opts
        )
    )
    assert sorted((r.index, r.value) for r in again) == [(r.index, r.value) for r in first]


def test_pool_and_decorator_take_checkpoint(tmp_path):
    log_opts = logging_to(str(tmp_path / "log"))
    task = poolrun.task(logged_square, workers=1, checkpoint=str(tmp_path / "t.sqlite"), **log_opts)
    assert task.map(range(5)).values == [0, 1, 4, 9, 16]
    assert task.map(range(5)).report.resumed == 5
    with poolrun.Pool(workers=2, **log_opts) as pool:
        path = tmp_path / "p.sqlite"
        assert pool.map(logged_square, range(50), checkpoint=path).values[-1] == 49 * 49
        assert pool.map(logged_square, range(50), checkpoint=path).report.resumed == 50
    assert len(lines(tmp_path / "log")) == 55


def test_different_function_or_length_is_refused(tmp_path):
    log_opts = logging_to(str(tmp_path / "log"))
    path = tmp_path / "c.sqlite"
    poolrun.map(logged_square, range(30), workers=1, checkpoint=path, **log_opts)
    with pytest.raises(ValueError, match="holds results of durable_funcs:logged_square"):
        poolrun.map(logged_fail_on_seven, range(30), workers=1, checkpoint=path, **log_opts)
    with pytest.raises(ValueError, match="from item 20 on"):
        poolrun.map(logged_square, range(20), workers=1, checkpoint=path, **log_opts)
    with pytest.raises(ValueError, match="ended at item 20"):
        poolrun.map(logged_square, iter(range(20)), workers=1, checkpoint=path, **log_opts)


def test_not_a_checkpoint_file_is_refused(tmp_path):
    queue = tmp_path / "q.sqlite"
    poolrun.Queue(queue).close()
    with pytest.raises(ValueError, match="is not a poolrun checkpoint: it is a poolrun queue"):
        poolrun.map(logged_square, range(3), workers=1, checkpoint=queue)
    junk = tmp_path / "junk"
    junk.write_text("not a database at all " * 100)
    with pytest.raises(ValueError, match="is not a poolrun checkpoint"):
        poolrun.map(logged_square, range(3), workers=1, checkpoint=junk)
    with pytest.raises(TypeError, match="checkpoint must be a file path"):
        poolrun.map(logged_square, range(3), checkpoint=3)
