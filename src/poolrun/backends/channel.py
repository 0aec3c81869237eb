"""Non-blocking sends over a worker's pipe, for a single-threaded supervisor.

A worker reads its pipe only between batches, so a blocking write of a batch larger than the
socket buffer would stall the supervisor until that worker finished its current batch (and
could deadlock against a worker blocked sending a large result). Instead each message is
framed exactly as ``Connection.send_bytes`` frames it (so the worker reads it with plain
``recv_bytes``, from a ``Connection`` or a :class:`~.wire.Wire`) and written with
``MSG_DONTWAIT``; what does not fit waits in ``pending`` and is flushed when the
supervisor's poll says the socket is writable again.
No threads, no copies of the payload (``sendmsg`` gathers header and payload).
"""

from __future__ import annotations

import os
import socket
from collections import deque

from .wire import IOV_MAX, blocking, consume, frame

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from typing import Any


class Channel:
    def __init__(self, conn: Any) -> None:
        self.conn = conn
        # blocking, whatever socket.setdefaulttimeout() says (each send says MSG_DONTWAIT);
        # the flag is shared with the pipe's own end, which a worker reads blocking
        self.sock = blocking(socket.socket(fileno=os.dup(conn.fileno())))
        self.pending: deque[memoryview] = deque()
        self.broken = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, payload: bytes) -> None:
        """Queue one message and write as much as the socket takes now."""
        if self.broken:
            return
        frame(self.pending, payload)
        self.flush()

    def flush(self) -> None:
        while self.pending and not self.broken:
            try:
                sent = self.sock.sendmsg(list(self.pending)[:IOV_MAX], [], socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # the worker is gone; its sentinel reports that
                self.broken = True
                self.pending.clear()
                return
            consume(self.pending, sent)

    @property
    def wants_write(self) -> bool:
        return bool(self.pending)

    def close(self) -> None:
        self.pending.clear()
        self.sock.close()
        self.conn.close()
