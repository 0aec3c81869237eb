"""A worker's pipe for workers forked from the template: a socket pair, framed as
``multiprocessing.connection.Connection`` frames its messages.

Why not ``multiprocessing.Pipe``: importing ``multiprocessing.connection`` brings
``tempfile``, ``subprocess`` and ``multiprocessing.util`` with it, about 12 ms of a one-call
script's run on this project's machines, for the two methods a worker uses. The framing is
the same (a 4-byte big-endian signed length, or -1 and an 8-byte length for messages over
2 GiB), so :class:`~poolrun.backends.channel.Channel` writes to either kind of pipe and a
forkserver worker still gets a real ``Connection``.

A message may carry large buffers out of band (pickle protocol 5): :func:`pack` returns its
pickle and the buffers as separate parts of one frame, and :func:`unpack` hands the buffers
to the unpickler as views of the frame. Only an :class:`OutOfBand` wrapped in a
``pickle.PickleBuffer`` travels so (a JSONL range's output block). Pickled in band, a block
of a few MB goes through the pickler's growing buffer at ~1 GB/s on this project's
machines, against ~10 GB/s for the copy into the socket, and the supervisor's unpickling
copied it once more. Every other buffer stays in band: a numpy array offers its data as a
``PickleBuffer`` too, and out of band it would come back read-only, unaligned, and holding
its whole frame alive.
"""

from __future__ import annotations

import socket
import struct
from _pickle import PickleBuffer, dumps, loads
from collections import deque

_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")
IOV_MAX = 512  # buffers handed to one gathering write
PROTOCOL = 5
_OUT_OF_BAND = b"B"  # first byte of a packed message with buffers (a pickle's is 0x80)
_COUNT = struct.Struct("!I")

Message = bytes | list  # a pickle, or the parts of one frame: header, pickle, buffers


class OutOfBand(bytearray):
    """A bytearray that :func:`pack` sends after the pickle, uncopied, when a
    ``PickleBuffer`` wraps it; the receiver gets a read-only view of the frame."""


def pack(message: object) -> Message:
    """``message`` pickled; its ``PickleBuffer`` objects over an :class:`OutOfBand` travel
    after it, uncopied."""
    views: list[memoryview] = []

    def in_band(buffer: PickleBuffer) -> bool:  # a false answer sends it out of band
        view = buffer.raw()
        if isinstance(view.obj, OutOfBand):
            views.append(view)
            return False
        return True

    data = dumps(message, protocol=PROTOCOL, buffer_callback=in_band)
    if not views:
        return data
    sizes = struct.pack(f"!{len(views) + 1}Q", len(data), *(v.nbytes for v in views))
    return [_OUT_OF_BAND + _COUNT.pack(len(views)) + sizes, data, *views]


def unpack(data: bytes) -> object:
    """A message :func:`pack` made (its buffers come back as read-only views of ``data``)."""
    if data[:1] != _OUT_OF_BAND:
        return loads(data)
    view = memoryview(data)
    (count,) = _COUNT.unpack_from(view, 1)
    at = 1 + _COUNT.size
    sizes = struct.unpack_from(f"!{count + 1}Q", view, at)
    at += 8 * (count + 1)
    parts = []
    for size in sizes:
        parts.append(view[at : at + size])
        at += size
    return loads(parts[0], buffers=parts[1:])


def joined(message: Message) -> bytes:
    """A packed message as one ``bytes`` (for a transport that takes one object)."""
    return message if isinstance(message, bytes) else b"".join(message)


def frame_header(size: int) -> bytes:
    """The length prefix ``Connection.recv_bytes`` (and :meth:`Wire.recv_bytes`) expects."""
    if size > 0x7FFFFFFF:
        return _SHORT.pack(-1) + _LONG.pack(size)
    return _SHORT.pack(size)


def frame(pending: deque[memoryview], *messages: Message) -> None:
    """Queue each message behind its length prefix, for a gathering write (no copies)."""
    for message in messages:
        parts = [memoryview(p) for p in (message if isinstance(message, list) else [message])]
        pending.append(memoryview(frame_header(sum(p.nbytes for p in parts))))
        pending.extend(parts)


def consume(pending: deque[memoryview], written: int) -> None:
    """Drop from ``pending`` the ``written`` bytes a (possibly partial) write took."""
    while written:
        head = pending[0]
        if written >= len(head):
            written -= len(head)
            pending.popleft()
        else:
            pending[0] = head[written:]
            written = 0


class Wire:
    """One end of a socket pair, read with ``recv_bytes`` as a ``Connection`` is; both sides
    write to it with :func:`frame` and a gathering write (the supervisor through a
    non-blocking ``Channel``, a worker with ``worker.send``)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = blocking(sock)

    @property
    def closed(self) -> bool:
        return self.sock.fileno() < 0

    def fileno(self) -> int:
        return self.sock.fileno()

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
    return Wire(ours), Wire(theirs)


def blocking(sock: socket.socket) -> socket.socket:
    """A new socket takes ``socket.setdefaulttimeout()``'s timeout, if the program set one,
    and with it non-blocking I/O: an idle worker's read would time out and a large result's
    write fail. ``multiprocessing.Pipe`` makes its ends blocking for the same reason."""
    sock.setblocking(True)
    return sock
