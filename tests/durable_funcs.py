"""Functions the durable tests (checkpoint, queue, rate) run in worker processes.

Each one that logs appends one line per item, as the item starts, to the file that
:func:`use_log` named in the worker (an initializer: workers may come from a forkserver
started before the test, so the test's environment is not theirs), or else to the one
``POOLRUN_TEST_LOG`` names (scripts run as their own process). So a test can count what
actually ran, also in a process that was killed with ``kill -9``.
"""

from __future__ import annotations

import os
import time

LOG: str | None = None
FAIL = False


def use_log(path: str, fail: bool = False) -> None:
    """Worker initializer: log to ``path``; ``fail``: :func:`fails_while_flagged` fails."""
    global LOG, FAIL
    LOG, FAIL = path, fail


def logging_to(path: object, fail: bool = False) -> dict[str, object]:
    """The options that make a call's workers log to ``path``."""
    return {"initializer": use_log, "initargs": (str(path), fail)}


def _log(x: object) -> None:
    with open(LOG or os.environ["POOLRUN_TEST_LOG"], "a") as log:
        log.write(f"{x}\n")


def logged_square(x: int) -> int:
    _log(x)
    time.sleep(0.001)
    return x * x


def logged_fail_on_seven(x: int) -> int:
    _log(x)
    if x % 10 == 7:
        raise ValueError(f"seven: {x}")
    return x * x


def started_at(_x: object) -> float:
    """When the item started (a clock shared by every process on the machine)."""
    return time.monotonic()


def fails_while_flagged(x: int) -> int:
    """Item 7 fails while the worker was told to (``use_log(..., fail=True)``): a bug,
    then its fix."""
    _log(x)
    if x == 7 and FAIL:
        raise ValueError("flagged")
    return x * x
