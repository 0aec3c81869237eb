"""``poolrun.Queue``: priorities, stored failures, two drains at once, a drain killed with
``kill -9`` and resumed, clear errors."""

from __future__ import annotations

import os
import threading

import pytest

import poolrun
from durable_funcs import logged_fail_on_seven, logged_square, logging_to
from durable_helpers import finish, kill_when_logged, lines, start
from poolrun.durable.queue import UnpicklableItem

DRAIN = """
import sys
import poolrun
from durable_funcs import logged_square
run = poolrun.Queue(sys.argv[1]).drain(logged_square, workers=1, batch_size=int(sys.argv[2]))
print(len(run))
"""


def test_higher_priority_runs_first_fifo_within_a_priority(tmp_path):
    log_opts = logging_to(str(tmp_path / "log"))
    queue = poolrun.Queue(tmp_path / "q.sqlite")
    low = queue.put_many(range(20))
    high = [queue.put(100 + i, priority=9) for i in range(10)]
    run = queue.drain(logged_square, workers=1, batch_size=1, **log_opts)
    order = [r.index for r in sorted(run.results, key=lambda r: r.batch)]
    assert order == high + low
    assert [int(x) for x in lines(tmp_path / "log")] == [*range(100, 110), *range(20)]
    assert [r.index for r in run.results] == sorted(low + high)  # the Run: by job id
    assert dict(queue.results())[high[0]] == 100 * 100
    assert queue.status() == {"pending": 0, "running": 0, "done": 30, "failed": 0}


def test_failures_are_kept_and_seen_from_another_queue_object(tmp_path):
    log_opts = logging_to(str(tmp_path / "log"))
    path = tmp_path / "q.sqlite"
    ids = poolrun.Queue(path).put_many(range(30))
    run = poolrun.Queue(path).drain(
        logged_fail_on_seven, workers=2, retries=1, backoff=0, **log_opts
    )
    assert run.failed == 3
    other = poolrun.Queue(path)
    failed = other.failed()
    assert [r.index for r in failed] == [ids[7], ids[17], ids[27]]
    assert failed[0].error.type == "ValueError" and failed[0].error.message == "seven: 7"
    assert failed[0].attempts == 2
    job = other.get(ids[17])
    assert (job.state, job.item, job.ok, job.error.message) == ("failed", 17, False, "seven: 17")
    assert other.get(ids[3]).value == 9
    assert other.status() == {"pending": 0, "running": 0, "done": 27, "failed": 3}
    with pytest.raises(KeyError, match="no job 999"):
        other.get(999)


def test_two_drains_at_once_run_each_job_exactly_once(tmp_path):
    path = str(tmp_path / "q.sqlite")
    poolrun.Queue(path).put_many(range(2000))
    log = tmp_path / "log"
    drains = [start(DRAIN, log, path, "4") for _ in range(2)]
    counts = [int(finish(proc)) for proc in drains]
    assert sum(counts) == 2000 and min(counts) > 0  # both drains ran jobs
    assert sorted(map(int, lines(log))) == list(range(2000))  # each job once
    queue = poolrun.Queue(path)
    assert queue.status() == {"pending": 0, "running": 0, "done": 2000, "failed": 0}
    assert [v for _, v in queue.results()] == [x * x for x in range(2000)]


def test_drain_killed_with_kill_9_then_resumed_loses_nothing(tmp_path):
    path = str(tmp_path / "q.sqlite")
    queue = poolrun.Queue(path)
    ids = queue.put_many(range(1500))
    log = tmp_path / "log"
    kill_when_logged(start(DRAIN, log, path, "8"), log, 400)
    status = queue.status()
    assert status["running"] > 0 and status["done"] >= 300  # marked, and committed
    log_opts = logging_to(str(log))
    run = queue.drain(logged_square, workers=2, **log_opts)
    assert len(run) == 1500 - status["done"] - status["failed"]
    assert queue.status() == {"pending": 0, "running": 0, "done": 1500, "failed": 0}
    assert dict(queue.results()) == {job: x * x for job, x in zip(ids, range(1500), strict=True)}


def test_a_drain_gives_back_its_claims_when_it_stops(tmp_path):
    log_opts = logging_to(str(tmp_path / "log"))
    queue = poolrun.Queue(tmp_path / "q.sqlite")
    queue.put_many(range(200))
    with pytest.raises(poolrun.RunAborted):
        queue.drain(logged_fail_on_seven, workers=1, batch_size=5, max_failures=0, **log_opts)
    status = queue.status()
    assert status["running"] == 0 and status["failed"] == 1 and status["pending"] > 0
    queue.drain(logged_square, workers=1, **log_opts)
    assert queue.status()["pending"] == 0


def test_put_many_is_one_fast_transaction_and_puts_from_threads_interleave(tmp_path):
    queue = poolrun.Queue(tmp_path / "q.sqlite")
    ids = queue.put_many(range(100_000))
    assert ids == list(range(1, 100_001))
    found = []

    def put() -> None:
        mine = poolrun.Queue(queue.path)
        found.extend(mine.put_many(range(100)))

    threads = [threading.Thread(target=put) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(found) == list(range(100_001, 100_401))
    assert queue.status()["pending"] == 100_400


def test_clear_errors(tmp_path):
    queue = poolrun.Queue(tmp_path / "q.sqlite")
    with pytest.raises(
        UnpicklableItem, match=r"item 1 \(<unlocked .*\) cannot be pickled.*_thread.lock"
    ):
        queue.put_many([1, threading.Lock(), 3])
    assert queue.status()["pending"] == 0  # all or none
    with pytest.raises(TypeError, match="priority must be an int"):
        queue.put(1, priority="high")
    junk = tmp_path / "junk.txt"
    junk.write_text("hello " * 1000)
    with pytest.raises(ValueError, match="is not a poolrun queue"):
        poolrun.Queue(junk)
    with pytest.raises(ValueError, match="checkpoint= does not apply"):
        queue.drain(logged_square, checkpoint=tmp_path / "c.sqlite")


def test_locked_beyond_the_timeout_is_a_clear_error(tmp_path):
    import sqlite3

    path = tmp_path / "q.sqlite"
    poolrun.Queue(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process would hold it the same way
    try:
        queue = poolrun.Queue(path, timeout=0.2)
        with pytest.raises(poolrun.DatabaseLocked, match=r"stayed locked .* more than 0.2s"):
            queue.put(1)
        assert isinstance(poolrun.DatabaseLocked("x"), TimeoutError)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert os.path.exists(path)
