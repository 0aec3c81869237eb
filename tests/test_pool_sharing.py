"""A Pool shared by threads and used for a long time: correct results, bounded memory, no
hangs, deadlines on start-up, and a close that waits for its workers."""

from __future__ import annotations

import gc
import itertools
import random
import signal
import threading
import time

import psutil
import pytest

import poolrun
from conftest import live_templates, live_workers
from funcs import slow_square, square


def _offset(k: int):
    """A fresh closure per call: each call's values tell which function made them."""
    return lambda x: x * 1000 + k


def _threads(target, n: int) -> list[BaseException]:
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # reported to the test, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return errors


def test_four_threads_six_rounds_of_map_on_one_pool_get_their_own_values():
    with poolrun.Pool(workers=2) as pool:

        def work(i: int) -> None:
            for r in range(6):
                k = 10 * i + r
                items = range(5000 + 37 * k)  # different lengths, different batchings
                assert pool.map(_offset(k), items).values == [x * 1000 + k for x in items]

        assert _threads(work, 4) == []


def test_threads_mixing_map_imap_and_failures_never_see_each_others_results():
    def picky(k):
        def fn(x):
            if x % 101 == 7:
                raise ValueError(f"{k}:{x}")
            return (k, x)

        return fn

    with poolrun.Pool(workers=2) as pool:

        def work(i: int) -> None:
            for r in range(3):
                k = 10 * i + r
                if r % 2:
                    results = list(pool.imap(picky(k), range(3000), ordered=False))
                else:
                    results = pool.map(picky(k), range(3000)).results
                assert sorted(r.index for r in results) == list(range(3000))
                for res in results:
                    if res.index % 101 == 7:
                        assert not res.ok and res.error.message == f"{k}:{res.index}"
                    else:
                        assert res.value == (k, res.index)

        assert _threads(work, 3) == []


def test_an_abandoned_imap_leaves_nothing_for_the_next_calls():
    with poolrun.Pool(workers=2) as pool:
        it = pool.imap(_offset(1), range(10_000), batch_size=50)
        assert next(it).value == 1
        assert pool.map(_offset(2), range(1000)).values == [x * 1000 + 2 for x in range(1000)]
        closed = pool.imap(_offset(3), range(10_000))
        next(closed)
        closed.close()  # closed explicitly
        del it  # and dropped
        gc.collect()
        for k in (4, 5):
            assert pool.map(_offset(k), range(3000)).values == [x * 1000 + k for x in range(3000)]
        assert list(pool.imap(_offset(6), range(10))) and True


def test_calls_share_the_workers_fairly():
    with poolrun.Pool(workers=2) as pool:
        done: dict[str, float] = {}
        start = time.monotonic()

        def work(i: int) -> None:
            pool.map(slow_square, range(60), batch_size=1)  # 0.6 s of work each
            done[i] = time.monotonic() - start

        assert _threads(work, 2) == []
        # shared round-robin, both end together, rather than one after the other
        assert abs(done[0] - done[1]) < 0.5 * max(done.values())


def _rss() -> int:
    return psutil.Process().memory_info().rss


def test_many_calls_with_fresh_closures_keep_the_supervisor_flat():
    with poolrun.Pool(workers=2) as pool:
        for k in range(100):  # warm-up: allocator pools, caches, code objects
            pool.map(_offset(k), range(20))
        gc.collect()
        before = _rss()
        for k in range(1500):
            assert pool.map(_offset(k), range(20)).values[3] == 3000 + k
        gc.collect()
        grown = _rss() - before
    print(f"supervisor RSS grew {grown / 2**20:.1f} MiB over 1,500 calls")
    assert grown < 25 * 2**20


@pytest.mark.slow
def test_600k_items_in_batches_of_4_keep_the_supervisor_to_the_values_size():
    gc.collect()
    before = _rss()
    run = poolrun.map(square, range(600_000), workers=2, batch_size=4)
    values = run.values
    gc.collect()
    grown = _rss() - before
    own = sum(map(__import__("sys").getsizeof, values)) + __import__("sys").getsizeof(values)
    print(f"grew {grown / 2**20:.1f} MiB for {own / 2**20:.1f} MiB of values")
    assert values[599_999] == 599_999**2
    assert grown <= own + 60 * 2**20
    assert run.report.trace_events_dropped > 0


def test_a_hanging_initializer_fails_with_setup_failed_within_the_start_timeout():
    started = time.monotonic()
    with pytest.raises(poolrun.SetupFailed, match="initializer after start_timeout=3s"):
        poolrun.map(abs, range(10), workers=2, initializer=time.sleep, initargs=(3600,),
                    start_timeout=3)  # fmt: skip
    assert time.monotonic() - started < 30


def test_a_function_that_hangs_while_loading_fails_its_call_only():
    class HangsOnLoad:
        def __reduce__(self):
            return (time.sleep, (3600,))

    blocker = HangsOnLoad()

    def fn(x, _blocker=blocker):
        return x

    with poolrun.Pool(workers=2, start_timeout=2) as pool:
        with pytest.raises(poolrun.SetupFailed, match="loading the function"):
            pool.map(fn, range(10))
        assert pool.map(abs, range(-3, 3)).values == [3, 2, 1, 0, 1, 2]


def test_close_returns_once_every_worker_and_the_template_have_exited():
    pool = poolrun.Pool(workers=2)
    pool.map(square, range(100))
    me = psutil.Process()
    assert len(live_workers(me)) == 2
    pool.close()
    assert live_workers(me) == [] and live_templates(me) == []


def test_a_call_still_running_when_the_pool_closes_fails_clearly():
    pool = poolrun.Pool(workers=2)
    it = pool.imap(slow_square, range(1000))
    next(it)
    pool.close()
    with pytest.raises(poolrun.PoolClosed):
        list(it)


@pytest.mark.parametrize(("seed", "kills"), [(3, 8), pytest.param(5, 25, marks=pytest.mark.slow)])
def test_random_sigkills_while_four_threads_share_the_pool_lose_nothing(seed, kills):
    stop, sent = threading.Event(), []

    def killer() -> None:
        rng = random.Random(seed)
        while not stop.is_set() and len(sent) < kills:
            stop.wait(rng.uniform(0.1, 0.25))
            victims = live_workers()
            if victims:
                try:
                    rng.choice(victims).send_signal(signal.SIGKILL)
                    sent.append(1)
                except psutil.NoSuchProcess:
                    pass

    with poolrun.Pool(workers=2) as pool:

        def work(i: int) -> None:
            items = range(150 * (i + 1))
            run = pool.map(slow_square, items)
            assert run.values == [x * x for x in items]

        chaos = threading.Thread(target=killer)
        chaos.start()
        try:
            errors = _threads(work, 4)
        finally:
            stop.set()
            chaos.join()
    assert errors == []
    assert len(sent) >= 5


def test_option_values_are_checked_the_same_way_everywhere():
    with pytest.raises(ValueError, match="less than an empty worker needs"):
        poolrun.map(abs, [1], max_rss=0.5)
    with pytest.raises(ValueError, match="less than an empty worker needs"):
        poolrun.map(abs, [1], max_rss="1KB")
    from poolrun.options import make_options

    for fraction, percent in ((1.0, "100%"), (0.05, "5%"), ("0.05", "5%")):
        same = make_options(max_failures=percent).max_failures
        assert make_options(max_failures=fraction).max_failures == same
    assert make_options(max_rss="1GiB").max_rss == 2**30
    assert make_options(max_rss="2TB").max_rss == 2 * 10**12


def test_ids_are_unique_across_calls():
    with poolrun.Pool(workers=2) as pool:
        batches = itertools.chain.from_iterable(
            {r.batch for r in pool.map(square, range(500), batch_size=10).results} for _ in range(3)
        )
        seen = list(batches)
        assert len(seen) == len(set(seen))
