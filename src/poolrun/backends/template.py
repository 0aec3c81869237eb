"""The fork template: a zygote forked from the caller, that every worker is forked from.

Why: a worker started by the forkserver is a fresh interpreter that must import poolrun's
worker module and the function's module, and receive the function pickled, captured state
and all (a 48 MB table is copied into every worker). Forking from the caller costs a few
milliseconds and shares everything copy-on-write. But forking the caller itself is only safe
at a moment when it has no other threads (a lock held by a thread that does not exist in the
child deadlocks it), and later the supervisor may run threads of its own (a progress bar, the
CLI's reader). So at the start of a call, or of a ``Pool``, when the caller is known to be
single-threaded, poolrun forks it once: that *template* stays single-threaded forever, and
every worker, replacements after a crash, a timeout or a recycle included, forks from it.

    supervisor ──(SOCK_SEQPACKET: "spawn" + the worker's pipe and slot fds)──► template
        ▲   ▲                                                                   │ fork()
        │   └──────────────(pipe: batches and results)──────────────► worker ◄──┘
        └──────────────────("started" pid, "exited" pid + wait status)────── template

The template reaps its children and reports each exit status, because only a parent can.
The supervisor watches each worker through a pidfd (a process file descriptor, usable for a
process that is not its child) and signals it through the same pidfd, so a recycled pid can
never be hit. The template exits when the supervisor closes the socket or dies (it polls the
supervisor's pidfd too), so it never outlives the run.

When is forking safe: see :func:`fork_safety`.
"""

from __future__ import annotations

import array
import contextlib
import mmap
import os
import select
import signal
import socket
import sys
import threading
from _pickle import dumps, loads  # not ``pickle``: see ``worker``

from .. import tuning, worker
from ..slot import SLOT_BYTES
from .wire import Wire, blocking

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from typing import Any

_MAX_MESSAGE = 1 << 16
_FD_SIZE = array.array("i").itemsize
PROCESS_NAME = "poolrun-tmpl"  # what ps and psutil show (``/proc/PID/comm``, 15 bytes at most)
WORKER_NAME = "poolrun-worker"
_OPENMP_LIBRARIES = ("libgomp", "libiomp", "libomp")


def fork_safety() -> str | None:
    """Why forking this process now would be unsafe, or ``None`` when it is safe.

    * Not Linux: pidfds and ``memfd`` are Linux facilities (and macOS forks badly).
    * Another Python thread is alive: a lock it holds (the GIL's helpers, logging, an I/O
      buffer, malloc's arenas) would stay locked forever in the child.
    * An OpenMP runtime is loaded: GNU OpenMP's thread pool does not survive a fork, and the
      child hangs in its next parallel region. Loaded is enough to refuse: whether its pool
      has started cannot be told from outside. (The maps file lists the loaded libraries as
      threadpoolctl sees them, without its ~7 ms import and probe on the first call's path.)
    """
    if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"):
        return "not Linux"
    others = threading.active_count() - 1
    if others:
        return f"{others} other thread{'s' * (others > 1)} running"
    openmp = _loaded_openmp()
    if openmp:
        return f"an OpenMP runtime ({openmp}) is loaded"
    return None


def _loaded_openmp() -> str | None:
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                name = line.rsplit("/", 1)[-1]
                if name.startswith(_OPENMP_LIBRARIES):
                    return name.split(".so")[0]
    except OSError:
        return None
    return None


def ready(fd: int, timeout: float | None) -> bool:
    """Is ``fd`` readable within ``timeout`` seconds (``None``: wait)? ``poll``, not
    ``select``, which fails on descriptors past 1023 in a process with many files open."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else int(timeout * 1000)))


class TemplateGone(RuntimeError):
    """The template exited (killed from outside): callers start workers another way."""


class Template:
    """The supervisor's handle on the template process.

    The template is forked with ``os.fork`` rather than as a ``multiprocessing.Process``:
    importing ``multiprocessing`` costs a one-call script ~7 ms, and the template needs none
    of it (it is reaped here, through its pidfd, like the workers it forks).
    """

    def __init__(self, inherited: dict[int, Any], initializer: Any, blas_threads: int) -> None:
        ours, theirs = map(blocking, socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET))
        supervisor_pid = os.getpid()
        for stream in (sys.stdout, sys.stderr):  # or their buffered text is written again
            with contextlib.suppress(Exception):  # by the template and every worker
                stream.flush()
        pid = os.fork()
        if pid == 0:  # the template
            code = 1
            try:
                ours.close()
                _template_main(theirs, supervisor_pid, inherited, initializer, blas_threads)
                code = 0
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        theirs.close()
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.sock = ours
        self.inherited = set(inherited)
        self.exits: dict[int, int] = {}  # pid -> wait status, reported by the template
        self.alive = True

    def request(self, conn_fd: int, slot_fd: int, main_ref: dict[str, str]) -> None:
        """Ask for a worker on this pipe and slot; :meth:`started` gives its pid. Requests
        can be sent ahead: the template answers them in order, so a pool's workers are
        forked back to back without a round trip each."""
        if not self.alive:
            raise TemplateGone("the fork template has exited")
        fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [conn_fd, slot_fd]))]
        try:
            self.sock.sendmsg([dumps(("spawn", main_ref))], fds)
        except OSError:
            self.alive = False
            raise TemplateGone("the fork template has exited") from None

    def started(self) -> tuple[int, int]:
        """(pid, pidfd) of the worker forked for the oldest unanswered request. The pidfd
        comes from the template, which opened it before it could reap the worker: opened
        here from the pid, a worker that exited at once could already be gone."""
        try:
            while True:
                reply = self._receive(block=True)
                if reply[0] == "started":
                    return reply[1], reply[2]
        except (OSError, EOFError):
            self.alive = False
            raise TemplateGone("the fork template has exited") from None

    def exit_status(self, pid: int) -> int | None:
        """The wait status of a worker that has exited (waits for the template's report)."""
        with contextlib.suppress(OSError, EOFError):
            while pid not in self.exits and self.alive:
                self._receive(block=True)
        return self.exits.pop(pid, None)

    def _receive(self, block: bool) -> tuple:
        if not block and not ready(self.sock.fileno(), 0):
            return ("nothing",)
        data, ancillary, _, _ = self.sock.recvmsg(_MAX_MESSAGE, socket.CMSG_SPACE(_FD_SIZE))
        fds = _received_fds(ancillary)
        if not data:
            self.alive = False
            raise EOFError
        message = loads(data)
        if message[0] == "exited":
            self.exits[message[1]] = message[2]
        if message[0] == "started" and fds:
            return (*message, fds.pop(0))
        for fd in fds:
            os.close(fd)
        return message

    def hang_up(self) -> None:
        """Tell the template to exit (it leaves on the socket's end): done as the workers
        are told to stop, so that all of them exit at once rather than one after another."""
        self.alive = False
        with contextlib.suppress(OSError):
            self.sock.close()

    def close(self) -> None:
        """Tell the template to exit and reap it (SIGKILL if it does not go in 5 s)."""
        self.hang_up()
        if not ready(self.pidfd, 5):
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        os.close(self.pidfd)


class ForkedWorker:
    """A worker forked by the template, with the bits of ``multiprocessing.Process`` the
    local backend uses: ``pid``, ``sentinel``, ``is_alive``, ``kill``, ``join``, ``exitcode``."""

    def __init__(self, pid: int, template: Template, pidfd: int) -> None:
        self.pid = pid
        self.template = template
        self.pidfd = pidfd
        self.exitcode: int | None = None
        self._status_known = False

    @property
    def sentinel(self) -> int:
        return self.pidfd

    def is_alive(self) -> bool:
        return not self._status_known and not ready(self.pidfd, 0)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def join(self, timeout: float | None = None) -> None:
        if self._status_known:
            return
        if not ready(self.pidfd, timeout):
            return
        status = self.template.exit_status(self.pid)
        self._status_known = True
        self.exitcode = None if status is None else _exitcode(status)
        with contextlib.suppress(OSError):
            os.close(self.pidfd)


def _exitcode(status: int) -> int:
    """As ``multiprocessing.Process.exitcode``: the exit code, or minus the signal number."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


# -- inside the template process ----------------------------------------------------------


def _template_main(
    sock: socket.socket,
    supervisor_pid: int,
    inherited: dict[int, Any],
    initializer: Any,
    blas_threads: int,
) -> None:
    """Fork workers on request, reap them, report their exits; leave with the supervisor."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    _detach_from_caller()
    _set_process_name(PROCESS_NAME)
    worker.INHERITED.update(inherited)
    tuning.pin_native_threads(blas_threads)  # once here, not in each worker: see tuning

    supervisor = os.pidfd_open(supervisor_pid)
    children: dict[int, int] = {}  # pidfd -> pid
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    poller.register(supervisor, select.POLLIN)
    warm = False
    while True:
        ready = poller.poll(None if warm else 0)
        if not ready:  # idle for the first time: the first workers are forked by now
            tuning.warm_up()
            warm = True
        for fd, _ in ready:
            if fd == supervisor:
                return
            if fd == sock.fileno():
                request = _receive_request(sock)
                if request is None:
                    return
                main_ref, conn_fd, slot_fd = request
                pid = _fork_worker(
                    sock, supervisor, children, supervisor_pid, conn_fd, slot_fd,
                    main_ref, initializer, blas_threads,
                )  # fmt: skip
                pidfd = os.pidfd_open(pid)
                children[pidfd] = pid
                poller.register(pidfd, select.POLLIN)
                passed = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [pidfd]))]
                sock.sendmsg([dumps(("started", pid))], passed)
            else:
                pid = children.pop(fd)
                poller.unregister(fd)
                os.close(fd)
                _, status = os.waitpid(pid, 0)
                with contextlib.suppress(OSError):
                    sock.send(dumps(("exited", pid, status)))


def _detach_from_caller() -> None:
    """What a ``multiprocessing`` child does first, done once here for every worker: stdin
    is not the template's to read (it stays the caller's), and ``multiprocessing`` state
    copied from the caller (its children, finalizers, after-fork hooks of its locks and
    queues) must not act in these processes."""
    if sys.stdin is not None:
        with contextlib.suppress(OSError, ValueError):
            sys.stdin.close()
            sys.stdin = open(os.devnull)  # noqa: SIM115 - it lives as long as the process
    if "multiprocessing.util" in sys.modules:
        import multiprocessing.process
        import multiprocessing.util

        multiprocessing.process._children.clear()  # type: ignore[attr-defined]
        multiprocessing.util._finalizer_registry.clear()  # type: ignore[attr-defined]
        multiprocessing.util._run_after_forkers()  # type: ignore[attr-defined]


def _received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The file descriptors passed with a message (SCM_RIGHTS)."""
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return list(fds)


def _receive_request(sock: socket.socket) -> tuple[dict[str, str], int, int] | None:
    try:
        data, ancillary, _, _ = sock.recvmsg(_MAX_MESSAGE, socket.CMSG_SPACE(2 * _FD_SIZE))
    except OSError:
        return None
    if not data:
        return None
    fds = _received_fds(ancillary)
    _, main_ref = loads(data)
    return main_ref, fds[0], fds[1]


def _fork_worker(
    sock: socket.socket,
    supervisor: int,
    children: dict[int, int],
    supervisor_pid: int,
    conn_fd: int,
    slot_fd: int,
    main_ref: dict[str, str],
    initializer: Any,
    blas_threads: int,
) -> int:
    pid = os.fork()
    if pid:
        os.close(conn_fd)
        os.close(slot_fd)
        return pid
    code = 1
    try:
        for fd in (sock.fileno(), supervisor, *children):
            os.close(fd)
        _set_process_name(WORKER_NAME)
        conn = Wire(socket.socket(fileno=conn_fd))
        slot = mmap.mmap(slot_fd, SLOT_BYTES)
        os.close(slot_fd)
        worker.main(conn, slot, supervisor_pid, blas_threads, initializer, main_ref, forked=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _set_process_name(name: str) -> None:
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write(name)


def new_slot() -> tuple[int, mmap.mmap]:
    """A worker's slot as a memfd (its fd travels to the template) and our mapping of it."""
    fd = os.memfd_create("poolrun-slot", os.MFD_CLOEXEC)
    os.ftruncate(fd, SLOT_BYTES)
    return fd, mmap.mmap(fd, SLOT_BYTES)
