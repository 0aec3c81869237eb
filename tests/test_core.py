"""The engine against a plain serial loop, with real worker processes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import poolrun
import poolrun.options
from conftest import PeakWorkerRss, live_workers
from funcs import describe, eight_mb_array, fail_on_thousands, fail_on_three, identity, square


@pytest.fixture
def pool():
    with poolrun.Pool(workers=2) as p:
        yield p


values = st.one_of(
    st.none(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=4),
    st.lists(st.integers(), max_size=5),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(items=st.lists(values, max_size=200), batch=st.sampled_from(["auto", 1, 3, 64]))
def test_results_equal_serial_loop(pool, items, batch):
    run = pool.map(describe, items, batch_size=batch)
    assert run.values == [describe(x) for x in items]
    assert [r.index for r in run.results] == list(range(len(items)))


@pytest.mark.parametrize(
    "make",
    [
        lambda: [],
        lambda: [7],
        lambda: (i for i in range(1000)),
        lambda: [{"id": i, "name": str(i)} for i in range(300)],
        lambda: [np.arange(i, i + 10) for i in range(50)],
        lambda: [None] * 20,
        lambda: ["x" * 1_000_000 for _ in range(5)],
    ],
    ids=["empty", "one", "generator", "dicts", "numpy", "none", "large"],
)
def test_input_shapes(pool, make):
    expected = [describe(x) for x in make()]
    assert pool.map(describe, make()).values == expected


def test_numpy_results_come_back_writable_and_aligned(pool):
    """A numpy array offers its data to the pickler as an out-of-band buffer; only the
    command line's output blocks may travel so, or arrays would come back as read-only,
    unaligned views of the received message."""
    for arrays in (pool.map(np.ones, [3, 1000]).values, poolrun.map(np.ones, [5]).values):
        for array in arrays:
            assert array.flags.writeable and array.flags.aligned
            array += 1
            assert (array == 2).all()


def test_lambdas_closures_and_local_functions():
    offset = 10

    def local(x):
        return x + offset

    assert poolrun.map(local, range(20), workers=2).values == [x + 10 for x in range(20)]
    assert poolrun.map(lambda x: x * 3, range(5), workers=2).values == [0, 3, 6, 9, 12]


def test_errors_stay_per_item_and_point_into_user_code():
    run = poolrun.map(fail_on_three, range(10), workers=2, batch_size=4)
    assert [r.index for r in run.errors] == [3]
    err = run.errors[0].error
    assert err.type == "ValueError" and err.message == "bad item 3" and err.cause == "exception"
    assert "funcs.py" in err.traceback and "fail_on_three" in err.traceback
    assert "poolrun/worker.py" not in err.traceback
    assert [r.value for r in run.results if r.ok] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    with pytest.raises(
        poolrun.ItemsFailed, match=r"1 of 10 items failed; first: item 3: ValueError"
    ):
        _ = run.values


def test_errors_of_tiny_items_run_in_bulk_stay_per_item():
    """Tiny items run in bulk (``list.extend(map(...))``, no ``try`` per item): an item's
    exception must still be that item's error, and its neighbours' values all kept."""
    n = 60_000
    run = poolrun.map(fail_on_thousands, range(n), workers=2)
    assert [r.index for r in run.errors] == list(range(999, n, 1000))
    assert all(r.error.message == f"bad item {r.index}" for r in run.errors)
    assert "fail_on_thousands" in run.errors[-1].error.traceback
    assert "poolrun/worker.py" not in run.errors[-1].error.traceback
    assert [r.value for r in run.results if r.ok] == [x for x in range(n) if x % 1000 != 999]


def test_item_result_fields():
    run = poolrun.map(square, range(50), workers=2, batch_size=10)
    results = run.results
    assert {r.batch for r in results} and all(r.attempts == 1 for r in results)
    assert all(r.worker is not None and r.duration >= 0 for r in results)
    assert len({r.batch for r in results}) == 5


def test_unordered_returns_every_item_once():
    got = list(poolrun.imap(square, range(500), workers=2, ordered=False, batch_size=7))
    assert sorted(r.index for r in got) == list(range(500))
    assert all(r.value == r.index**2 for r in got)


def test_imap_is_lazy_and_bounded():
    pulled = itertools.count()

    def source():
        for i in range(10_000_000):
            next(pulled)
            yield i

    stream = poolrun.imap(identity, source(), workers=2)
    got = [r.value for r in itertools.islice(stream, 1000)]
    stream.close()
    assert got == list(range(1000))
    # read-ahead is bounded by the reorder window (segments) times the largest batch, not by
    # the input: 10 M items offered, at most ~1 M (and in practice far fewer) pulled
    opts = poolrun.options.make_options(workers=2)
    window = max(8, 4 * opts.workers * opts.inflight) + opts.workers * opts.inflight
    assert next(pulled) <= window * opts.max_batch_size < 10_000_000 // 5


def test_decorator_keeps_plain_call_and_maps():
    @poolrun.task(workers=2, batch_size=5)
    def double(x):
        return 2 * x

    assert double(4) == 8
    assert double.map(range(10)).values == [2 * x for x in range(10)]
    assert [r.value for r in double.imap(range(3))] == [0, 2, 4]


def test_pool_reuses_warm_workers():
    with poolrun.Pool(workers=2) as p:
        first = {r.worker for r in p.map(square, range(100), batch_size=10).results}
        second = {r.worker for r in p.map(describe, range(100), batch_size=10).results}
        assert first == second
    assert not live_workers()


def test_report_and_trace(tmp_path):
    run = poolrun.map(square, range(2000), workers=2)
    rep = run.report
    assert rep.items == 2000 and rep.succeeded == 2000 and rep.failed == 0
    assert rep.batches >= 2 and rep.batch_size["first"] == 1 and rep.batch_size["max"] > 1
    assert 0 <= rep.overhead_pct <= 100 and rep.items_per_s > 0
    assert set(rep.busy_pct) == set(rep.peak_rss_bytes) and all(rep.peak_rss_bytes.values())
    assert rep.item_time_s["p50"] <= rep.item_time_s["p99"]
    assert "throughput" in str(rep)
    rep.save(tmp_path / "r.json")
    import json

    assert json.loads((tmp_path / "r.json").read_text())["items"] == 2000
    run.trace.save(tmp_path / "t.json")
    events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    batches = [e for e in events if e.get("cat") == "batch"]
    assert len(batches) == rep.batches
    assert sum(e["args"]["size"] for e in batches) == 2000
    assert all(e["ph"] == "X" and e["dur"] >= 0 for e in batches)


def test_memory_limit_keeps_worker_rss_under_it():
    limit = 400_000_000
    with PeakWorkerRss() as rss:
        run = poolrun.map(eight_mb_array, range(200), workers=2, max_rss="400MB")
    assert run.ok
    assert [float(v[0]) for v in run.values] == [float(i) for i in range(200)]
    assert 0 < rss.peak < limit, rss.peak


def test_no_orphans_after_exception_in_caller():
    with pytest.raises(RuntimeError, match="caller broke"):
        for r in poolrun.imap(square, range(10_000), workers=2):
            if r.index == 50:
                raise RuntimeError("caller broke")
    assert not live_workers()


def test_pool_close_leaves_no_processes():
    p = poolrun.Pool(workers=2)
    p.map(square, range(10))
    assert len(live_workers()) == 2
    p.close()
    assert not live_workers()
    with pytest.raises(ValueError, match="closed"):
        p.map(square, range(3))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"workers": 0}, ValueError, "workers"),
        ({"workers": "2"}, TypeError, "workers"),
        ({"batch_size": "big"}, TypeError, "batch_size.*'auto'"),
        ({"max_rss": "lots"}, ValueError, "max_rss='lots'"),
        ({"timeout": -1}, ValueError, "timeout"),
        ({"retries": -1}, ValueError, "retries"),
        ({"start_method": "teleport"}, ValueError, "start_method.*forkserver"),
        ({"backend": "ray"}, ValueError, "backend.*'dask'"),
        ({"colour": "red"}, TypeError, "unknown option.*colour"),
        ({"retry_on": 3}, TypeError, "retry_on"),
        ({"max_failures": "ten"}, ValueError, "max_failures"),
    ],
)
def test_bad_options_name_the_option(kwargs, error, match):
    with pytest.raises(error, match=match):
        poolrun.map(square, [1], **kwargs)


def test_sizes_parse():
    from poolrun.options import parse_size

    assert parse_size("1GB") == 10**9
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size(1000) == 1000


def test_public_names_and_lazy_package():
    import subprocess
    import sys

    assert sorted(poolrun.__all__) == sorted(n for n in dir(poolrun) if n in poolrun.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = poolrun.nope
    # a worker imports poolrun.worker, the item loops, the slot layout, the pipe framing and
    # its tuning only: no supervisor side
    code = "import sys, poolrun.worker; print(sorted(m for m in sys.modules if 'poolrun' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert out.strip() == str(
        [
            "poolrun",
            "poolrun.backends",
            "poolrun.backends.wire",
            "poolrun.items",
            "poolrun.slot",
            "poolrun.tuning",
            "poolrun.worker",
        ]
    )


def test_pool_is_clean_after_a_call_that_ended_early():
    with poolrun.Pool(workers=2) as p:
        stream = p.imap(square, range(100_000), batch_size=50)
        assert [r.value for r in itertools.islice(stream, 10)] == [x * x for x in range(10)]
        stream.close()  # batches were still in flight on both workers
        assert p.map(describe, range(500), batch_size=20).values == list(range(500))
        assert len(live_workers()) == 2
    assert not live_workers()
