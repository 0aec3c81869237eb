"""Functions the durable tests (checkpoint, queue, rate) run in worker processes.

Each one that logs appends one line per item to the file named by ``POOLRUN_TEST_LOG``
(inherited by the workers) as the item starts, so a test can count what actually ran,
also in a process that was killed with ``kill -9``.
"""

from __future__ import annotations

import os
import time


def _log(x: object) -> None:
    with open(os.environ["POOLRUN_TEST_LOG"], "a") as log:
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
    """Item 7 fails while ``POOLRUN_TEST_FAIL`` is set: a bug, then its fix."""
    _log(x)
    if x == 7 and os.environ.get("POOLRUN_TEST_FAIL"):
        raise ValueError("flagged")
    return x * x
