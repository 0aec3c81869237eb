"""An open-ended input: items put while the call that reads them is already running.

A ``map`` reads an iterable that says when it ends by ending. An :class:`~poolrun.Executor`
cannot: its ``submit`` calls arrive one at a time, for as long as it lives, and each must
start as soon as a worker is free. So the executor runs one long call whose input is a
:class:`Feed`; the call (see ``calls.Call``) asks :meth:`Feed.pending` before it reads:

* ``0``: nothing now, but more may come; the call is not exhausted, the supervisor's loop
  waits (the next :meth:`put` wakes it);
* ``None``: closed and drained; the call ends once its last batch is back.

Batches are cut from whatever is pending when a worker is free, so many small ``put`` calls
share a batch (one round trip) without anyone waiting for a batch to fill.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from typing import Any


class Feed:
    """A thread-safe queue of items for one call; ``put`` from any thread, ``close`` once."""

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._lock = threading.Lock()
        self.closed = False
        # set by ``Supervisor.open``: wakes the loop that may be blocked waiting for input
        self.wake: Callable[[], None] = _nothing

    def put(self, item: Any) -> bool:
        """Add ``item``; ``False`` (and nothing added) once the feed is closed."""
        with self._lock:
            if self.closed:
                return False
            self._items.append(item)
            first = len(self._items) == 1
        if first:  # the loop may be asleep on an empty feed; otherwise it will come back
            self.wake()
        return True

    def close(self) -> None:
        """No more items: the call ends once those still pending have run."""
        with self._lock:
            self.closed = True
        self.wake()

    def take_pending(self) -> list[Any]:
        """Remove and return the items not yet read (an executor cancelling them)."""
        with self._lock:
            taken = list(self._items)
            self._items.clear()
        return taken

    def pending(self) -> int | None:
        """Items waiting now; ``None`` once closed (nothing is waiting then)."""
        if self.closed and not self._items:
            return None
        return len(self._items)

    def __iter__(self) -> Feed:
        return self

    def __next__(self) -> Any:
        try:
            return self._items.popleft()
        except IndexError:
            raise StopIteration from None


def _nothing() -> None:
    pass
