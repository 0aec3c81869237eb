"""How workers start: the fork template (``start_method="auto"``) and its fallbacks.

Each case runs in a fresh interpreter: whether forking is safe depends on the whole process
(its threads, its loaded libraries), which a long pytest session does not control.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

import poolrun
from conftest import live_templates, wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

PRELUDE = textwrap.dedent(
    """
    import json, os, signal, sys, threading
    sys.path.insert(0, {tests!r})
    import poolrun

    def report(run, **extra):
        print(json.dumps({{"start": run.report.start_method, "values": run.values,
                          "deaths": run.report.worker_deaths,
                          "memory_kills": run.report.memory_kills, **extra}}))
    """
)


def run_script(
    *parts: str, tmp_path, timeout: float = 60, env: dict[str, str] | None = None
) -> list[dict]:
    """Run PRELUDE + parts in a fresh interpreter; its JSON lines, parsed."""
    script = PRELUDE.format(tests=os.path.dirname(__file__))
    script += "".join(textwrap.dedent(part) for part in parts)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_auto_forks_a_template_and_workers_inherit_what_cannot_be_pickled(tmp_path):
    (out,) = run_script(
        """
        lock = threading.Lock()  # cloudpickle refuses locks: only inheritance can ship this
        def fn(x):
            with lock:
                return x * 2
        report(poolrun.map(fn, range(200), workers=2))
        """,
        tmp_path=tmp_path,
    )
    assert out["start"].startswith("fork template")
    assert out["values"] == [x * 2 for x in range(200)]


def test_a_list_input_is_inherited_not_pickled_and_a_generator_is_pickled(tmp_path):
    (listed, generated, after_kill) = run_script(
        """
        locks = [threading.Lock() for _ in range(300)]  # items that cannot be pickled
        def held(lock):
            return lock.locked()
        report(poolrun.map(held, locks, workers=2))
        run = poolrun.map(held, (lock for lock in locks), workers=2)
        print(json.dumps({"errors": [r.error.message for r in run.errors]}))
        def slow(lock):  # the worker running item 50 dies once: its batch runs elsewhere
            import time
            if locks.index(lock) == 50 and not os.path.exists("died"):
                open("died", "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            return locks.index(lock)
        report(poolrun.map(slow, locks, workers=2, batch_size=10))
        """,
        tmp_path=tmp_path,
    )
    assert listed["values"] == [False] * 300  # a list: batches were slices of the inherited one
    errors = generated["errors"]  # a generator: its items must be pickled
    assert len(errors) == 300 and all("cannot be sent to a worker" in m for m in errors)
    assert after_kill["values"] == list(range(300)) and after_kill["deaths"] == 1


def test_output_buffered_before_the_call_is_written_once(tmp_path):
    """The template and the workers are forks: text still in the caller's stdout buffer
    when they are made must not be written again by each of them."""
    script = "import poolrun\nprint('header')\npoolrun.map(abs, list(range(20)), workers=2)\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "header\n"


def test_a_default_socket_timeout_does_not_reach_the_workers_pipes(tmp_path):
    """socket.setdefaulttimeout() makes new sockets time out (and non-blocking): an idle
    worker's read timed out, and a result larger than the socket buffer failed to send."""
    (out,) = run_script(
        """
        import socket, time
        socket.setdefaulttimeout(0.3)
        def big(seconds):
            time.sleep(seconds)
            return "x" * 4_000_000
        run = poolrun.map(big, [0.05, 1.0, 0.05, 0.05], workers=2, batch_size=1)
        sizes = [len(v) for v in run.values]
        print(json.dumps({"deaths": run.report.worker_deaths, "sizes": sizes}))
        """,
        tmp_path=tmp_path,
    )
    assert out["deaths"] == 0 and out["sizes"] == [4_000_000] * 4


def test_forkserver_by_name_still_pickles_the_function(tmp_path):
    (out,) = run_script(
        """
        def fn(x):
            return x + 1
        report(poolrun.map(fn, range(50), workers=2, start_method="forkserver"))
        """,
        tmp_path=tmp_path,
    )
    assert out["start"] == "forkserver (asked for by name)"
    assert out["values"] == list(range(1, 51))


def test_auto_falls_back_to_the_forkserver_while_another_thread_runs(tmp_path):
    (out,) = run_script(
        """
        stop = threading.Event()
        threading.Thread(target=stop.wait).start()
        try:
            report(poolrun.map(abs, range(-20, 20), workers=2))
        finally:
            stop.set()
        """,
        tmp_path=tmp_path,
    )
    assert out["start"].startswith("forkserver")
    assert "1 other thread running" in out["start"]
    assert out["values"] == [abs(x) for x in range(-20, 20)]


def test_auto_falls_back_to_the_forkserver_when_openmp_is_loaded(tmp_path):
    (out,) = run_script(
        """
        import ctypes
        ctypes.CDLL("libgomp.so.1")
        report(poolrun.map(abs, range(-20, 20), workers=2))
        """,
        tmp_path=tmp_path,
    )
    assert out["start"].startswith("forkserver")
    assert "OpenMP runtime (libgomp)" in out["start"]


def test_blas_is_limited_once_in_the_template_not_by_a_spinning_pool_in_each_worker(tmp_path):
    """OpenBLAS restarts its thread pool when it is told a thread count after a fork, and
    the restarted threads spin for ~0.1 s before they sleep. Limited in each worker, that
    cost every worker of a first call ~70 ms of CPU on a core it needed; limited once in
    the template, before it forks, the workers inherit the limit and no pool at all."""
    unpinned = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    (out,) = run_script(
        """
        import numpy
        from threadpoolctl import threadpool_info
        def fn(_):
            blas = sorted({pool["num_threads"] for pool in threadpool_info()})
            return len(os.listdir("/proc/self/task")), blas
        report(poolrun.map(fn, range(4), workers=2), env=os.environ.get("OPENBLAS_NUM_THREADS"))
        """,
        tmp_path=tmp_path,
        env=unpinned,
    )
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert out["start"].startswith("fork template")
    assert out["values"] == [[2, [share]]] * 4  # the worker's own thread and its watcher
    assert out["env"] is None  # the caller's own BLAS keeps its threads


# A function that SIGKILLs its own worker the first time it meets item 50 (a marker file
# remembers), and otherwise reads a table it captured, which cannot be pickled (a lock).
KILLS_ONCE = """
    table = list(range(0, 3000, 3))
    lock = threading.Lock()
    def fn(x):
        if x == 50 and not os.path.exists("killed"):
            open("killed", "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        with lock:
            return table[x]
"""


def test_a_worker_replaced_after_kill_9_still_has_the_captured_state(tmp_path):
    (out,) = run_script(
        KILLS_ONCE,
        "report(poolrun.map(fn, range(1000), workers=2, batch_size=20))\n",
        tmp_path=tmp_path,
    )
    assert out["start"].startswith("fork template")
    assert out["deaths"] >= 1
    assert out["values"] == list(range(0, 3000, 3))


def test_a_pool_made_before_threads_start_keeps_forking_from_its_template(tmp_path):
    (first, second) = run_script(
        KILLS_ONCE,
        """
        with poolrun.Pool(workers=2) as pool:
            report(pool.map(abs, range(-5, 5)))
            stop = threading.Event()
            threads = [threading.Thread(target=stop.wait) for _ in range(3)]
            for t in threads:
                t.start()
            try:  # fn is pickled for a Pool's later calls: no lock in this one
                lock = type("NoLock", (), {"__enter__": lambda s: s, "__exit__": lambda *a: 0})()
                report(pool.map(fn, range(1000), batch_size=20), threads=threading.active_count())
            finally:
                stop.set()
        """,
        tmp_path=tmp_path,
    )
    assert first["start"].startswith("fork template")
    assert second["threads"] == 4
    assert second["start"].startswith("fork template")  # fixed when the pool was made
    assert second["deaths"] >= 1  # and the replacement came from the template
    assert second["values"] == list(range(0, 3000, 3))


def test_workers_still_replace_after_the_template_is_killed(tmp_path):
    (out,) = run_script(
        KILLS_ONCE,
        """
        import psutil
        with poolrun.Pool(workers=2) as pool:
            pool.map(abs, range(4))
            template, = [p for p in psutil.Process().children() if p.name() == "poolrun-tmpl"]
            template.kill()
            template.wait(5)
            lock = type("NoLock", (), {"__enter__": lambda s: s, "__exit__": lambda *a: 0})()
            report(pool.map(fn, range(1000), batch_size=20))
        """,
        tmp_path=tmp_path,
    )
    assert out["deaths"] >= 1
    assert out["values"] == list(range(0, 3000, 3))


def test_a_captured_table_does_not_count_against_max_rss(tmp_path):
    (out,) = run_script(
        """
        import numpy as np
        table = np.random.default_rng(0).random(6_000_000)  # 48 MB, shared with the workers
        def fn(x):
            return float(table[x * 1000 : x * 1000 + 1000].sum())
        run = poolrun.map(fn, range(3000), workers=2, max_rss="100MB")
        peaks = list(run.report.peak_rss_bytes.values())
        report(run, peaks=peaks, expected=[float(table[x * 1000 : x * 1000 + 1000].sum())
                                           for x in range(3000)])
        """,
        tmp_path=tmp_path,
    )
    assert out["start"].startswith("fork template")
    assert out["memory_kills"] == 0 and out["deaths"] == 0
    assert out["values"] == out["expected"]
    assert all(0 < peak < 48_000_000 for peak in out["peaks"])


@pytest.mark.parametrize("how", ["sigterm", "sigkill", "exception"])
def test_no_template_or_worker_outlives_its_supervisor(tmp_path, how):
    script = PRELUDE.format(tests=os.path.dirname(__file__)) + textwrap.dedent(
        """
        from funcs import slow_square
        def fn(x):
            if sys.argv[1] == "exception" and x == 300:
                raise ValueError("bad item")  # with max_failures=0: RunAborted ends the script
            return slow_square(x)
        print("started", flush=True)
        poolrun.map(fn, range(100_000), workers=2, batch_size=1, max_failures=0)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, how], stdout=subprocess.PIPE, start_new_session=True
    )
    parent = psutil.Process(proc.pid)
    assert proc.stdout.readline().strip() == b"started"

    def family() -> list[psutil.Process]:
        templates = live_templates(parent)
        return [*templates, *(c for t in templates for c in t.children())]

    assert wait_until(lambda: len(family()) == 3, timeout=20)
    processes = family()
    if how == "sigterm":
        proc.send_signal(signal.SIGTERM)
    elif how == "sigkill":
        proc.kill()
    proc.wait(timeout=30)

    def gone(p: psutil.Process) -> bool:
        try:
            return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    assert wait_until(lambda: all(gone(p) for p in processes), timeout=10)


def test_start_method_names_are_validated():
    with pytest.raises(ValueError, match="start_method='teleport'; allowed: auto"):
        poolrun.map(abs, [1], start_method="teleport")
