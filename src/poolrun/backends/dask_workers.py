"""Which Dask worker each of the Dask backend's poolrun worker ids stands for.

An id is bound to one Dask worker's address for its whole life and never reused: when that
worker leaves, or its process is restarted, the supervisor asks for a new id, which takes a
spare live worker or waits for one to join. An id that waits too long fails the run rather
than hang it (without a nanny, nothing replaces a dead worker).

This is bookkeeping only: :class:`~poolrun.backends.dask.DaskBackend` does what binding and
unbinding an id imply (its slot, its tasks, the batches queued for it).
"""

from __future__ import annotations

import itertools
import time

from .. import log

NO_WORKER_SECONDS = 60.0  # a worker id left without any Dask worker this long fails the run


class WorkerBindings:
    """Worker ids and their Dask workers' addresses, the ids still waiting, the live workers."""

    def __init__(self) -> None:
        self.address: dict[int, str] = {}
        self.names: dict[int, str] = {}
        self.unbound: dict[int, float] = {}  # worker id -> since when it waits for a worker
        self.alive: set[str] = set()
        self.recycling: set[str] = set()  # restarted by us: alive, not spare, until they leave
        self._ids = itertools.count(1)

    def ids(self) -> list[int]:
        return [*self.address, *self.unbound]

    def describe(self, worker_id: int) -> str:
        return self.names.get(worker_id, f"dask worker {worker_id} (waiting for a worker)")

    def new_id(self) -> int:
        return next(self._ids)

    def spare(self) -> str | None:
        """A live worker that no id is bound to and that is not restarting."""
        return next(
            (a for a in self.alive if a not in self.recycling and a not in self.address.values()),
            None,
        )

    def wait(self, worker_id: int) -> None:
        """Leave the id unbound until a worker joins; the clock for giving up starts now."""
        self.unbound[worker_id] = time.perf_counter()

    def bind(self, worker_id: int, address: str) -> None:
        self.unbound.pop(worker_id, None)
        self.address[worker_id] = address
        self.names[worker_id] = address
        log.debug("worker {} is Dask worker {}", worker_id, address)

    def unbind(self, worker_id: int) -> str | None:
        """Forget the id; its address, if it had one."""
        self.unbound.pop(worker_id, None)
        return self.address.pop(worker_id, None)

    def joined(self, address: str) -> int | None:
        """The waiting id that a worker that just joined should take, if any."""
        self.alive.add(address)
        if self.unbound and address not in self.address.values():
            return next(iter(self.unbound))
        return None

    def left(self, address: str) -> list[int]:
        """The ids bound to a worker that just left: each has lost its worker."""
        self.alive.discard(address)
        self.recycling.discard(address)
        return [w for w, a in self.address.items() if a == address]

    def deadline(self) -> float | None:
        """When the longest-waiting id gives up (``perf_counter``), if any id waits."""
        return min(self.unbound.values()) + NO_WORKER_SECONDS if self.unbound else None

    def check_stranded(self) -> None:
        if self.unbound:
            waited = time.perf_counter() - min(self.unbound.values())
            if waited > NO_WORKER_SECONDS:
                raise RuntimeError(
                    f"no Dask worker has been available for {waited:.0f} s "
                    f"(the cluster has {len(self.alive)} workers, all in use or restarting)"
                )
