"""A worker's pipe for workers forked from the template: a socket pair, framed as
``multiprocessing.connection.Connection`` frames its messages.

Why not ``multiprocessing.Pipe``: importing ``multiprocessing.connection`` brings
``tempfile``, ``subprocess`` and ``multiprocessing.util`` with it, about 12 ms of a one-call
script's run on this project's machines, for the two methods a worker uses. The framing is
the same (a 4-byte big-endian signed length, or -1 and an 8-byte length for messages over
2 GiB), so :class:`~poolrun.backends.channel.Channel` writes to either kind of pipe and a
forkserver worker still gets a real ``Connection``.
"""

from __future__ import annotations

import socket
import struct

_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")


def frame_header(size: int) -> bytes:
    """The length prefix ``Connection.recv_bytes`` (and :meth:`Wire.recv_bytes`) expects."""
    if size > 0x7FFFFFFF:
        return _SHORT.pack(-1) + _LONG.pack(size)
    return _SHORT.pack(size)


class Wire:
    """One end of a socket pair with ``send_bytes``/``recv_bytes``, blocking, as a worker
    uses its pipe (the supervisor sends through a non-blocking ``Channel`` instead)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = blocking(sock)

    @property
    def closed(self) -> bool:
        return self.sock.fileno() < 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def send_bytes(self, data: bytes) -> None:
        header = frame_header(len(data))
        if len(data) < 65536:
            self.sock.sendall(header + data)  # one write for the common small message
        else:
            self.sock.sendall(header)
            self.sock.sendall(data)

    def recv_bytes(self) -> bytes:
        """One whole message; ``EOFError`` when the other end has closed."""
        (size,) = _SHORT.unpack(self._exactly(4))
        if size == -1:
            (size,) = _LONG.unpack(self._exactly(8))
        return self._exactly(size)

    def _exactly(self, size: int) -> bytes:
        data = self.sock.recv(size, socket.MSG_WAITALL)
        if len(data) == size:
            return data
        if not data:
            raise EOFError
        parts = [data]  # interrupted by a signal: gather the rest
        left = size - len(data)
        while left:
            more = self.sock.recv(left, socket.MSG_WAITALL)
            if not more:
                raise EOFError
            parts.append(more)
            left -= len(more)
        return b"".join(parts)

    def close(self) -> None:
        self.sock.close()


def wire_pair() -> tuple[Wire, Wire]:
    """(supervisor's end, worker's end) of a new pipe."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return Wire(blocking(ours)), Wire(blocking(theirs))


def blocking(sock: socket.socket) -> socket.socket:
    """A new socket takes ``socket.setdefaulttimeout()``'s timeout, if the program set one,
    and with it non-blocking I/O: an idle worker's read would time out and a large result's
    write fail. ``multiprocessing.Pipe`` makes its ends blocking for the same reason."""
    sock.setblocking(True)
    return sock
