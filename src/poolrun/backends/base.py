"""The seam between the supervisor and the place batches run.

The supervisor owns everything that is policy: batching, sizing, ordering, retries,
splitting after a crash, the report and the trace. A backend only has to run a batch on a
named worker and report back, as the events below, what happened: a batch finished, a
worker's memory after a batch, a worker died (and which item it was running).
"""

from __future__ import annotations

import contextlib
from collections import namedtuple
from collections.abc import Callable

from ..worker import dumps

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from typing import Any


# The events are named tuples: one is made per batch, and a named tuple is the cheapest
# record to make and to define (a dataclass costs ~0.7 ms at import, and the dataclasses
# module itself ~8 ms, on the path of every first call).

BatchDone = namedtuple("BatchDone", "worker batch values durations errors started ended rss_start")
BatchDone.__doc__ = """A batch finished: its values, item durations and only the failed
items' errors (position, type, message, traceback, retryable)."""

BatchMemory = namedtuple("BatchMemory", "worker batch rss_start rss_peak max_rss")
BatchMemory.__doc__ = "A worker's private memory before and after a batch, and its peak."

BatchRejected = namedtuple("BatchRejected", "worker batch type message traceback")
BatchRejected.__doc__ = "The worker could not unpickle the batch: every item in it fails."


class FunctionFailed(namedtuple("FunctionFailed", "worker fn_id type message traceback")):
    """A worker could not load a call's function (it exits after saying so): the call fails."""

    __slots__ = ()

    def __str__(self) -> str:
        return f"{self.type}: {self.message}\n{self.traceback}"


WorkerDied = namedtuple("WorkerDied", "worker cause running detail", defaults=("",))
WorkerDied.__doc__ = """A worker is gone. ``cause``: "worker-died: SIGSEGV", "timeout",
"memory-limit", ...; ``running``: (batch, position) of the item it was running, if known;
``detail``: its exit code or address, kept in the trace marker."""


class FunctionSpec:
    """A call's function and the options its workers need to run it."""

    __slots__ = ("fn", "max_rss", "retry_on", "timeout")

    def __init__(
        self,
        fn: Callable[[Any], Any],
        retry_on: tuple[type[BaseException], ...],
        timeout: float | None,
        max_rss: int | None,
    ) -> None:
        self.fn, self.retry_on, self.timeout, self.max_rss = fn, retry_on, timeout, max_rss

    def payload(self, token: int | None = None) -> bytes:
        """What a worker loads (``worker.load_function``). With ``token``, the worker
        already holds the function (inherited from its fork template): it is left out."""
        if token is not None:  # plain pickle, and no cloudpickle import on the fast path
            with contextlib.suppress(Exception):
                return dumps((None, self.retry_on, self.timeout, self.max_rss, token))
        import cloudpickle

        fn = None if token is not None else self.fn
        return cloudpickle.dumps((fn, self.retry_on, self.timeout, self.max_rss, token))


class SetupFailed(RuntimeError):
    """A worker could not start (initializer raised, function cannot be loaded): fatal."""


Event = BatchDone | BatchMemory | BatchRejected | FunctionFailed | WorkerDied


class Backend:
    """What the supervisor needs from a place that runs batches (the local and Dask backends
    implement it; a plain class, not a ``typing.Protocol``, to keep typing off the import path)."""

    name: str
    start_method: str  # how workers start: "fork template", "forkserver", "dask", ...
    start_reason: str  # why that way, for the report
    # can its workers run a batch in bulk (``submit(bulk=True)``): fast, but a crash then
    # tells only the batch, not the item (see ``items.run_batch``)
    runs_in_bulk = False

    def start(self) -> None: ...

    def worker_ids(self) -> list[int]: ...

    def describe_worker(self, worker: int) -> str: ...

    def register(self, spec: FunctionSpec) -> int:
        """Make a function known to the workers (shipped lazily); returns its id."""
        ...

    def unregister(self, fn_id: int) -> None:
        """The call that registered it has ended: forget the function."""
        ...

    def submit(
        self, worker: int, batch: int, fn_id: int, payload: bytes, bulk: bool = False
    ) -> None: ...

    def inherited_items(self, worker: int, items: object) -> int | None:
        """The token under which ``worker`` holds ``items`` already (a one-shot call's input,
        forked with its template), so a batch can name a slice of it instead of carrying
        its items pickled; ``None`` where it does not."""
        return None

    def wait(self, timeout: float | None) -> list[Event]: ...

    def wake(self) -> None:
        """Make a ``wait`` blocked in another thread return now (safe from any thread)."""
        ...

    def running(self, worker: int) -> tuple[int, int, float] | None:
        """(batch, position, started) of the item the worker is running now, if any."""
        ...

    def starting(self, worker: int) -> tuple[str, int, float] | None:
        """("initializer", 0, since) or ("loading", fn_id, since) while a worker is not yet
        ready to run items; ``None`` once it is (or where the backend cannot tell)."""
        ...

    def rss(self, worker: int) -> int | None: ...

    def kill(self, worker: int, cause: str) -> None: ...

    def retire(self, worker: int) -> int:
        """Replace a healthy worker once it is idle (memory recycling); returns the new id."""
        ...

    def replace(self, worker: int) -> int:
        """Start a fresh worker in place of a dead or retired one; returns its id."""
        ...

    def close(self, wait: bool = True) -> None: ...
