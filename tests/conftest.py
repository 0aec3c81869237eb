"""Shared fixtures: every test checks that it left no poolrun worker process behind."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time

import psutil
import pytest

sys.path.insert(0, os.path.dirname(__file__))


def _is_helper(proc: psutil.Process) -> bool:
    """multiprocessing's own long-lived helpers (forkserver, resource tracker) are not workers."""
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return True
    return "forkserver" in cmd or "resource_tracker" in cmd or "dask" in cmd or "distributed" in cmd


def live_workers(root: psutil.Process | None = None) -> list[psutil.Process]:
    """Worker processes below ``root``: children of the forkserver, or plain children."""
    root = root or psutil.Process()
    found = []
    for child in root.children(recursive=False):
        try:
            if _is_helper(child):
                found += [
                    p
                    for p in child.children(recursive=True)
                    if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                ]
            elif child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll a condition with a deadline (for facts owned by other processes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class PeakWorkerRss:
    """Samples the RSS of this process's workers every 5 ms while the block runs (with
    psutil, from outside the engine), so a test can check a memory limit really held."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            for proc in live_workers(me):
                with contextlib.suppress(psutil.Error):
                    self.peak = max(self.peak, proc.memory_info().rss)
            self._stop.wait(0.005)

    def __enter__(self) -> PeakWorkerRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(autouse=True)
def no_orphans(request):
    yield
    if request.node.get_closest_marker("dask"):
        return
    ok = wait_until(lambda: not live_workers(), timeout=10)
    assert ok, f"worker processes left behind: {[p.pid for p in live_workers()]}"
