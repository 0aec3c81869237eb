"""poolrun.Executor against real workers: the concurrent.futures contract, and faults that
fail one future instead of breaking the pool."""

from __future__ import annotations

import itertools
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, BrokenExecutor, as_completed, wait

import pytest

import poolrun
from conftest import wait_until
from dropin_funcs import (
    CustomError,
    add,
    failing_initializer,
    pid,
    raise_custom,
    raise_two_args,
    raise_unpicklable,
    record,
    scale,
    sleep_return,
    wait_for_file,
)
from funcs import allocate_mb, hang_on, segfault_on, square
from poolrun.executor import RemoteTraceback, TaskFailed


def test_wait_and_as_completed_with_200_futures():
    with poolrun.Executor(max_workers=2) as ex:
        futures = [ex.submit(square, i) for i in range(200)]
        done, not_done = wait(futures, timeout=60)
        assert not not_done and len(done) == 200
        assert [f.result() for f in futures] == [i * i for i in range(200)]
        again = {ex.submit(scale, i, factor=3): i for i in range(200)}
        seen = {again[f]: f.result() for f in as_completed(again, timeout=60)}
        assert seen == {i: 3 * i for i in range(200)}


def test_submissions_run_in_workers_and_share_batches():
    with poolrun.Executor(max_workers=2) as ex:
        pids = {f.result() for f in [ex.submit(pid) for _ in range(2000)]}
        report = ex.report()
    assert os.getpid() not in pids
    assert report.items == 2000
    assert report.batches < 1000  # many submissions travel in each batch


def test_a_long_submission_holds_no_other_behind_it(tmp_path):
    """Submissions wait in a busy worker's queue only once measured short: behind a long
    one they would wait while the other worker idles (joblib's 0.2-2 s batches, say)."""
    started, release = tmp_path / "started", tmp_path / "release"
    with poolrun.Executor(max_workers=2) as ex:
        blocked = ex.submit(wait_for_file, str(started), str(release))
        assert wait_until(started.exists)
        others = [ex.submit(sleep_return, 0.03) for _ in range(6)]
        try:  # all run on the other worker while the first still blocks its own
            assert [f.result(timeout=20) for f in others] == [0.03] * 6
            assert not blocked.done()
        finally:
            release.touch()
        assert blocked.result(timeout=60) == "released"


def test_map_over_two_iterables_and_chunks():
    with poolrun.Executor(max_workers=2) as ex:
        assert list(ex.map(add, range(100), range(100, 200))) == [100 + 2 * i for i in range(100)]
        assert list(ex.map(add, "abc", "xyz", chunksize=2)) == ["ax", "by", "cz"]
        assert list(ex.map(add, [], [])) == []


def test_map_is_lazy_and_bounded():
    """An endless input: map reads only ``buffersize`` ahead of what was consumed."""
    read = itertools.count()
    items = (next(read) for _ in itertools.count())
    with poolrun.Executor(max_workers=2) as ex:
        results = ex.map(square, items, buffersize=10)
        assert [next(results) for _ in range(50)] == [i * i for i in range(50)]
        assert next(read) <= 50 + 10 + 1
        results.close()


def test_map_raises_timeout_error():
    with poolrun.Executor(max_workers=1) as ex:
        started = time.monotonic()
        results = ex.map(sleep_return, [1.0, 0.0], timeout=0.1)
        with pytest.raises(TimeoutError):
            next(results)
        assert time.monotonic() - started < 0.9


def test_fn_exception_keeps_its_type_and_remote_traceback():
    with poolrun.Executor(max_workers=1) as ex:
        future = ex.submit(raise_custom, 5)
        with pytest.raises(CustomError, match="custom 5") as info:
            future.result()
        assert isinstance(info.value.__cause__, RemoteTraceback)
        assert "raise_custom" in str(info.value.__cause__)
        with pytest.raises(ValueError):
            ex.submit(int, "not a number").result()
        # an exception that cannot be rebuilt here still says what it was
        with pytest.raises(TaskFailed, match="and more") as info:
            ex.submit(raise_two_args, 1).result()
        assert info.value.error.type.endswith("NeedsTwoArgs") and info.value.cause == "exception"
        with pytest.raises(TaskFailed, match="holds a lock 2") as info:
            ex.submit(raise_unpicklable, 2).result()
        assert info.value.error.type == "ValueError" and "raise_unpicklable" in str(
            info.value.error.traceback
        )
        assert ex.submit(lambda x: x + 1, 1).result() == 2  # cloudpickled, like joblib's


def test_map_item_errors_carry_the_exception_itself():
    run = poolrun.map(raise_custom, [1, 2], workers=1)
    error = run.errors[0].error
    assert isinstance(error.exception(), CustomError) and str(error.exception()) == "custom 1"
    assert error.cause == "exception" and error.type.endswith("CustomError")
    assert "pickled" not in repr(error)  # the bytes stay out of reprs and reports


def test_segfault_fails_one_future_and_the_executor_stays_usable():
    crash = segfault_on(7)
    with poolrun.Executor(max_workers=2) as ex:
        futures = [ex.submit(crash, i) for i in range(20)]
        wait(futures, timeout=60)
        for i, future in enumerate(futures):
            if i == 7:
                error = future.exception()
                assert isinstance(error, TaskFailed) and not isinstance(error, BrokenExecutor)
                assert error.cause == "worker-died: SIGSEGV"
            else:
                assert future.result() == i
        assert ex.submit(square, 12).result(timeout=30) == 144


def test_timeout_fails_that_future_alone():
    with poolrun.Executor(max_workers=2, timeout=0.5) as ex:
        futures = [ex.submit(hang_on(3), i) for i in range(6)]
        wait(futures, timeout=30, return_when=FIRST_EXCEPTION)
        assert futures[3].exception(timeout=30).cause == "timeout"
        assert [f.result() for i, f in enumerate(futures) if i != 3] == [0, 1, 2, 4, 5]


def test_memory_kill_fails_that_future_alone():
    with poolrun.Executor(max_workers=2, max_rss="250MB") as ex:
        futures = [ex.submit(allocate_mb(4, 400), i) for i in range(8)]
        error = futures[4].exception(timeout=60)
        assert isinstance(error, TaskFailed) and error.cause == "memory-limit"
        assert [f.result() for i, f in enumerate(futures) if i != 4] == [0, 1, 2, 3, 5, 6, 7]


def test_shutdown_cancel_futures_with_500_pending(tmp_path):
    started, release, ran = tmp_path / "started", tmp_path / "release", tmp_path / "ran"
    ex = poolrun.Executor(max_workers=1)
    blocker = ex.submit(wait_for_file, str(started), str(release))
    assert wait_until(started.exists, timeout=30)
    pending = [ex.submit(record, str(ran), i) for i in range(500)]
    ex.shutdown(wait=False, cancel_futures=True)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)
    release.touch()
    ex.shutdown(wait=True)
    assert blocker.result() == "released"
    assert all(f.done() for f in pending)
    cancelled = [i for i, f in enumerate(pending) if f.cancelled()]
    ran_ok = {i for i, f in enumerate(pending) if not f.cancelled() and f.result() == i}
    assert len(cancelled) >= 490  # only what a batch had already taken still ran
    recorded = {int(line) for line in ran.read_text().split()} if ran.exists() else set()
    assert recorded == ran_ok  # a cancelled future never ran


def test_shutdown_waits_for_pending_work_and_callbacks_run():
    seen = []
    lock = threading.Lock()

    def remember(future):
        with lock:
            seen.append(future.result())

    ex = poolrun.Executor(max_workers=2)
    for i in range(50):
        ex.submit(square, i).add_done_callback(remember)
    ex.shutdown(wait=True)
    assert sorted(seen) == sorted(i * i for i in range(50))
    ex.shutdown()  # twice is fine


def test_bad_arguments_fail_with_one_line():
    with pytest.raises(TypeError, match="max_workers or workers"):
        poolrun.Executor(max_workers=2, workers=2)
    with pytest.raises(ValueError, match="workers must be"):
        poolrun.Executor(max_workers=0)
    with pytest.raises(TypeError, match="unknown option"):
        poolrun.Executor(max_workers=1, colour="red")
    with poolrun.Executor(max_workers=1) as ex, pytest.raises(ValueError, match="chunksize"):
        ex.map(square, [1], chunksize=0)


def test_a_broken_pool_fails_every_future_and_says_why():
    ex = poolrun.Executor(max_workers=1, initializer=failing_initializer)
    future = ex.submit(square, 2)
    with pytest.raises(poolrun.SetupFailed):
        future.result(timeout=60)
    with pytest.raises(RuntimeError, match="broken"):
        ex.submit(square, 3)
    ex.shutdown()


def test_threads_submit_to_one_executor():
    with poolrun.Executor(max_workers=2) as ex:
        results: dict[int, list[int]] = {}

        def client(k: int) -> None:
            futures = [ex.submit(scale, i, factor=k) for i in range(300)]
            results[k] = [f.result(timeout=60) for f in futures]

        threads = [threading.Thread(target=client, args=(k,)) for k in range(1, 5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == {k: [k * i for i in range(300)] for k in range(1, 5)}
