"""The local backend: long-lived worker processes on this machine, one duplex pipe each.

How workers start (``start_method``, decided in :mod:`.processes`): ``"auto"``, the default,
forks them from a template of the caller (see :mod:`.template`) when that is safe, and
otherwise uses the forkserver; ``"forkserver"``, ``"spawn"`` and ``"fork"`` (straight from the
supervisor) are used when asked for by name. Should the template die, replacements come
from the forkserver.

The supervisor polls every worker's pipe and process sentinel at once (and a pipe's
writability while a large batch is still going out, see :mod:`.channel`), so a result or a
death wakes it immediately: there is no polling loop and no feeder thread. Each worker also
shares a three-number slot (batch, position, start time of the item it is running), read
here to blame the right item when a worker dies, and to enforce per-item timeouts.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import select
import weakref
from collections.abc import Callable

from .. import log, tuning, worker
from ..options import available_cpus
from ..slot import LOADING, SLOT_BATCH, SLOT_POS, SLOT_SIZE, SLOT_STARTED, STARTING
from .base import (
    Backend,
    BatchDone,
    BatchMemory,
    BatchRejected,
    Event,
    FunctionFailed,
    FunctionSpec,
    SetupFailed,
    WorkerDied,
)
from .channel import Channel
from .processes import (
    TEMPLATE,
    choose_start,
    death_cause,
    main_hidden,
    main_reference,
    multiprocessing_context,
    starting_slot,
    wait_all,
)
from .template import ForkedWorker, Template, TemplateGone, new_slot
from .wire import unpack, wire_pair

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from typing import Any

INHERITED_TOKEN = 1  # the one function a one-shot call's template holds
ITEMS_TOKEN = 2  # and its input, when that is a list, a tuple or a range
REQUESTS_AHEAD = 32  # spawn requests sent to the template before reading its replies

_LIVE: weakref.WeakSet[LocalBackend] = weakref.WeakSet()
_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR


@atexit.register
def _kill_leftovers() -> None:
    """Runs before multiprocessing's own exit hook, which would otherwise join busy workers."""
    for backend in list(_LIVE):
        backend.close(wait=False)


class _Worker:
    """One worker as the backend sees it: its process, pipe, slot and what it was sent."""

    __slots__ = (
        "channel", "conn", "fn_ids", "inherits", "kill_cause", "memory", "process", "readable",
        "slot", "slot_map",
    )  # fmt: skip

    def __init__(
        self,
        process: Any,  # a multiprocessing.Process, or a ForkedWorker
        conn: Any,
        slot: memoryview,
        channel: Channel,
        inherits: bool = False,  # forked from a template holding the call's function
        slot_map: Any = None,  # keeps a template worker's slot mapping alive
    ) -> None:
        self.process, self.conn, self.slot, self.channel = process, conn, slot, channel
        self.inherits, self.slot_map = inherits, slot_map
        self.fn_ids: set[int] = set()
        self.kill_cause: str | None = None
        self.memory: Any = None  # its PrivateMemory gauge, made when max_rss first needs it
        self.readable = select.poll()  # is a message waiting on its pipe?
        self.readable.register(conn.fileno(), select.POLLIN)

    @property
    def pid(self) -> int:
        return self.process.pid

    def close(self) -> None:
        self.channel.close()
        if self.memory is not None:
            self.memory.close()


class LocalBackend(Backend):
    """A set of worker processes, addressed by pid."""

    name = "local"
    runs_in_bulk = True

    def __init__(
        self,
        workers: int,
        start_method: str = "auto",
        initializer: Any = None,
        initargs: tuple[Any, ...] = (),
        preload: tuple[str, ...] = (),
        inherit: Callable[[Any], Any] | None = None,
        inherit_items: Any = None,
    ) -> None:
        self.size = workers
        self.start_method, self.start_reason = choose_start(start_method)
        self.init = (initializer, initargs) if initializer else None
        self.preload = preload
        self.inherit = inherit if self.start_method == TEMPLATE else None
        self.inherit_items = inherit_items if self.inherit is not None else None
        self.template: Template | None = None
        self.context: Any = None
        if self.start_method != TEMPLATE:
            self.context = multiprocessing_context(self.start_method, self.preload)
        self.blas_threads = max(1, available_cpus() // workers)
        self.workers: dict[int, _Worker] = {}
        self.retiring: list[Any] = []
        self.functions: dict[int, FunctionSpec] = {}
        self._fn_ids = itertools.count(1)
        self.payloads: dict[tuple[int, bool], bytes] = {}
        self.closed = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        _LIVE.add(self)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self.start_method == TEMPLATE and self.template is None:
            inherited = {INHERITED_TOKEN: self.inherit} if self.inherit else {}
            if self.inherit_items is not None:
                inherited[ITEMS_TOKEN] = self.inherit_items
            tuning.prepare_pinning(self.blas_threads)  # before the fork: workers inherit it
            self.template = Template(inherited, self.init, self.blas_threads)
        missing = self.size - len(self.workers)
        if missing > 0:
            self._spawn(missing)

    def _spawn(self, count: int = 1) -> int:
        """Start ``count`` workers; returns the last one's id."""
        last = 0
        if self.template is not None:
            started: list[int] = []
            try:
                self._spawn_from_template(self.template, count, started)
                return started[-1]
            except TemplateGone:
                log.debug("the fork template is gone; new workers come from the forkserver")
                self.template.close()
                self.template = None
                self.context = multiprocessing_context("forkserver", self.preload)
            count -= len(started)  # those the template forked before it went are running
            last = started[-1] if started else 0
        for _ in range(count):
            last = self._spawn_from_context()
        return last

    def _spawn_from_template(self, template: Template, count: int, started: list[int]) -> None:
        """Requests sent ahead of the replies, so the template forks workers back to back;
        at most :data:`REQUESTS_AHEAD` unanswered, or with hundreds of workers both sides
        could block sending into full socket buffers. ``started`` gets each new pid."""
        asked: list[tuple[Any, Any]] = []
        try:
            for _ in range(count):
                if len(asked) >= REQUESTS_AHEAD:
                    self._take_started(template, asked, started)
                ours, theirs = wire_pair()
                slot_fd, slot_map = new_slot()
                asked.append((ours, slot_map))
                try:
                    template.request(theirs.fileno(), slot_fd, main_reference())
                finally:
                    theirs.close()
                    os.close(slot_fd)
            while asked:
                self._take_started(template, asked, started)
        finally:
            for ours, slot_map in asked:  # the template died before forking these
                ours.close()
                slot_map.close()

    def _take_started(self, template: Template, asked: list, started: list[int]) -> None:
        pid, pidfd = template.started()
        ours, slot_map = asked.pop(0)
        view = starting_slot(memoryview(slot_map).cast("d"))
        process = ForkedWorker(pid, template, pidfd)
        self._add(process, ours, view, inherits=True, slot_map=slot_map)
        started.append(pid)

    def _spawn_from_context(self) -> int:
        parent_end, child_end = self.context.Pipe(duplex=True)
        slot = self.context.RawArray("d", SLOT_SIZE)
        view = starting_slot(memoryview(slot).cast("B").cast("d"))
        init = None
        if self.init:
            import cloudpickle

            init = cloudpickle.dumps(self.init)
        process = self.context.Process(
            target=worker.main,
            args=(child_end, slot, os.getpid(), self.blas_threads, init, main_reference()),
            name="poolrun-worker",
        )
        with main_hidden():
            process.start()
        child_end.close()
        self._add(process, parent_end, view, inherits=False)
        return process.pid

    def _add(self, process: Any, conn: Any, view: memoryview, **extra: Any) -> None:
        pid = process.pid
        channel = Channel(conn)
        self.workers[pid] = _Worker(process, conn, view, channel, **extra)
        log.debug("started worker {}", pid)

    def worker_ids(self) -> list[int]:
        return list(self.workers)

    def describe_worker(self, worker_id: int) -> str:
        return f"pid {worker_id}"

    def replace(self, worker_id: int) -> int:
        gone = self.workers.pop(worker_id, None)
        if gone is not None:
            if gone.process.is_alive():
                gone.process.kill()
                gone.process.join(timeout=5)
            gone.close()
        return self._spawn()

    def retire(self, worker_id: int) -> int:
        """Ask an idle worker to exit, and start its replacement right away."""
        old = self.workers.pop(worker_id)
        with contextlib.suppress(OSError):
            old.channel.send(worker.dumps(("stop",)))
        old.close()
        self.retiring.append(old.process)
        log.debug("recycling worker {} (memory)", worker_id)
        return self._spawn()

    def close(self, wait: bool = True) -> None:
        """Stop every worker: politely when ``wait``, else at once (SIGKILL)."""
        if self.closed:
            return
        self.closed = True
        processes = [w.process for w in self.workers.values()] + self.retiring
        for w in self.workers.values():
            try:
                if wait:
                    w.channel.send(worker.dumps(("stop",)))
            except OSError:
                pass
        sentinels = [p.sentinel for p in processes]
        if self.template is not None:
            self.template.hang_up()
            sentinels.append(self.template.pidfd)
        if wait:
            wait_all(sentinels, timeout=5)
        for process in processes:
            if process.is_alive():
                process.kill()
        for process in processes:
            process.join(timeout=5)
        for w in self.workers.values():
            w.close()
        self.workers.clear()
        self.retiring.clear()
        if self.template is not None:
            self.template.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        _LIVE.discard(self)

    # -- running batches ---------------------------------------------------------------

    def register(self, spec: FunctionSpec) -> int:
        fn_id = next(self._fn_ids)  # never reused: workers cache functions by id
        self.functions[fn_id] = spec
        return fn_id

    def unregister(self, fn_id: int) -> None:
        self.functions.pop(fn_id, None)
        for inherited in (False, True):
            self.payloads.pop((fn_id, inherited), None)
        for w in self.workers.values():
            w.fn_ids.discard(fn_id)

    def _function_payload(self, fn_id: int, w: _Worker) -> bytes:
        """Pickled once per function and kind of worker: a template's workers already hold
        the one-shot call's function, so only its options travel to them."""
        spec = self.functions[fn_id]
        inherited = w.inherits and self.inherit is not None and spec.fn is self.inherit
        key = (fn_id, inherited)
        if key not in self.payloads:
            self.payloads[key] = spec.payload(INHERITED_TOKEN if inherited else None)
        return self.payloads[key]

    def submit(
        self, worker_id: int, batch: int, fn_id: int, payload: bytes, bulk: bool = False
    ) -> None:
        w = self.workers[worker_id]
        if fn_id not in w.fn_ids:
            w.channel.send(worker.dumps(("fn", fn_id, self._function_payload(fn_id, w))))
            w.fn_ids.add(fn_id)
        w.channel.send(worker.dumps(("batch", batch, fn_id, payload, bulk)))

    def inherited_items(self, worker_id: int, items: object) -> int | None:
        w = self.workers.get(worker_id)
        held = w is not None and w.inherits and items is self.inherit_items and items is not None
        return ITEMS_TOKEN if held else None

    def starting(self, worker_id: int) -> tuple[str, int, float] | None:
        slot = self.workers[worker_id].slot
        pos = slot[SLOT_POS]
        if pos == STARTING:
            return "initializer", 0, slot[SLOT_STARTED]
        if pos == LOADING:
            return "loading", int(slot[SLOT_BATCH]), slot[SLOT_STARTED]
        return None

    def running(self, worker_id: int) -> tuple[int, int, float] | None:
        slot = self.workers[worker_id].slot
        pos = slot[SLOT_POS]
        if pos < 0:
            return None
        return int(slot[SLOT_BATCH]), int(pos), slot[SLOT_STARTED]

    def rss(self, worker_id: int) -> int | None:
        """The worker's private memory (pages it shares with the template do not count)."""
        w = self.workers.get(worker_id)
        if w is None:
            return None
        if w.memory is None:
            from ..memory import PrivateMemory  # only runs with max_rss need it

            w.memory = PrivateMemory(w.pid)
        return w.memory.read()

    def kill(self, worker_id: int, cause: str) -> None:
        w = self.workers.get(worker_id)
        if w is not None and w.kill_cause is None:
            w.kill_cause = cause
            w.process.kill()

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"!")

    def wait(self, timeout: float | None) -> list[Event]:
        """Block until a result, a death, writable room for a pending send, ``wake()`` or
        ``timeout``."""
        poller = select.poll()
        watched: dict[int, tuple[str, Any]] = {self._wake_r: ("wake", None)}
        for w in self.workers.values():
            watched[w.conn.fileno()] = ("conn", w)
            watched[w.process.sentinel] = ("dead", w)
            if w.channel.wants_write:
                watched[w.channel.fileno()] = ("send", w)
                poller.register(w.channel.fileno(), select.POLLOUT)
        for process in self.retiring:
            watched[process.sentinel] = ("retired", process)
        for fd, (kind, _) in watched.items():
            if kind != "send":
                poller.register(fd, select.POLLIN)
        ready = poller.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999)))
        events: list[Event] = []
        dead = []
        for fd, mask in ready:
            kind, who = watched[fd]
            if kind == "wake":
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            elif kind == "send":
                who.channel.flush()
            elif kind == "conn" and mask & _READABLE:
                self._drain(who, events)
            elif kind == "dead":
                dead.append(who)
            elif kind == "retired":
                who.join()
                self.retiring.remove(who)
        for w in dead:
            self._drain(w, events)
            events.append(self._death(w))
        return events

    def _drain(self, w: _Worker, events: list[Event]) -> None:
        """Every message waiting on the worker's pipe (``Connection.poll`` would build a
        selector per check; the worker's own poll object is made once)."""
        try:
            while not w.conn.closed and w.readable.poll(0):
                events.append(self._event(w, unpack(w.conn.recv_bytes())))
        except (EOFError, OSError):
            pass  # died mid-message; the sentinel reports the death

    def _event(self, w: _Worker, message: tuple) -> Event:
        kind = message[0]
        if kind == "done":
            return BatchDone(w.pid, *message[1:])
        if kind == "rss":
            return BatchMemory(w.pid, *message[1:])
        if kind == "bad-batch":
            return BatchRejected(w.pid, *message[1:])
        if kind == "fn-failed":
            return FunctionFailed(w.pid, *message[1:])
        if kind == "init-failed":
            _, _, kind_name, text, tb = message
            raise SetupFailed(f"initializer failed in worker {w.pid}: {kind_name}: {text}\n{tb}")
        raise RuntimeError(f"unexpected message from worker {w.pid}: {kind!r}")

    def _death(self, w: _Worker) -> WorkerDied:
        w.process.join(timeout=5)
        running = self.running(w.pid)
        cause = w.kill_cause or death_cause(w.process.exitcode)
        log.debug("worker {} ended: {}", w.pid, cause)
        return WorkerDied(
            worker=w.pid,
            cause=cause,
            running=running[:2] if running else None,
            detail=f"exit code {w.process.exitcode}",
        )
