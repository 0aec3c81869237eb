"""backend="dask": the same results as the local backend, and the same fault guarantees.

Most tests share one ``LocalCluster`` on 127.0.0.1 that the test can see into (worker pids,
kills) and pass its address as ``scheduler=``; one test lets poolrun start and close its
own cluster, and one uses a cluster made of ``dask scheduler`` and ``dask worker``
subprocesses, as on real machines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

distributed = pytest.importorskip("distributed")

import poolrun  # noqa: E402
from conftest import wait_until  # noqa: E402
from funcs import (  # noqa: E402
    allocate_mb,
    describe,
    fail_on_three,
    hang_on,
    sigkill_self_on,
    slow_square,
    square,
)
from poolrun.backends import dask as dask_backend  # noqa: E402
from poolrun.backends import dask_slots, dask_workers  # noqa: E402

pytestmark = pytest.mark.dask

LOST = dask_backend.LOST
TESTS = os.path.dirname(__file__)
DASK = str(Path(sys.executable).with_name("dask"))
POOLRUN = str(Path(sys.executable).with_name("poolrun"))


@pytest.fixture(scope="module")
def cluster():
    """A two-worker LocalCluster and a client of its own, for looking at and killing workers."""
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.CRITICAL,
        ) as local,
        distributed.Client(local, set_as_default=False) as client,
    ):
        yield local.scheduler_address, client


@pytest.fixture(scope="module")
def pools(cluster):
    address, _ = cluster
    with (
        poolrun.Pool(workers=2) as local,
        poolrun.Pool(workers=2, backend="dask", scheduler=address) as dask,
    ):
        yield local, dask


@pytest.fixture
def remote_like(monkeypatch):
    """Workers that cannot share the client's /dev/shm slots, as on other machines."""
    monkeypatch.setattr(dask_slots, "SLOT_DIR", Path("/nonexistent/poolrun"))


def outcome(run: poolrun.Run) -> list[tuple]:
    """What must not depend on the backend: per item, its value or its error."""
    return [
        (r.index, r.ok, r.value if r.ok else (r.error.type, r.error.message, r.error.cause))
        for r in run.results
    ]


INPUTS = {
    "empty": lambda: [],
    "one": lambda: [7],
    "ints": lambda: range(300),
    "generator": lambda: (i for i in range(300)),
    "dicts": lambda: [{"id": i, "name": str(i)} for i in range(300)],
    "numpy": lambda: [np.arange(i, i + 10) for i in range(50)],
    "none": lambda: [None] * 20,
    "large": lambda: ["x" * 1_000_000 for _ in range(5)],
}


@pytest.mark.parametrize("batch", ["auto", 1, 7])
@pytest.mark.parametrize("name", list(INPUTS))
def test_same_results_and_order_as_local(pools, name, batch):
    local, dask = pools
    expected = outcome(local.map(describe, INPUTS[name](), batch_size=batch))
    assert outcome(dask.map(describe, INPUTS[name](), batch_size=batch)) == expected


def test_same_errors_as_local(pools):
    local, dask = pools
    expected = local.map(fail_on_three, [1, 2, 3, 4, 3, 5], batch_size=2)
    run = dask.map(fail_on_three, [1, 2, 3, 4, 3, 5], batch_size=2)
    assert outcome(run) == outcome(expected)
    err = run.errors[0].error
    assert (err.type, err.message, err.cause) == ("ValueError", "bad item 3", "exception")
    assert "fail_on_three" in err.traceback and "poolrun/" not in err.traceback


def test_unpicklable_results_fail_alone(pools):
    _, dask = pools
    run = dask.map(lambda x: (lambda: x) if x == 2 else x, range(5), batch_size=5)
    assert [r.index for r in run.errors] == [2]
    assert "cannot be sent back" in run.errors[0].error.message
    assert [r.value for r in run.results if r.ok] == [0, 1, 3, 4]


def test_unordered_returns_every_item_once(pools):
    _, dask = pools
    got = list(dask.imap(square, range(2000), ordered=False, batch_size=7))
    assert sorted(r.index for r in got) == list(range(2000))
    assert all(r.value == r.index**2 for r in got)


class CountLoads:
    """Counts, per worker process, how often this object was unpickled there."""

    loads: dict[str, int] = {}

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        CountLoads.loads[self.token] = CountLoads.loads.get(self.token, 0) + 1

    def __call__(self, x: int) -> int:
        return CountLoads.loads[self.token]


def test_function_is_shipped_once_per_worker(pools):
    _, dask = pools
    run = dask.map(CountLoads(), range(3000), batch_size=10)
    assert run.report.batches == 300
    assert set(run.values) == {1}


def test_initializer_runs_once_per_worker_process(cluster, tmp_path):
    def init(path):
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")

    marker = tmp_path / "inits"
    run = poolrun.map(
        square,
        range(200),
        workers=2,
        batch_size=10,
        backend="dask",
        scheduler=cluster[0],
        initializer=init,
        initargs=(str(marker),),
    )
    assert run.ok
    pids = marker.read_text().split()
    assert len(pids) == len(set(pids)) == 2


def test_initializer_failure_is_a_setup_error(cluster):
    def broken_init():
        raise RuntimeError("model file missing")

    with pytest.raises(poolrun.SetupFailed, match=r"initializer failed.*model file missing"):
        poolrun.map(
            square, range(10), backend="dask", scheduler=cluster[0], initializer=broken_init
        )


def _spawned_children() -> set[int]:
    """Processes this one started with multiprocessing's spawn (Dask's worker processes)."""
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.add(child.pid)
        except psutil.Error:
            continue
    return found


def test_own_local_cluster_reports_dask_and_worker_addresses():
    before = _spawned_children()
    run = poolrun.map(square, range(3000), workers=2, backend="dask")
    assert run.values == [x * x for x in range(3000)]
    assert run.report.backend == "dask"
    events = run.trace.to_dict()["traceEvents"]
    names = {e["args"]["name"] for e in events if e.get("ph") == "M"}
    assert names and all(n.startswith("tcp://127.0.0.1:") for n in names)
    assert wait_until(lambda: _spawned_children() <= before)


def test_sigkill_of_a_worker_mid_run_loses_nothing(cluster):
    address, client = cluster
    client.wait_for_workers(2, timeout=30)
    victim = next(iter(client.run(os.getpid).values()))
    results = []
    for r in poolrun.imap(
        slow_square, range(400), workers=2, batch_size=10, backend="dask", scheduler=address
    ):
        results.append(r)
        if len(results) == 40:
            os.kill(victim, signal.SIGKILL)
    assert [r.value for r in results] == [x * x for x in range(400)]
    assert all(r.ok for r in results)
    client.wait_for_workers(2, timeout=30)
    assert victim not in client.run(os.getpid).values()


def test_item_that_kills_its_worker_fails_alone(cluster):
    run = poolrun.map(
        sigkill_self_on(37), range(100), workers=2, batch_size=16, backend="dask",
        scheduler=cluster[0],
    )  # fmt: skip
    assert [r.index for r in run.errors] == [37]
    assert run.errors[0].error.cause == LOST
    assert [r.value for r in run.results if r.ok] == [x for x in range(100) if x != 37]
    assert run.report.worker_deaths == 4  # a lost worker may be an outside kill: 4 to blame


def test_timeout_is_enforced_inside_the_worker(cluster, remote_like):
    run = poolrun.map(
        hang_on(5), range(20), workers=2, batch_size=4, timeout=1, backend="dask",
        scheduler=cluster[0],
    )  # fmt: skip
    assert [r.index for r in run.errors] == [5]
    assert run.errors[0].error.cause == "timeout"
    assert [r.value for r in run.results if r.ok] == [x for x in range(20) if x != 5]
    assert run.report.timeouts == 1


def test_memory_limit_kills_the_item_on_the_same_host(cluster):
    run = poolrun.map(
        allocate_mb(5, 300), range(12), workers=2, batch_size=4, max_rss="250MB",
        backend="dask", scheduler=cluster[0],
    )  # fmt: skip
    assert [(r.index, r.error.cause) for r in run.errors] == [(5, "memory-limit")]
    assert [r.value for r in run.results if r.ok] == [x for x in range(12) if x != 5]
    assert run.report.memory_kills == 2


@pytest.mark.slow
def test_poison_item_isolated_by_halving_without_shared_slots(cluster, remote_like):
    run = poolrun.map(
        sigkill_self_on(13), range(64), workers=2, batch_size=16, backend="dask",
        scheduler=cluster[0],
    )  # fmt: skip
    assert [r.index for r in run.errors] == [13]
    assert run.errors[0].error.cause == LOST
    assert [r.value for r in run.results if r.ok] == [x for x in range(64) if x != 13]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def process_cluster(*worker_flags: str) -> Iterator[str]:
    """``dask scheduler`` and one ``dask worker`` on 127.0.0.1, as separate processes.

    poolrun's client waits for the scheduler to listen and for the worker to join.
    """
    address = f"tcp://127.0.0.1:{_free_port()}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    commands = [
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
         "--no-dashboard"],
        [DASK, "worker", address, "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard",
         *worker_flags],
    ]  # fmt: skip
    started = []
    try:
        for command in commands:
            started.append(
                subprocess.Popen(
                    command, stderr=subprocess.DEVNULL, env=env, start_new_session=True
                )
            )
        yield address
    finally:
        for proc in reversed(started):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(started):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_cluster_of_separate_processes_used_by_address():
    offset = 3

    def shifted(x):
        return x + offset

    with process_cluster() as address:
        run = poolrun.map(shifted, range(500), workers=1, backend="dask", scheduler=address)
        assert run.values == [x + 3 for x in range(500)]
        assert run.report.backend == "dask"
        errors = poolrun.map(fail_on_three, range(6), backend="dask", scheduler=address)
        assert [(r.index, r.error.type) for r in errors.errors] == [(3, "ValueError")]


def test_a_cluster_left_without_workers_fails_the_run(monkeypatch):
    """No nanny restarts the worker that dies: the run ends with an error, it does not hang."""
    monkeypatch.setattr(dask_workers, "NO_WORKER_SECONDS", 2.0)
    with (
        process_cluster("--no-nanny") as address,
        pytest.raises(RuntimeError, match="no Dask worker has been available"),
    ):
        poolrun.map(sigkill_self_on(3), range(10), workers=1, backend="dask", scheduler=address)


def test_no_dask_import_for_the_local_backend():
    code = (
        "import sys, poolrun; poolrun.map(abs, [-1], workers=1); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


CLI_FNS = """
def transform(record):
    if record.get("fail"):
        raise ValueError(f"record {record['id']} is marked bad")
    return {"id": record["id"], "square": record["id"] ** 2}
"""


def test_cli_with_backend_dask_equals_local(tmp_path):
    (tmp_path / "fns.py").write_text(CLI_FNS)
    lines = [b'{"id": %d%s}' % (i, b', "fail": true' if i % 97 == 5 else b"") for i in range(3000)]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join([*lines, b"{torn"]) + b"\n")
    outputs = {}
    for backend in ("local", "dask"):
        done = subprocess.run(
            [POOLRUN, "run", "fns.py:transform", "in.jsonl", "-o", f"{backend}.jsonl",
             "-w", "2", "--no-progress", "--backend", backend],
            cwd=tmp_path, capture_output=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 1, done.stderr  # some lines failed, all are in the errors file
        outputs[backend] = [
            (tmp_path / f"{backend}{suffix}").read_bytes() for suffix in (".jsonl", ".errors.jsonl")
        ]
    assert outputs["dask"] == outputs["local"]
    assert outputs["local"][0].count(b"\n") == 3000 - 31
