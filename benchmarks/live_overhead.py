"""What the live view costs a run: the same workload with ``progress="live"`` and without.

The runs happen in a child process whose stderr is a pseudo-terminal, so the view really
draws (rich, a few frames a second) and its bytes really travel; this process drains the
terminal and discards it. Rounds alternate which mode goes first, on one warm ``Pool``, so
drift in the machine's load falls on both; the result is the median of the per-round ratios.
On a busy machine that ratio is noisy, so the CPU time of the view's own thread (read from
/proc by psutil while it runs) is reported too, as a share of the run's wall time: what the
view takes from the supervisor's process, whatever else the machine is doing.

    .venv/bin/python -m benchmarks.live_overhead              # ~2 min
    .venv/bin/python -m benchmarks.live_overhead --rounds 3   # quicker, noisier
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import statistics
import subprocess
import sys
import threading
import time

import psutil

import poolrun
from benchmarks.workloads import small, tiny

WORKLOADS = {
    # the supervisor is the bottleneck: the view's thread competes with it for the GIL
    "tiny items (supervisor-bound)": (tiny, 8_000_000),
    # ~50 µs items: the workers are the bottleneck, as in most real runs
    "50 µs items": (small, 40_000),
}


class MonitorCpu:
    """Samples the CPU time of the "poolrun-monitor" thread while a run goes."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.05):
            ids = {t.native_id for t in threading.enumerate() if t.name == "poolrun-monitor"}
            for t in me.threads():
                if t.id in ids:
                    self.seconds = t.user_time + t.system_time

    def __enter__(self) -> MonitorCpu:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(rounds: int) -> dict[str, dict[str, list[float]]]:
    times: dict[str, dict[str, list[float]]] = {}
    with poolrun.Pool(workers=2) as pool:
        for name, (fn, n) in WORKLOADS.items():
            items = range(n)
            for mode in (False, "live"):  # warm: function shipped, rich imported, caches filled
                pool.map(fn, items, progress=mode)
            got: dict[str, list[float]] = {"off": [], "live": [], "view_cpu": []}
            for r in range(rounds):
                for mode in ("off", "live") if r % 2 == 0 else ("live", "off"):
                    with MonitorCpu() as cpu:  # sampling in both modes: the same disturbance
                        started = time.perf_counter()
                        pool.map(fn, items, progress="live" if mode == "live" else False)
                        elapsed = time.perf_counter() - started
                    got[mode].append(elapsed)
                    if mode == "live":
                        got["view_cpu"].append(cpu.seconds / elapsed)
            times[name] = got
    return times


def _drain(fd: int) -> None:
    while True:
        try:
            if not os.read(fd, 65536):
                return
        except OSError:
            return


def on_a_terminal(rounds: int) -> dict[str, dict[str, list[float]]]:
    """Run :func:`measure` in a child whose stderr is a pty; its JSON comes back on stdout."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color"}
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.live_overhead", "--child", "--rounds", str(rounds)],
        stdout=subprocess.PIPE,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    reader = threading.Thread(target=_drain, args=(master,), daemon=True)
    reader.start()
    out, _ = child.communicate()
    os.close(master)
    if child.returncode:
        raise SystemExit(f"the measuring child failed with exit code {child.returncode}")
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        assert sys.stderr.isatty(), "the child must draw on a terminal"
        print(json.dumps(measure(args.rounds)))
        return
    times = on_a_terminal(args.rounds)
    print(f"{'workload':<32} {'off (s)':>9} {'live (s)':>9} {'live/off':>9} {'view CPU':>9}")
    for name, got in times.items():
        ratios = [live / off for live, off in zip(got["live"], got["off"], strict=True)]
        print(
            f"{name:<32} {statistics.median(got['off']):>9.3f} "
            f"{statistics.median(got['live']):>9.3f} {statistics.median(ratios):>9.3f} "
            f"{100 * statistics.median(got['view_cpu']):>8.2f}%"
        )
        spread = ", ".join(f"{r:.3f}" for r in sorted(ratios))
        print(f"{'':<32} per-round live/off: {spread}")


if __name__ == "__main__":
    main()
