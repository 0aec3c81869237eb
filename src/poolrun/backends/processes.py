"""How a local worker process starts, and how its end is read.

Which way workers start (:func:`choose_start`: the fork template when the caller is safe
to fork, else the forkserver, or a method asked for by name), the ``multiprocessing``
context for the ways other than the template, what a new worker is told before it runs
(where the caller's main module is, a slot that says it is starting), and, once it has
exited, the cause to report. The backend that keeps the workers is
:mod:`poolrun.backends.local`; the template itself, :mod:`poolrun.backends.template`.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from collections.abc import Iterator

from ..slot import SLOT_BATCH, SLOT_POS, SLOT_STARTED, STARTING
from .template import fork_safety

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from typing import Any

TEMPLATE = "fork template"


def multiprocessing_context(method: str, preload: tuple[str, ...]) -> Any:
    """The ``multiprocessing`` context of a start method other than the template; a
    forkserver preloads poolrun's worker module and the function's module."""
    import multiprocessing  # not on the fork template's path: it costs ~7 ms to import

    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(["poolrun.worker", *preload])
    return context


def main_reference() -> dict[str, str]:
    """How a worker can import the supervisor's ``__main__`` module if it ever needs it."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name:
        return {"init_main_from_name": name}
    path = getattr(main, "__file__", None)
    if path and os.path.exists(path):
        return {"init_main_from_path": os.path.abspath(path)}
    return {}  # code on stdin, a REPL, ``python -c``: nothing to import


@contextlib.contextmanager
def main_hidden() -> Iterator[None]:
    """Start a worker without making it re-run the caller's main script.

    spawn and forkserver children re-import the parent's ``__main__`` before anything else,
    so every worker would pay for all the script's imports and top-level code (and die at
    once for code piped on stdin). poolrun ships functions by value with cloudpickle, so a
    worker needs the main module only to unpickle objects of classes defined there; it
    imports it then, once (see ``WorkerLoop.loads``).
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {key: main.__dict__[key] for key in ("__file__", "__spec__") if key in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def starting_slot(view: memoryview) -> memoryview:
    """A new worker's slot: starting since now (the clock of ``start_timeout``)."""
    view[SLOT_BATCH] = 0
    view[SLOT_STARTED] = time.perf_counter()
    view[SLOT_POS] = STARTING
    return view


def choose_start(start_method: str) -> tuple[str, str]:
    """(method, why) for a requested ``start_method``; ``"auto"`` decides here and now."""
    if start_method != "auto":
        return start_method, "asked for by name"
    unsafe = fork_safety()
    if unsafe is None:
        return TEMPLATE, "the caller had no other threads: workers fork from a copy of it"
    return "forkserver", f"forking the caller was unsafe: {unsafe}"


def wait_all(sentinels: list[int], timeout: float) -> None:
    """Until every sentinel (a process's pidfd or ``multiprocessing`` sentinel) is ready."""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    for fd in sentinels:
        poller.register(fd, select.POLLIN)
    waiting = len(sentinels)
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        for fd, _ in poller.poll(int(left * 1000) + 1):
            poller.unregister(fd)
            waiting -= 1


def death_cause(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"worker-died: {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"worker-died: signal {-exitcode}"
    return f"worker-died: exit {exitcode}"
