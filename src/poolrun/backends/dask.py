"""The Dask backend: the same batches, run as tasks on a Dask distributed cluster.

This module is the supervisor's side: it runs batches as tasks and turns their results and
the cluster's membership changes into events. Beside it, :mod:`~poolrun.backends.dask_workers`
keeps which Dask worker each worker id is bound to, :mod:`~poolrun.backends.dask_cluster`
connects to (or starts) the cluster and restarts worker processes, and
:mod:`~poolrun.backends.dask_slots` holds the slot file described below. What runs inside a
Dask worker process is in :mod:`poolrun.backends.dask_task`. Importing this module imports
Dask, so poolrun imports it only when ``backend="dask"`` is chosen.

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
to (:class:`~poolrun.backends.dask_slots.SlotFile`), so a crash blames the right item and
timeouts and ``max_rss`` are enforced as locally. Elsewhere a worker that dies is reported
with ``running=None`` and the supervisor isolates a poison item by halving the batch.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import itertools
import queue
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle

try:
    import distributed
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("backend='dask' needs Dask distributed: pip install 'poolrun[dask]'") from exc

from .. import log
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
from .dask_cluster import connect, first_workers, local_cluster, restart_process
from .dask_slots import SlotFile
from .dask_task import BOOT_ID, Setup, poolrun_batch
from .dask_workers import WorkerBindings
from .wire import unpack

CLOSE_SECONDS = 10.0
SCATTER_BYTES = 1 << 20  # larger batches go to their worker by scatter, not in the task
LOST = "worker-died: dask worker lost"


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
        self.slots: SlotFile | None = None
        self.functions: dict[int, tuple[str, bytes]] = {}
        self._fn_ids = itertools.count(1)
        self.tasks: dict[str, _Task] = {}
        self.bindings = WorkerBindings()
        self.queued: dict[int, list[tuple[int, int, bytes]]] = {}
        self.shipped: dict[str, set[str]] = {}
        self.ready: list[Event] = []
        self.inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.closed = False
        _LIVE.add(self)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self.slots = SlotFile.create()
        if self.scheduler is None:
            self.cluster = local_cluster(self.size)
        self.client = connect(self.scheduler, self.cluster)
        self.client.subscribe_topic("all", self._on_cluster_event)
        workers = first_workers(self.client, self.size if self.cluster is not None else 1)
        self.bindings.alive = set(workers)
        for address in workers[: self.size]:
            self._bind(self.bindings.new_id(), address)

    def worker_ids(self) -> list[int]:
        return self.bindings.ids()

    def describe_worker(self, worker_id: int) -> str:
        return self.bindings.describe(worker_id)

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
        address = self.bindings.address.get(worker_id)
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
        if worker_id not in self.bindings.ids():
            return
        address = self.bindings.address.get(worker_id)
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
        self.bindings.check_stranded()
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
        deadline = self.bindings.deadline()
        if deadline is not None:  # wake in time to give up on a worker that never comes
            limit = deadline - time.perf_counter()
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
        worker_id = self.bindings.joined(address)
        if worker_id is not None:
            self._bind(worker_id, address)

    def _on_left(self, address: str, events: list[Event]) -> None:
        self.shipped.pop(address, None)
        for worker_id in self.bindings.left(address):
            events.append(self._lose(worker_id, LOST))

    # -- worker ids and addresses ------------------------------------------------------

    def _fresh_id(self) -> int:
        worker_id = self.bindings.new_id()
        spare = self.bindings.spare()
        if spare is None:
            self.bindings.wait(worker_id)
        else:
            self._bind(worker_id, spare)
        return worker_id

    def _bind(self, worker_id: int, address: str) -> None:
        self.bindings.bind(worker_id, address)
        if self.slots is not None:
            self.slots.assign(worker_id)
        for batch, fn_id, payload in self.queued.pop(worker_id, []):
            self._launch(worker_id, address, batch, fn_id, payload)

    def _unbind(self, worker_id: int) -> str | None:
        """Forget a worker id: cancel its tasks and drop what waited for it."""
        self._cancel([k for k, t in self.tasks.items() if t.worker == worker_id])
        self.queued.pop(worker_id, None)
        if self.slots is not None:
            self.slots.release(worker_id)
        return self.bindings.unbind(worker_id)

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
        if restart_process(self.client, address):
            self.bindings.recycling.add(address)
