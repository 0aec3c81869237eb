"""Module-level functions the tests run in worker processes."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from pathlib import Path

import numpy as np


def square(x):
    return x * x


def identity(x):
    return x


def fail_on_three(x):
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x


def fail_on_thousands(x):
    if x % 1000 == 999:
        raise ValueError(f"bad item {x}")
    return x


def describe(x):
    """Something of every shape: dicts, arrays, None pass through recognisably."""
    if isinstance(x, np.ndarray):
        return float(x.sum())
    if isinstance(x, dict):
        return sorted(x.items())
    return x


def eight_mb_array(i):
    return np.full(1_000_000, i, dtype=np.float64)


def segfault_on(k):
    def fn(x):
        if x == k:
            ctypes.string_at(0)
        return x

    return fn


def exit_on(k):
    def fn(x):
        if x == k:
            os._exit(3)
        return x

    return fn


def sigkill_self_on(k):
    def fn(x):
        if x == k:
            os.kill(os.getpid(), signal.SIGKILL)
        return x

    return fn


def slow_square(x):
    time.sleep(0.01)
    return x * x


def hang_on(k):
    def fn(x):
        if x == k:
            time.sleep(3600)
        return x

    return fn


_LEAK: list[bytes] = []


def leak_2mb(x):
    _LEAK.append(os.urandom(2 * 1024 * 1024))
    return x


def allocate_mb(big_item, size_mb):
    def fn(x):
        if x == big_item:
            block = np.ones(size_mb * 1024 * 1024 // 8)
            time.sleep(2)  # hold it long enough to be seen
            return float(block[0])
        return x

    return fn


def flaky_until_third(counter_dir):
    """Fails the first two attempts of every item (attempts are counted in files)."""

    def fn(x):
        path = Path(counter_dir) / f"{x}"
        with path.open("a") as f:
            f.write(".")
        if len(path.read_text()) < 3:
            raise ConnectionError(f"transient failure for {x}")
        return x

    return fn


def troubled(crash_at, hang_at):
    """Every fault the HTML report marks, in one run: leaks 2 MB an item (recycled under a
    ``max_rss``), segfaults on ``crash_at``, hangs on ``hang_at`` (a ``timeout``)."""

    def fn(x):
        _LEAK.append(os.urandom(2 * 1024 * 1024))
        if x == crash_at:
            ctypes.string_at(0)
        if x == hang_at:
            time.sleep(3600)
        return x

    return fn
