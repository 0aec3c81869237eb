"""The loop that runs inside each worker process, and the batch pipeline Dask tasks share.

A worker lives for many batches. It gets the user's function once, either handed down by the
fork template it was forked from (:data:`INHERITED`, nothing pickled) or cloudpickled over
its pipe, then batches of items. One item's exception never costs its neighbours: each item
runs in its own ``try`` and is timed, except tiny items, which run in bulk (see
:mod:`poolrun.items`). It sends back two messages per batch, in one write: the result
(values, durations, only the failed items' errors) and a small one with its memory
(measured after the result was pickled, so the peak includes the message).

Three things keep a worker from ever being a problem for its supervisor:

* it reads its pipe only between batches, in its main thread (a reader thread would fight the
  hot loop for the GIL); the supervisor never blocks on a send (see ``backends.channel``), so
  a worker busy sending a large result cannot deadlock against it, and when the pipe reaches
  EOF the supervisor is gone and the worker exits;
* a watcher thread waits on the supervisor's pidfd and exits the worker when the supervisor
  dies, even mid-item (no orphans after ``kill -9`` of the supervisor);
* a small shared-memory slot always says which batch and item is running and since when, so
  after a crash, a timeout or a memory kill the supervisor knows exactly which item was at
  fault without any per-item messages.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

# The C pickler itself: ``pickle`` is a Python wrapper around it whose import (with ``re``)
# costs a one-call script ~5 ms, for the same two functions.
from _pickle import dumps as _dumps
from _pickle import loads
from _thread import start_new_thread
from array import array
from collections import deque, namedtuple
from collections.abc import Callable

from .backends.wire import IOV_MAX, PROTOCOL, Message, consume, frame, pack
from .items import TIMED_ITEM_SECONDS, Failure, Uniform, describe_exception, run_batch
from .slot import IDLE, LOADING, SLOT_BATCH, SLOT_POS, SLOT_STARTED
from .tuning import pin_native_threads, tune_malloc

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from typing import Any

EXIT_SUPERVISOR_GONE = 70
EXIT_INIT_FAILED = 71

# Functions a fork template handed down to the workers it forks, by token: a worker forked
# from the caller's copy already holds the function and all it captures, so nothing is sent.
INHERITED: dict[int, Any] = {}


# A batch's items named by their positions (a range, or a list) in ``INHERITED[token]``: a
# one-shot call's input, which the worker holds since its fork, so items are never pickled.
InheritedItems = namedtuple("InheritedItems", "token positions")


def _inherited(held: InheritedItems) -> Any:
    source, positions = INHERITED[held.token], held.positions
    if positions.__class__ is range:
        return source[positions.start : positions.stop]
    return [source[i] for i in positions]


def dumps(message: Any) -> bytes:
    return _dumps(message, protocol=PROTOCOL)


def encode_result(
    batch_id: int,
    values: list[Any],
    durations: array,
    errors: list[Failure] | None,
    extra: tuple,
) -> Message:
    """Pickle a batch result; values that cannot be pickled become those items' errors.
    Buffers a value wraps in a ``PickleBuffer`` travel uncopied (see ``wire.pack``)."""
    try:
        return pack(("done", batch_id, values, durations, errors, *extra))
    except Exception:
        pass
    errors = list(errors or [])
    for pos, value in enumerate(values):
        try:
            dumps(value)
        except Exception as exc:
            values[pos] = None
            kind, message, _ = describe_exception(exc, skip_frames=0)
            errors.append((pos, kind, f"result cannot be sent back: {message}", "", False, None))
    errors.sort()
    return pack(("done", batch_id, values, durations, errors, *extra))


def send(conn: Any, *messages: Message) -> None:
    """Send to the supervisor in one write; if it is gone, exit quietly (nobody is left to
    read a traceback).

    One write for a batch's result and its memory report: each write wakes the supervisor,
    and on a machine with no idle core a woken supervisor takes a worker's core for as long
    as it runs, so two writes cost about twice as much as one.
    """
    parts: deque[memoryview] = deque()
    frame(parts, *messages)
    fd = conn.fileno()
    try:
        while parts:  # a large result may go out in several writes
            consume(parts, os.writev(fd, list(parts)[:IOV_MAX]))
    except OSError:
        os._exit(EXIT_SUPERVISOR_GONE)


def _watch_supervisor(pid: int) -> None:
    """Exit this worker as soon as the supervisor process is gone."""
    try:
        poller = select.poll()  # not select(), which refuses descriptors past 1023
        poller.register(os.pidfd_open(pid), select.POLLIN)
        poller.poll()
    except (AttributeError, OSError):
        import psutil

        while psutil.pid_exists(pid):
            time.sleep(0.5)
    os._exit(EXIT_SUPERVISOR_GONE)


class BatchPipeline:
    """What happens to a batch inside any worker, local or Dask: unpickle the items, run
    them, choose timed or untimed for the next batch, pickle the result, read the memory."""

    def __init__(self, just_forked: bool = False) -> None:
        from .memory import PrivateMemory  # not at import: the supervisor never needs psutil

        self.timed = True
        self.memory = PrivateMemory(just_forked=just_forked)

    def run(
        self,
        batch_id: int,
        payload: bytes,
        fn: Callable[[Any], Any],
        retry_on: tuple[type[BaseException], ...],
        slot: memoryview,
        track_start: bool,
        loads: Callable[[bytes], Any] = loads,
        runner: Callable[[list[Any]], Any] | None = None,
        extra: tuple = (),
        bulk: bool = False,
    ) -> tuple[bytes, int, int]:
        """(message, private bytes before, private bytes after, the message included).

        ``runner`` replaces :func:`run_batch` (Dask's watched run); when it returns bytes,
        that is the message (a timeout report) and no result is encoded.
        """
        rss_start = self.memory.read() or 0
        t_start = time.perf_counter()
        try:
            items = loads(payload)
            if items.__class__ is InheritedItems:
                items = _inherited(items)
        except BaseException as exc:
            return dumps(("bad-batch", batch_id, *describe_exception(exc, 0))), rss_start, rss_start
        del payload
        began = time.perf_counter()
        if runner is None:
            outcome = run_batch(fn, items, batch_id, slot, retry_on, track_start, self.timed, bulk)
        else:
            outcome = runner(items)
            if isinstance(outcome, bytes):
                return outcome, rss_start, self.memory.read() or 0
        values, durations, errors = outcome
        # by the items' own times where they were timed: a batch of one item also carries
        # the batch's fixed costs, which would keep a worker timing items of 0.1 µs
        spent = time.perf_counter() - began if isinstance(durations, Uniform) else sum(durations)
        self.timed = spent >= TIMED_ITEM_SECONDS * len(items)
        del items, outcome
        ended = time.perf_counter()
        message = encode_result(
            batch_id, values, durations, errors, (t_start, ended, rss_start, *extra)
        )
        return message, rss_start, self.memory.read() or 0


def load_function(payload: bytes) -> tuple[Any, tuple[type[BaseException], ...], Any, Any]:
    """(fn, retry_on, timeout, max_rss) from a registered payload; the function itself may
    be a token for one this process inherited from its fork template."""
    fn, retry_on, timeout, max_rss, token = loads(payload)  # cloudpickle's too
    if token is not None:
        fn = INHERITED[token]
    return fn, retry_on, timeout, max_rss


class WorkerLoop:
    """State of one worker process: its pipe, its slot and the functions it has been sent."""

    def __init__(
        self,
        conn: Any,
        slot: Any,
        blas_threads: int | None,
        main_ref: dict[str, str] | None = None,
        forked: bool = False,  # from the fork template: it shares the caller's memory
    ) -> None:
        self.conn = conn
        self.main_ref = main_ref
        self.slot = memoryview(slot).cast("B").cast("d")
        self.blas_threads = blas_threads
        self.functions: dict[int, tuple[Any, ...]] = {}
        self.pipeline = BatchPipeline(just_forked=forked)
        global _serving_slot
        _serving_slot = self.slot

    def serve(self) -> None:
        while True:
            try:
                message = loads(self.conn.recv_bytes())
            except (EOFError, OSError):
                os._exit(EXIT_SUPERVISOR_GONE)
            kind = message[0]
            if kind == "batch":
                self.run(*message[1:])
            elif kind == "fn":
                self.install(*message[1:])
            elif kind == "stop":
                # Nothing is left to send; skip interpreter teardown, which can take longer
                # than a whole batch of small items.
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)

    def loads(self, payload: bytes) -> Any:
        """Unpickle a batch; objects of classes from the caller's main script make this
        worker import that script (once, as ``__mp_main__``) and try again."""
        try:
            return loads(payload)
        except (AttributeError, ImportError) as exc:
            if not self.main_ref or "__main__" not in str(exc):
                raise
        from multiprocessing import spawn

        main_ref, self.main_ref = self.main_ref, None
        spawn.prepare(main_ref)
        return loads(payload)

    def install(self, fn_id: int, payload: bytes) -> None:
        self.slot[SLOT_BATCH], self.slot[SLOT_STARTED] = fn_id, time.perf_counter()
        self.slot[SLOT_POS] = LOADING
        try:
            fn, retry_on, timeout, max_rss = load_function(payload)
        except BaseException as exc:
            # The supervisor fails the run on this message; batches already on their way
            # would only meet a missing function, so this worker stops here.
            send(self.conn, dumps(("fn-failed", fn_id, *describe_exception(exc, 0))))
            os._exit(EXIT_INIT_FAILED)
        if len(self.functions) >= 8:
            self.functions.pop(next(iter(self.functions)))
        self.functions[fn_id] = (fn, retry_on, timeout is not None)
        tune_malloc(memory_limited=max_rss is not None)
        if max_rss is not None:
            self.pipeline.memory.stop_deferring()
        pin_native_threads(self.blas_threads)
        self.slot[SLOT_POS] = IDLE

    def run(self, batch_id: int, fn_id: int, payload: bytes, bulk: bool) -> None:
        fn, retry_on, track_start = self.functions[fn_id]
        message, rss_start, rss_peak = self.pipeline.run(
            batch_id, payload, fn, retry_on, self.slot, track_start, loads=self.loads, bulk=bulk
        )
        del payload
        peak = self.pipeline.memory.peak
        send(self.conn, message, dumps(("rss", batch_id, rss_start, rss_peak, peak)))


def main(
    conn: Any,
    slot: Any,
    supervisor_pid: int,
    blas_threads: int | None,
    initializer: bytes | tuple[Callable[..., Any], tuple[Any, ...]] | None,
    main_ref: dict[str, str] | None = None,
    forked: bool = False,
) -> None:
    """Entry point of a worker process: the ``target`` of its ``multiprocessing.Process``,
    or called in the child after the fork template forked it (``forked``; ``initializer``
    then comes as the (function, args) pair itself, inherited, not pickled)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    # ``_thread``, not ``threading``: ``Thread.start`` waits until the new thread runs, which
    # on a busy machine held a fresh worker ~2 ms before its first batch
    start_new_thread(_watch_supervisor, (supervisor_pid,))
    pin_native_threads(blas_threads)
    if initializer is not None:
        try:
            init, initargs = loads(initializer) if isinstance(initializer, bytes) else initializer
            init(*initargs)
        except BaseException as exc:
            send(conn, dumps(("init-failed", os.getpid(), *describe_exception(exc))))
            os._exit(EXIT_INIT_FAILED)
    loop = WorkerLoop(conn, slot, blas_threads, main_ref, forked)
    loop.slot[SLOT_POS] = IDLE  # started: the supervisor's start-up deadline is met
    loop.serve()


# -- items that are many inputs in one ----------------------------------------------------

_serving_slot: memoryview | None = None  # this worker's slot, once its loop serves


def restart_item_clock() -> None:
    """Restart the running item's timeout clock. A function whose item holds many inputs
    (the command line's byte ranges of a file) calls it before each input, so a per-item
    ``timeout`` limits each input, not the whole item."""
    if _serving_slot is not None:
        _serving_slot[SLOT_STARTED] = time.perf_counter()
