"""Module-level functions for the drop-in API tests (Executor, starmap, joblib, asyncio),
run in worker processes."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


class CustomError(Exception):
    """An exception type of the test's own, to check it comes back as itself."""


class NeedsTwoArgs(Exception):
    """Pickles but does not unpickle (its __init__ wants two arguments)."""

    def __init__(self, a, b):
        super().__init__(f"{a} and {b}")


def add(a, b):
    return a + b


def scale(x, factor=1):
    return x * factor


def raise_custom(x):
    raise CustomError(f"custom {x}")


def raise_two_args(x):
    raise NeedsTwoArgs(x, "more")


def raise_unpicklable(x):
    error = ValueError(f"holds a lock {x}")
    error.lock = threading.Lock()  # the exception itself cannot be pickled
    raise error


def pid(_=None):
    return os.getpid()


def wait_for_file(started: str, release: str, limit: float = 30.0) -> str:
    """Say it started, then block until ``release`` exists (the test decides when)."""
    Path(started).touch()
    deadline = time.monotonic() + limit
    while not Path(release).exists():
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.005)
    return "released"


def record(path: str, i: int) -> int:
    """Append ``i`` to ``path``: the file says which calls ran."""
    with open(path, "a") as f:
        f.write(f"{i}\n")
    return i


def sleep_return(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def failing_initializer():
    raise RuntimeError("no model file")
