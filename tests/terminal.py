"""A pseudo-terminal for tests: a child process draws on it, the test reads what it drew."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


class Terminal:
    """Runs a command with stdout and stderr on a pty of ``cols`` x ``rows``."""

    def __init__(self, args: list[str], cols: int = 120, rows: int = 50, **popen) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(cols)}
        self.proc = subprocess.Popen(args, stdout=slave, stderr=slave, env=env, **popen)
        os.close(slave)
        self.master = master
        self.raw = b""

    @property
    def text(self) -> str:
        """Everything drawn so far, without colours and cursor moves."""
        return ANSI.sub(b"", self.raw).decode(errors="replace")

    def read_until(self, done, timeout: float = 60.0) -> bool:
        """Read until ``done(text)`` holds or the child closed the terminal; True if it held."""
        deadline = time.monotonic() + timeout
        while not done(self.text):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([self.master], [], [], left)
            if not ready:
                continue
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every writer closed its end
                return done(self.text)
            if not data:
                return done(self.text)
            self.raw += data
        return True

    def finish(self, timeout: float = 60.0) -> int:
        """Read to the end, wait for the child, close the terminal; the exit code."""
        self.read_until(lambda _: False, timeout)
        code = self.proc.wait(timeout=timeout)
        os.close(self.master)
        return code
