"""Running a Python script in its own process group, and killing it with ``kill -9``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TESTS = os.path.dirname(__file__)


def start(code: str, log: Path, *args: str) -> subprocess.Popen[str]:
    """``code`` in a new session (so the whole tree can be killed), logging to ``log``."""
    env = {**os.environ, "POOLRUN_TEST_LOG": str(log), "PYTHONPATH": TESTS}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def lines(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def kill_when_logged(proc: subprocess.Popen[str], log: Path, count: int, limit: float = 60) -> None:
    """``kill -9`` the process and everything it started once ``log`` has ``count`` lines."""
    deadline = time.monotonic() + limit
    while len(lines(log)) < count:
        assert proc.poll() is None, f"the script ended before it was killed: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "the script did not get far enough in time"
        time.sleep(0.01)  # polling a file another process writes: nothing to wait on
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


def finish(proc: subprocess.Popen[str], limit: float = 60) -> str:
    out, err = proc.communicate(timeout=limit)
    assert proc.returncode == 0, err
    return out
