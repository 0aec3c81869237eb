"""The Dask backend's task side: the code that runs inside a Dask worker process.

It is a module of its own because Dask pickles a task function by reference: every Dask
worker imports this module to run :func:`poolrun_batch`, and it needs nothing of the
supervisor's side (:mod:`poolrun.backends.dask`), not even Dask itself. What both sides must
agree on lives here too (the slot layout, :data:`BOOT_ID`, :class:`Setup`), so the
supervisor's module imports from this one and never the reverse.

A worker process caches each function it is sent under its SHA-1 and runs the initializer
once; a :class:`Setup` that lacks a payload the process no longer has is answered
``need-setup``. Batches run one at a time per worker process, and a batch's result goes
back as bytes pickled here (values, durations, only the failed items' errors), so values
that cannot be pickled fail on their own, as in the local backend.

Knowing which item a dead worker was running needs memory both sides can see. On the
client's own machine (a ``LocalCluster``, or workers started on this host) each task writes
(batch, position, item start, pid) into a slot of a small ``/dev/shm`` file the backend
owns, exactly like the local backend's shared slot, so a crash blames the right item and the
supervisor can enforce timeouts and ``max_rss`` as it does locally. On other machines the
slot cannot be shared: the task writes to a private slot, and per-item timeouts are enforced
by a watchdog inside the task (Dask cannot cancel a running task).
"""

from __future__ import annotations

import mmap
import os
import signal
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import cloudpickle

from ..items import describe_exception, run_batch
from ..slot import IDLE, SLOT_BATCH, SLOT_POS, SLOT_SIZE, SLOT_STARTED
from ..tuning import tune_malloc
from ..worker import BatchPipeline, dumps, load_function
from .wire import joined

SLOT_PID = SLOT_SIZE  # the Dask worker's pid, after the local backend's three numbers
SLOT_WIDTH = SLOT_SIZE + 1
MAX_CACHED_FUNCTIONS = 8
MAX_SLOT_FILES = 4


def _boot_id() -> str:
    """Identifies this machine's boot: equal boot ids mean ``perf_counter`` is one clock."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


BOOT_ID = _boot_id()


class Setup(NamedTuple):
    """What a worker needs before a batch; payloads travel only to workers without them."""

    fn_key: str
    fn_payload: bytes | None
    init_key: str | None
    init_payload: bytes | None


# -- inside a Dask worker process ----------------------------------------------------------

_FUNCTIONS: dict[str, tuple[Callable[[Any], Any], tuple[type[BaseException], ...], bool]] = {}
_INITIALIZED: set[str] = set()
_SLOT_FILES: dict[str, memoryview | None] = {}
_ONE_BATCH_AT_A_TIME = threading.Lock()
_PIPELINE: list[BatchPipeline] = []  # one per worker process, made on its first batch


def poolrun_batch(
    batch_id: int,
    setup: Setup,
    payload: bytes,
    slot_ref: tuple[str, int] | None,
) -> tuple[bytes, tuple[int, int] | None]:
    """The Dask task: run one batch; returns a pickled message and the worker's private
    memory (after this batch, highest so far), or ``None`` when nothing ran.

    Batches run one at a time per worker process even on a worker with several threads,
    so the slot and the supervisor's per-worker accounting stay true.
    """
    with _ONE_BATCH_AT_A_TIME:
        loaded = _load(batch_id, setup)
        if isinstance(loaded, bytes):
            return loaded, None
        fn, retry_on, timeout, _ = loaded
        slot = _slot(slot_ref)
        slot[SLOT_PID] = os.getpid()
        return _run(fn, retry_on, timeout is not None, batch_id, payload, slot, timeout)


def _load(
    batch_id: int, setup: Setup
) -> bytes | tuple[Callable[[Any], Any], tuple[type[BaseException], ...], float | None]:
    """The cached function (running the initializer first), or a message saying why not."""
    if setup.init_key is not None and setup.init_key not in _INITIALIZED:
        if setup.init_payload is None:
            return dumps(("need-setup", batch_id))
        try:
            init, initargs = cloudpickle.loads(setup.init_payload)
            init(*initargs)
        except BaseException as exc:
            return dumps(("init-failed", batch_id, *describe_exception(exc)))
        _INITIALIZED.add(setup.init_key)
    found = _FUNCTIONS.get(setup.fn_key)
    if found is not None:
        return found
    if setup.fn_payload is None:
        return dumps(("need-setup", batch_id))
    try:
        found = load_function(setup.fn_payload)
    except BaseException as exc:
        return dumps(("fn-failed", batch_id, *describe_exception(exc, 0)))
    if len(_FUNCTIONS) >= MAX_CACHED_FUNCTIONS:
        _FUNCTIONS.pop(next(iter(_FUNCTIONS)))
    _FUNCTIONS[setup.fn_key] = found
    tune_malloc(memory_limited=found[3] is not None)
    return found


def _slot(slot_ref: tuple[str, int] | None) -> memoryview:
    """This worker id's slot in the client's /dev/shm file, or a private one elsewhere."""
    if slot_ref is not None:
        path, index = slot_ref
        if path not in _SLOT_FILES:
            if len(_SLOT_FILES) >= MAX_SLOT_FILES:  # a long-lived worker serves many runs
                _SLOT_FILES.pop(next(iter(_SLOT_FILES)))
            _SLOT_FILES[path] = _attach(path)
        view = _SLOT_FILES[path]
        if view is not None:
            return view[index * SLOT_WIDTH : (index + 1) * SLOT_WIDTH]
    return memoryview(array("d", [IDLE, IDLE, 0.0, 0.0]))


def _attach(path: str) -> memoryview | None:
    """Map the client's slot file; ``None`` on another machine, where it does not exist."""
    try:
        with open(path, "r+b") as f:
            return memoryview(mmap.mmap(f.fileno(), 0)).cast("d")
    except (OSError, ValueError):
        return None


def _run(
    fn: Callable[[Any], Any],
    retry_on: tuple[type[BaseException], ...],
    track_start: bool,
    batch_id: int,
    payload: bytes,
    slot: memoryview,
    timeout: float | None,
) -> tuple[bytes, tuple[int, int] | None]:
    if not _PIPELINE:
        _PIPELINE.append(BatchPipeline())
    pipeline = _PIPELINE[0]
    runner = None
    if timeout is not None:

        def runner(items: list[Any]) -> Any:
            outcome = _run_watched(fn, items, batch_id, slot, retry_on, timeout)
            return dumps(("timeout", batch_id, outcome)) if isinstance(outcome, int) else outcome

    message, _, rss_peak = pipeline.run(
        batch_id, payload, fn, retry_on, slot, track_start, runner=runner, extra=(BOOT_ID,)
    )
    return joined(message), (rss_peak, pipeline.memory.peak)


class _UntilAbandoned(list):
    """A batch's items, handed out only until the watchdog gives up on the batch.

    A timed-out item's thread cannot be stopped; if its item ever returns, this keeps the
    thread from running the rest of the batch, whose items the supervisor runs again.
    """

    def __init__(self, items: list[Any], abandoned: threading.Event) -> None:
        super().__init__(items)
        self.abandoned = abandoned

    def __iter__(self) -> Iterator[Any]:
        for item in super().__iter__():
            if self.abandoned.is_set():
                return
            yield item


def _run_watched(
    fn: Callable[[Any], Any],
    items: list[Any],
    batch_id: int,
    slot: memoryview,
    retry_on: tuple[type[BaseException], ...],
    timeout: float,
) -> tuple[list[Any], array, list[tuple[int, str, str, str, bool]] | None] | int:
    """Run the batch in a thread and watch each item's start time in the slot.

    Returns the batch's result, or the position of the first item that ran past
    ``timeout``. That item's thread keeps running (nothing can stop a Python thread); the
    backend then restarts the worker through its nanny where it has one.
    """
    abandoned = threading.Event()
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append(
                run_batch(fn, _UntilAbandoned(items, abandoned), batch_id, slot, retry_on)
            )
        except BaseException as exc:  # re-raised in the task's own thread
            outcome.append(exc)

    runner = threading.Thread(target=target, name=f"poolrun-batch-{batch_id}", daemon=True)
    runner.start()
    deadline = time.perf_counter() + timeout
    while True:
        runner.join(max(0.0, deadline - time.perf_counter()))
        if not runner.is_alive():
            if isinstance(outcome[0], BaseException):
                raise outcome[0]
            return outcome[0]
        pos, started = slot[SLOT_POS], slot[SLOT_STARTED]
        if pos < 0 or slot[SLOT_BATCH] != batch_id:  # between items, or not started yet
            deadline = time.perf_counter() + timeout
            continue
        deadline = started + timeout
        if time.perf_counter() >= deadline and slot[SLOT_POS] == pos:
            abandoned.set()
            return int(pos)


def check_worker() -> str:
    """The first task: poolrun imports on the workers, and our subscription is in force."""
    return BOOT_ID


def kill_worker_process(dask_worker: Any) -> None:
    """Runs on a Nanny: SIGKILL its worker process, and the nanny starts a fresh one."""
    if dask_worker.pid:
        os.kill(dask_worker.pid, signal.SIGKILL)
