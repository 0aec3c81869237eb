"""Fault tolerance with real crashes, real signals and real kills."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

import poolrun
from conftest import PeakWorkerRss, live_workers, wait_until
from funcs import (
    allocate_mb,
    exit_on,
    fail_on_three,
    flaky_until_third,
    hang_on,
    leak_2mb,
    segfault_on,
    sigkill_self_on,
    slow_square,
    square,
)


@pytest.mark.parametrize(
    ("make", "cause"),
    [
        (segfault_on, "worker-died: SIGSEGV"),
        (exit_on, "worker-died: exit 3"),
        (sigkill_self_on, "worker-died: SIGKILL"),
    ],
    ids=["segfault", "os._exit", "sigkill"],
)
def test_only_the_crashing_item_fails(make, cause):
    k = 37
    # a timeout makes every batch run item by item (no bulk runs), so deaths are exact
    run = poolrun.map(make(k), range(100), workers=2, batch_size=16, timeout=60)
    assert [r.index for r in run.errors] == [k]
    assert run.errors[0].error.cause == cause
    assert [r.value for r in run.results if r.ok] == [x for x in range(100) if x != k]
    # once in its batch, then alone until the evidence is enough (more for a SIGKILL, which
    # could have come from outside)
    assert run.report.worker_deaths == (4 if "SIGKILL" in cause else 2)


def test_a_crash_in_a_bulk_batch_is_found_by_running_the_batch_item_by_item():
    """Tiny items run in bulk, with no per-item record of which one is running: a crash
    there sends the batch again to run item by item, where the next crash names the item."""
    k = 30_000
    run = poolrun.map(segfault_on(k), range(40_000), workers=2)
    assert [r.index for r in run.errors] == [k]
    assert run.errors[0].error.cause == "worker-died: SIGSEGV"
    assert [r.value for r in run.results if r.ok] == [x for x in range(40_000) if x != k]
    # in bulk (no item named), in the same batch item by item, then alone
    assert run.report.worker_deaths == 3


@pytest.mark.parametrize(
    ("items", "max_kills", "seed"),
    [
        (600, 8, 7),
        pytest.param(3000, 30, 11, marks=pytest.mark.slow),
        pytest.param(3000, 30, 12, marks=pytest.mark.slow),
    ],
)
def test_chaos_kills_of_healthy_workers_lose_nothing(items, max_kills, seed):
    kills = []
    stop = threading.Event()

    def killer():
        rng = random.Random(seed)
        while not stop.is_set() and len(kills) < max_kills:
            stop.wait(rng.uniform(0.1, 0.25))
            victims = live_workers()
            if victims:
                victim = rng.choice(victims)
                try:
                    victim.send_signal(signal.SIGKILL)
                    kills.append(victim.pid)
                except psutil.NoSuchProcess:
                    pass

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        run = poolrun.map(slow_square, range(items), workers=2)
    finally:
        stop.set()
        thread.join()
    assert len(kills) >= 5
    assert [r.index for r in run.results] == list(range(items))
    assert run.values == [x * x for x in range(items)]
    assert run.report.worker_deaths >= 5


def test_timeout_fails_only_the_hanging_item_promptly():
    started = time.monotonic()
    run = poolrun.map(hang_on(5), range(40), workers=2, batch_size=8, timeout=0.5)
    elapsed = time.monotonic() - started
    assert [r.index for r in run.errors] == [5]
    assert run.errors[0].error.cause == "timeout"
    assert run.report.timeouts == 1
    assert elapsed < 5, elapsed


def test_retries_count_attempts(tmp_path):
    run = poolrun.map(
        flaky_until_third(str(tmp_path)), range(20), workers=2, retries=3, backoff=0.01
    )
    assert run.values == list(range(20))
    assert {r.attempts for r in run.results} == {3}
    assert run.report.retries == 40


def test_retries_exhausted_keep_the_final_error(tmp_path):
    run = poolrun.map(
        flaky_until_third(str(tmp_path)), range(4), workers=2, retries=1, backoff=0.01
    )
    assert len(run.errors) == 4
    assert all(r.attempts == 2 and r.error.type == "ConnectionError" for r in run.errors)


def test_retry_on_filters_exception_types():
    run = poolrun.map(fail_on_three, range(5), workers=2, retries=3, retry_on=KeyError)
    assert run.errors[0].attempts == 1


def test_leaking_function_is_recycled_under_the_limit():
    limit = 300_000_000
    with PeakWorkerRss() as rss:
        run = poolrun.map(leak_2mb, range(1500), workers=2, max_rss="300MB")
    assert run.values == list(range(1500))
    assert run.report.recycled > 0
    assert 0 < rss.peak < limit, rss.peak


def test_item_over_the_memory_limit_fails_alone():
    run = poolrun.map(allocate_mb(7, 400), range(20), workers=2, max_rss="250MB", batch_size=4)
    assert [r.index for r in run.errors] == [7]
    assert run.errors[0].error.cause == "memory-limit"
    assert run.report.memory_kills >= 1


def test_failure_budget_aborts_with_results_so_far():
    with pytest.raises(poolrun.RunAborted) as info:
        poolrun.map(
            fail_on_three, [3] * 50 + list(range(1000)), workers=2, batch_size=5, max_failures=10
        )
    partial = info.value.run
    assert partial.failed >= 11
    assert all(r.error.type == "ValueError" for r in partial.errors)


def test_initializer_failure_is_a_clear_error():
    def broken_init():
        raise RuntimeError("model file missing")

    with pytest.raises(poolrun.SetupFailed, match=r"initializer failed.*model file missing"):
        poolrun.map(square, range(10), workers=2, initializer=broken_init)


def test_initializer_runs_once_per_worker(tmp_path):
    def init(path):
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")

    marker = tmp_path / "inits"
    run = poolrun.map(
        square, range(200), workers=2, batch_size=10, initializer=init, initargs=(str(marker),)
    )
    assert run.ok
    assert len(marker.read_text().split()) == 2


CTRL_C_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    import poolrun
    from funcs import slow_square
    print("started", flush=True)
    poolrun.map(slow_square, range(100_000), workers=2)
    """
)


def _start_script_with_workers(stderr: int) -> tuple[subprocess.Popen, list[psutil.Process]]:
    """Run CTRL_C_SCRIPT in its own session; return it once both its workers are up."""
    script = CTRL_C_SCRIPT.format(tests=os.path.dirname(__file__))
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=stderr,
        start_new_session=True,
        # Ctrl-C as a terminal delivers it, even where this suite runs as a background job
        # of a non-interactive shell, which starts its commands with SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    parent = psutil.Process(proc.pid)
    assert proc.stdout.readline().strip() == b"started"
    assert wait_until(lambda: len(live_workers(parent)) == 2, timeout=20)
    return proc, live_workers(parent)


def test_ctrl_c_during_map_exits_quickly_without_orphans():
    proc, workers = _start_script_with_workers(subprocess.PIPE)
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # like Ctrl-C in a terminal: the whole group
    proc.wait(timeout=10)
    assert time.monotonic() - sent < 5
    assert b"KeyboardInterrupt" in proc.stderr.read()
    assert wait_until(
        lambda: not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers),
        timeout=5,
    )


def test_workers_exit_when_supervisor_is_killed():
    proc, workers = _start_script_with_workers(subprocess.DEVNULL)
    proc.kill()
    proc.wait(timeout=10)

    def gone(p):
        try:
            return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    assert wait_until(lambda: all(gone(w) for w in workers), timeout=5)


def test_code_piped_on_stdin_runs():
    script = "import poolrun\nprint(poolrun.map(lambda x: x + 1, range(5), workers=2).values)\n"
    done = subprocess.run(
        [sys.executable, "-"], input=script, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "[1, 2, 3, 4, 5]", done.stderr


MAIN_SCRIPT = textwrap.dedent(
    """
    import os
    import sys
    from dataclasses import dataclass

    import poolrun

    with open(sys.argv[1], "a") as marker:  # top-level code, not behind a __main__ guard
        marker.write(f"{os.getpid()}\\n")

    @dataclass
    class Point:
        x: int
        y: int

    def spread(p):
        return p.x - p.y

    if __name__ == "__main__":
        how = sys.argv[2]
        plain = poolrun.map(abs, range(-50, 50), workers=2, start_method=how)
        print("PLAIN", sum(plain.values))
        print("RUNS", len(open(sys.argv[1]).read().split()))
        run = poolrun.map(spread, [Point(i, -i) for i in range(20)], workers=2, start_method=how)
        print("POINTS", run.values[:3])
    """
)


@pytest.mark.parametrize("how", ["forkserver", "auto"])
def test_workers_import_the_main_script_only_when_they_need_it(tmp_path, how):
    script, marker = tmp_path / "script.py", tmp_path / "marker"
    script.write_text(MAIN_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(marker), how],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # plain data: the workers never ran the script's top-level code
    assert "PLAIN 2500" in done.stdout and "RUNS 1" in done.stdout
    # objects of a class defined in the script: forkserver workers imported it to unpickle
    # them; workers forked from the caller's template have it already and import nothing
    assert "POINTS [0, 2, 4]" in done.stdout
    imported = len(marker.read_text().split()) > 1
    assert imported == (how == "forkserver")


@pytest.mark.parametrize("workers", [2, 16])
def test_workers_that_cannot_start_fail_the_run_fast(workers):
    """16 workers that exit at once: the template may reap one before the supervisor has
    its pidfd, which the template therefore passes along with the pid."""

    def die_at_start():
        os._exit(4)  # no message, no traceback: the worker is simply gone

    started = time.monotonic()
    with pytest.raises(poolrun.SetupFailed, match="workers in a row died before running any"):
        poolrun.map(abs, range(10), workers=workers, initializer=die_at_start)
    assert time.monotonic() - started < 20
