"""The Dask backend's slot file: the supervisor's view of what each Dask worker is running.

Dask workers on the client's machine attach to this small ``/dev/shm`` file (see
:func:`poolrun.backends.dask_task.poolrun_batch`) and write, per poolrun worker id, the batch
and item they are running, since when, and their pid. Reading it, the supervisor blames the
right item when a worker dies and enforces timeouts and ``max_rss`` as with local workers.
The slot layout both sides agree on is :mod:`poolrun.slot`'s, plus the pid
(:data:`~poolrun.backends.dask_task.SLOT_PID`).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import uuid
from array import array
from collections import deque
from pathlib import Path

import psutil

from ..slot import IDLE, SLOT_POS, SLOT_SIZE
from .dask_task import SLOT_PID, SLOT_WIDTH

SLOT_CAPACITY = 1024  # 32 KiB of /dev/shm; ids bound beyond this go without a slot
SLOT_DIR = Path("/dev/shm")


class SlotFile:
    """The /dev/shm file of (batch, position, item start, pid) slots, one per bound worker id.

    A freed slot goes to the back of the line, so one that a timed-out item's stranded
    thread may still write to is reused last.
    """

    def __init__(self, path: Path) -> None:
        size = SLOT_CAPACITY * SLOT_WIDTH * 8
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.path = path
        self.view = memoryview(self.map).cast("d")
        self.free = deque(range(SLOT_CAPACITY))
        self.index: dict[int, int] = {}
        self.handles: dict[int, psutil.Process] = {}

    @classmethod
    def create(cls) -> SlotFile | None:
        if not SLOT_DIR.is_dir():
            return None
        try:
            return cls(SLOT_DIR / f"poolrun-dask-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        except OSError:
            return None

    def assign(self, worker: int) -> None:
        if self.free:
            index = self.index[worker] = self.free.popleft()
            base = index * SLOT_WIDTH
            self.view[base : base + SLOT_WIDTH] = array("d", [IDLE, IDLE, 0.0, 0.0])

    def release(self, worker: int) -> None:
        index = self.index.pop(worker, None)
        if index is not None:
            self.free.append(index)

    def ref(self, worker: int) -> tuple[str, int] | None:
        index = self.index.get(worker)
        return None if index is None else (str(self.path), index)

    def running(self, worker: int) -> tuple[int, int, float] | None:
        index = self.index.get(worker)
        if index is None or self.view[index * SLOT_WIDTH + SLOT_POS] < 0:
            return None
        batch, pos, started = self.view[index * SLOT_WIDTH : index * SLOT_WIDTH + SLOT_SIZE]
        return int(batch), int(pos), started

    def rss(self, worker: int) -> int | None:
        index = self.index.get(worker)
        pid = 0 if index is None else int(self.view[index * SLOT_WIDTH + SLOT_PID])
        if pid <= 0:
            return None
        try:
            handle = self.handles.get(pid) or self.handles.setdefault(pid, psutil.Process(pid))
            return handle.memory_info().rss
        except psutil.Error:
            return None

    def close(self) -> None:
        self.view.release()
        self.map.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
