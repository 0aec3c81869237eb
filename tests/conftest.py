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


TEMPLATE_NAME = "poolrun-tmpl"  # the fork template's process name (``/proc/PID/comm``)


def _is_helper(proc: psutil.Process) -> bool:
    """multiprocessing's own long-lived helpers (forkserver, resource tracker) and poolrun's
    fork template are not workers (their children are)."""
    try:
        cmd = " ".join(proc.cmdline())
        name = proc.name()
    except psutil.Error:
        return True
    helpers = ("forkserver", "resource_tracker", "dask", "distributed")
    return name == TEMPLATE_NAME or any(word in cmd for word in helpers)


def live_templates(root: psutil.Process | None = None) -> list[psutil.Process]:
    """poolrun fork templates below ``root`` that have not exited."""
    found = []
    for child in (root or psutil.Process()).children(recursive=False):
        with contextlib.suppress(psutil.Error):
            if child.name() == TEMPLATE_NAME and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
    return found


def live_workers(root: psutil.Process | None = None) -> list[psutil.Process]:
    """Worker processes below ``root``: children of the forkserver or of a fork template,
    or plain children."""
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
    """Samples the private memory (USS) of this process's workers every 5 ms while the block
    runs (with psutil, from outside the engine), so a test can check a memory limit held."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            for proc in live_workers(me):
                with contextlib.suppress(psutil.Error):
                    # USS: pages a forked worker shares with its template are not its own
                    self.peak = max(self.peak, proc.memory_full_info().uss)
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
    ok = wait_until(lambda: not live_workers() and not live_templates(), timeout=10)
    left = [p.pid for p in live_workers() + live_templates()]
    assert ok, f"worker processes left behind: {left}"
