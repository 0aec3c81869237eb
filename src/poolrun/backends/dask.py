"""The Dask backend: the same batches, run as tasks on a Dask distributed cluster.

This module is the supervisor's side; what runs inside a Dask worker process is in
:mod:`poolrun.backends.dask_task`. Importing this module imports Dask, so poolrun imports it
only when ``backend="dask"`` is chosen.

Each poolrun worker id stands for one Dask worker (bound to its address; a dead worker's id
is never reused). A batch becomes one task pinned to that worker
(``workers=[address], allow_other_workers=False``, ``pure=False``), so the supervisor's limit
of K batches in flight per worker holds, and Dask never moves a poolrun task on its own:
when a worker leaves, this backend cancels that worker's tasks and reports the death, and
the supervisor's splitting decides what runs again (Dask's own retry of a task whose worker
died would re-run a poison item without anyone blaming it).

What crosses the network:

* the function travels once per Dask worker process: the first batch sent to an address
  carries the cloudpickled payload, which the worker caches under its SHA-1; later batches
  carry only the key (a restarted worker that lost its cache asks again: ``need-setup``);
* a batch's items go as the bytes the supervisor already pickled (inside the task, or
  scattered straight to the worker when over 1 MiB), and its result comes back as bytes
  pickled in the worker (values, durations, only the failed items' errors).

Events come without polling: each task's completion callback fetches its result and puts it
on a queue, and the scheduler's ``add-worker``/``remove-worker`` events (topic ``"all"``) go
to the same queue; :meth:`DaskBackend.wait` blocks on that queue.

On the client's own machine this backend owns the ``/dev/shm`` slot file the tasks write
to (:class:`_Slots`), so a crash blames the right item and timeouts and ``max_rss`` are
enforced as locally. Elsewhere a worker that dies is reported with ``running=None`` and the
supervisor isolates a poison item by halving the batch.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import itertools
import logging
import mmap
import os
import queue
import time
import uuid
import weakref
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import psutil

try:
    import distributed
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("backend='dask' needs Dask distributed: pip install 'poolrun[dask]'") from exc

from .. import log
from ..slot import IDLE, SLOT_POS, SLOT_SIZE
from .base import (
    Backend,
    BatchDone,
    BatchMemory,
    BatchRejected,
    Event,
    FunctionSpec,
    SetupFailed,
    WorkerDied,
)
from .dask_task import (
    BOOT_ID,
    SLOT_PID,
    SLOT_WIDTH,
    Setup,
    _check_worker,
    _kill_worker_process,
    poolrun_batch,
)
from .wire import unpack

SLOT_CAPACITY = 1024  # 32 KiB of /dev/shm; ids bound beyond this go without a slot
SLOT_DIR = Path("/dev/shm")
START_SECONDS = 30.0  # to reach the scheduler and see a first worker
NO_WORKER_SECONDS = 60.0  # a worker id left without any Dask worker this long fails the run
CLOSE_SECONDS = 10.0
SCATTER_BYTES = 1 << 20  # larger batches go to their worker by scatter, not in the task
LOST = "worker-died: dask worker lost"


# -- in the supervisor's process -----------------------------------------------------------


class _Slots:
    """The /dev/shm file of (batch, position, item start, pid) slots, one per bound worker id.

    A freed slot goes to the back of the line, so one that a timed-out item's stranded
    thread may still write to is reused last.
    """

    def __init__(self, path: Path) -> None:
        size = SLOT_CAPACITY * SLOT_WIDTH * 8
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.path = path
        self.view = memoryview(self.map).cast("d")
        self.free = deque(range(SLOT_CAPACITY))
        self.index: dict[int, int] = {}
        self.handles: dict[int, psutil.Process] = {}

    @classmethod
    def create(cls) -> _Slots | None:
        if not SLOT_DIR.is_dir():
            return None
        try:
            return cls(SLOT_DIR / f"poolrun-dask-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        except OSError:
            return None

    def assign(self, worker: int) -> None:
        if self.free:
            index = self.index[worker] = self.free.popleft()
            base = index * SLOT_WIDTH
            self.view[base : base + SLOT_WIDTH] = array("d", [IDLE, IDLE, 0.0, 0.0])

    def release(self, worker: int) -> None:
        index = self.index.pop(worker, None)
        if index is not None:
            self.free.append(index)

    def ref(self, worker: int) -> tuple[str, int] | None:
        index = self.index.get(worker)
        return None if index is None else (str(self.path), index)

    def running(self, worker: int) -> tuple[int, int, float] | None:
        index = self.index.get(worker)
        if index is None or self.view[index * SLOT_WIDTH + SLOT_POS] < 0:
            return None
        batch, pos, started = self.view[index * SLOT_WIDTH : index * SLOT_WIDTH + SLOT_SIZE]
        return int(batch), int(pos), started

    def rss(self, worker: int) -> int | None:
        index = self.index.get(worker)
        pid = 0 if index is None else int(self.view[index * SLOT_WIDTH + SLOT_PID])
        if pid <= 0:
            return None
        try:
            handle = self.handles.get(pid) or self.handles.setdefault(pid, psutil.Process(pid))
            return handle.memory_info().rss
        except psutil.Error:
            return None

    def close(self) -> None:
        self.view.release()
        self.map.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


@dataclass(slots=True, eq=False)
class _Task:
    worker: int
    address: str
    batch: int
    fn_id: int
    payload: bytes
    future: Any  # distributed.Future
    data: Any  # the payload, or the Future of its scattered copy on the worker


_LIVE: weakref.WeakSet[DaskBackend] = weakref.WeakSet()


@atexit.register
def _close_leftovers() -> None:
    """A cluster this process started must not outlive it."""
    for backend in list(_LIVE):
        backend.close(wait=False)


def _key(payload: bytes) -> str:
    return hashlib.sha1(payload).hexdigest()


class DaskBackend(Backend):
    """Batches as Dask tasks, one Dask worker per poolrun worker id."""

    name = "dask"
    start_method = "dask"
    start_reason = "workers are Dask's own processes"

    def __init__(
        self,
        workers: int,
        scheduler: str | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        self.size = workers
        self.scheduler = scheduler
        self.init = cloudpickle.dumps((initializer, initargs)) if initializer else None
        self.client: Any = None  # distributed.Client, made in start()
        self.cluster: Any = None  # the LocalCluster this backend started, if any
        self.slots: _Slots | None = None
        self.functions: dict[int, tuple[str, bytes]] = {}
        self._fn_ids = itertools.count(1)
        self.tasks: dict[str, _Task] = {}
        self.address: dict[int, str] = {}
        self.names: dict[int, str] = {}
        self.unbound: dict[int, float] = {}  # worker id -> since when it waits for a worker
        self.queued: dict[int, list[tuple[int, int, bytes]]] = {}
        self.alive: set[str] = set()
        self.recycling: set[str] = set()
        self.shipped: dict[str, set[str]] = {}
        self.ready: list[Event] = []
        self.inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._ids = itertools.count(1)
        self.closed = False
        _LIVE.add(self)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self.slots = _Slots.create()
        self.client = self._connect()
        self.client.subscribe_topic("all", self._on_cluster_event)
        for address in self._first_workers()[: self.size]:
            self._bind(next(self._ids), address)

    def _connect(self) -> Any:
        if self.scheduler is not None:
            try:
                return distributed.Client(
                    self.scheduler, timeout=START_SECONDS, set_as_default=False
                )
            except (OSError, TimeoutError) as exc:
                raise SetupFailed(
                    f"cannot reach the Dask scheduler {self.scheduler}: {exc}"
                ) from exc
        self.cluster = distributed.LocalCluster(
            n_workers=self.size,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.CRITICAL,
        )
        return distributed.Client(self.cluster, direct_to_workers=True, set_as_default=False)

    def _first_workers(self) -> list[str]:
        """The workers there now, once our membership events are sure to flow.

        A first task, submitted after subscribing on the same ordered stream, proves the
        subscription is in force, so no worker can join or leave unseen after the snapshot.
        It also fails early, and clearly, where poolrun is not installed on the workers.
        """
        wanted = self.size if self.cluster is not None else 1
        try:
            self.client.wait_for_workers(wanted, timeout=START_SECONDS)
        except TimeoutError as exc:
            raise SetupFailed(f"no Dask worker joined within {START_SECONDS:.0f} s") from exc
        try:
            self.client.submit(_check_worker, pure=False).result(timeout=START_SECONDS)
        except Exception as exc:
            raise SetupFailed(
                f"poolrun cannot run on the Dask workers (is it installed there?): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        workers = self.client.scheduler_info()["workers"]
        self.alive = set(workers)
        return list(workers)

    def worker_ids(self) -> list[int]:
        return [*self.address, *self.unbound]

    def describe_worker(self, worker_id: int) -> str:
        return self.names.get(worker_id, f"dask worker {worker_id} (waiting for a worker)")

    def replace(self, worker_id: int) -> int:
        """A new id for a dead worker, or for a live one whose run was abandoned."""
        self.ready = [e for e in self.ready if getattr(e, "worker", None) != worker_id]
        self._unbind(worker_id)
        return self._fresh_id()

    def retire(self, worker_id: int) -> int:
        """Restart an idle worker's process (memory recycling); its successor gets a new id."""
        address = self._unbind(worker_id)
        if address is not None:
            self._recycle(address)
        return self._fresh_id()

    def close(self, wait: bool = True) -> None:
        """Cancel our tasks and disconnect; a LocalCluster we started is shut down.

        ``wait`` makes no difference here: Dask stops a local cluster's workers at once.
        """
        if self.closed:
            return
        self.closed = True
        _LIVE.discard(self)
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic("all")
            self.abandon()
            with contextlib.suppress(Exception):
                self.client.close(timeout=CLOSE_SECONDS)
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close(timeout=CLOSE_SECONDS)
        if self.slots is not None:
            self.slots.close()
            self.slots = None

    # -- running batches ---------------------------------------------------------------

    def register(self, spec: FunctionSpec) -> int:
        payload = spec.payload()
        fn_id = next(self._fn_ids)  # never reused: workers cache functions by id
        self.functions[fn_id] = (_key(payload), payload)
        return fn_id

    def submit(
        self, worker_id: int, batch: int, fn_id: int, payload: bytes, bulk: bool = False
    ) -> None:
        address = self.address.get(worker_id)
        if address is None:  # its Dask worker has not joined yet: sent when it does
            self.queued.setdefault(worker_id, []).append((batch, fn_id, payload))
            return
        self._launch(worker_id, address, batch, fn_id, payload)

    def _launch(self, worker_id: int, address: str, batch: int, fn_id: int, payload: bytes) -> None:
        data = self._ship(address, payload)
        future = self.client.submit(
            poolrun_batch,
            batch,
            self._setup(address, fn_id),
            data,
            self.slots.ref(worker_id) if self.slots else None,
            pure=False,
            workers=[address],
            allow_other_workers=False,
        )
        self.tasks[future.key] = _Task(worker_id, address, batch, fn_id, payload, future, data)
        future.add_done_callback(self._fetch)

    def _ship(self, address: str, payload: bytes) -> Any:
        """A large batch goes straight to its worker (scatter), not through the scheduler.

        Best effort: if the worker is gone or paused, the task carries the bytes itself.
        """
        if len(payload) <= SCATTER_BYTES:
            return payload
        try:
            return self.client.scatter(payload, workers=[address], hash=False)
        except Exception:
            return payload

    def _setup(self, address: str, fn_id: int) -> Setup:
        """Keys always; payloads only the first time this worker process sees them."""
        fn_key, fn_payload = self.functions[fn_id]
        init_key = _key(self.init) if self.init else None
        shipped = self.shipped.setdefault(address, set())
        setup = Setup(
            fn_key,
            None if fn_key in shipped else fn_payload,
            init_key,
            None if init_key in shipped else self.init,
        )
        shipped.update(k for k in (fn_key, init_key) if k)
        return setup

    def _fetch(self, future: Any) -> None:
        """Runs in Dask's callback thread: bring the result over while the supervisor works."""
        try:
            outcome = future.result()
        except BaseException as exc:
            outcome = exc
        self.inbox.put(("result", future.key, outcome, time.perf_counter()))

    def running(self, worker_id: int) -> tuple[int, int, float] | None:
        return None if self.slots is None else self.slots.running(worker_id)

    def rss(self, worker_id: int) -> int | None:
        return None if self.slots is None else self.slots.rss(worker_id)

    def kill(self, worker_id: int, cause: str) -> None:
        """Report the worker dead now, and restart its process through its nanny."""
        if worker_id not in self.address and worker_id not in self.unbound:
            return
        address = self.address.get(worker_id)
        self.ready.append(self._lose(worker_id, cause))
        if address is not None:
            self._recycle(address)

    def abandon(self) -> None:
        """Cancel every task; one already running finishes on its worker, unheard."""
        self._cancel(list(self.tasks))
        self.queued.clear()
        self.ready.clear()

    def wake(self) -> None:
        self.inbox.put(("wake",))

    def starting(self, worker_id: int) -> tuple[str, int, float] | None:
        return None  # Dask starts its workers; a Setup message runs the initializer

    def unregister(self, fn_id: int) -> None:
        """Kept: a batch queued for a worker that has not joined yet may still need it (a
        payload is bytes, and Dask workers cache at most a few functions each)."""

    def wait(self, timeout: float | None) -> list[Event]:
        events, self.ready = self.ready, []
        if not events:
            message = self._next_message(timeout)
            if message is not None:
                self._handle(message, events)
        while True:
            try:
                message = self.inbox.get_nowait()
            except queue.Empty:
                break
            self._handle(message, events)
        self._check_stranded()
        return events

    # -- events ------------------------------------------------------------------------

    def _on_cluster_event(self, event: tuple[float, Any]) -> None:
        """Runs in the client's event loop: membership changes go to the inbox."""
        msg = event[1]
        action = msg.get("action") if isinstance(msg, dict) else None
        if action == "add-worker":
            self.inbox.put(("joined", msg["worker"]))
        elif action == "remove-worker":
            self.inbox.put(("left", msg["worker"]))

    def _next_message(self, timeout: float | None) -> tuple[Any, ...] | None:
        if self.unbound:  # wake in time to give up on a worker that never comes
            limit = min(self.unbound.values()) + NO_WORKER_SECONDS - time.perf_counter()
            timeout = max(0.0, limit if timeout is None else min(timeout, limit))
        try:
            return self.inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def _handle(self, message: tuple[Any, ...], events: list[Event]) -> None:
        kind = message[0]
        if kind == "result":
            self._on_result(*message[1:], events)
        elif kind == "joined":
            self._on_joined(message[1])
        elif kind == "left":
            self._on_left(message[1], events)

    def _on_result(self, key: str, outcome: Any, received: float, events: list[Event]) -> None:
        task = self.tasks.pop(key, None)
        if task is None:
            return  # cancelled: its worker died, or its run was abandoned
        if isinstance(outcome, BaseException):
            self._on_task_error(task, outcome, events)
            return
        message_bytes, memory = outcome
        message = unpack(message_bytes)
        kind = message[0]
        if kind == "done":
            events += self._done(task, message, memory, received)
        elif kind == "timeout":
            events.append(self._lose(task.worker, "timeout", (message[1], message[2])))
            self._recycle(task.address)
        elif kind == "bad-batch":
            events.append(BatchRejected(task.worker, *message[1:]))
        elif kind == "need-setup":  # the worker restarted, or evicted the function
            self.shipped.pop(task.address, None)
            self._launch(task.worker, task.address, task.batch, task.fn_id, task.payload)
        else:
            _, _, kind_name, text, tb = message
            what = "the initializer failed" if kind == "init-failed" else "cannot load the function"
            raise SetupFailed(f"{what} on Dask worker {task.address}: {kind_name}: {text}\n{tb}")

    def _done(
        self, task: _Task, message: tuple, memory: tuple[int, int], received: float
    ) -> list[Event]:
        """BatchDone and BatchMemory, with times on this process's clock."""
        _, batch, values, durations, errors, started, ended, rss_start, boot_id = message
        if boot_id != BOOT_ID or not boot_id:  # another machine's clock: keep only the span
            started, ended = received - (ended - started), received
        rss_peak, max_rss = memory
        return [
            BatchDone(task.worker, batch, values, durations, errors, started, ended, rss_start),
            BatchMemory(task.worker, batch, rss_start, rss_peak, max_rss),
        ]

    def _on_task_error(self, task: _Task, exc: BaseException, events: list[Event]) -> None:
        if isinstance(exc, distributed.KilledWorker):  # a cluster with allowed-failures=0
            events.append(self._lose(task.worker, LOST))
        elif isinstance(exc, distributed.client.CancelledError):  # not by us: run it again
            self._launch(task.worker, task.address, task.batch, task.fn_id, task.payload)
        else:
            raise SetupFailed(
                f"the poolrun task failed on Dask worker {task.address}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _on_joined(self, address: str) -> None:
        self.alive.add(address)
        if self.unbound and address not in self.address.values():
            self._bind(next(iter(self.unbound)), address)

    def _on_left(self, address: str, events: list[Event]) -> None:
        self.alive.discard(address)
        self.recycling.discard(address)
        self.shipped.pop(address, None)
        for worker_id in [w for w, a in self.address.items() if a == address]:
            events.append(self._lose(worker_id, LOST))

    def _check_stranded(self) -> None:
        if self.unbound:
            waited = time.perf_counter() - min(self.unbound.values())
            if waited > NO_WORKER_SECONDS:
                raise RuntimeError(
                    f"no Dask worker has been available for {waited:.0f} s "
                    f"(the cluster has {len(self.alive)} workers, all in use or restarting)"
                )

    # -- worker ids and addresses ------------------------------------------------------

    def _fresh_id(self) -> int:
        worker_id = next(self._ids)
        spare = next(
            (a for a in self.alive if a not in self.recycling and a not in self.address.values()),
            None,
        )
        if spare is None:
            self.unbound[worker_id] = time.perf_counter()
        else:
            self._bind(worker_id, spare)
        return worker_id

    def _bind(self, worker_id: int, address: str) -> None:
        self.unbound.pop(worker_id, None)
        self.address[worker_id] = address
        self.names[worker_id] = address
        if self.slots is not None:
            self.slots.assign(worker_id)
        log.debug("worker {} is Dask worker {}", worker_id, address)
        for batch, fn_id, payload in self.queued.pop(worker_id, []):
            self._launch(worker_id, address, batch, fn_id, payload)

    def _unbind(self, worker_id: int) -> str | None:
        """Forget a worker id: cancel its tasks and drop what waited for it."""
        self._cancel([k for k, t in self.tasks.items() if t.worker == worker_id])
        self.queued.pop(worker_id, None)
        self.unbound.pop(worker_id, None)
        if self.slots is not None:
            self.slots.release(worker_id)
        return self.address.pop(worker_id, None)

    def _lose(
        self, worker_id: int, cause: str, running: tuple[int, int] | None = None
    ) -> WorkerDied:
        if running is None:
            seen = self.running(worker_id)
            running = seen[:2] if seen else None
        address = self._unbind(worker_id)
        log.debug("worker {} ({}) lost: {}", worker_id, address, cause)
        return WorkerDied(worker_id, cause, running, detail=address or "")

    def _cancel(self, keys: list[str]) -> None:
        """Cancel tasks so none waits forever for a worker that left, and forget them."""
        futures = [self.tasks.pop(k).future for k in keys]
        if futures:
            with contextlib.suppress(Exception):
                self.client.cancel(futures)

    def _recycle(self, address: str) -> None:
        """Restart a live worker's process (stuck thread, memory) if a nanny watches it.

        Without a nanny it cannot be restarted from here: it stays in use as it is.
        """
        try:
            killed = self.client.run(
                _kill_worker_process, workers=[address], nanny=True, on_error="ignore"
            )
        except Exception:
            killed = {}
        if killed:
            self.recycling.add(address)
