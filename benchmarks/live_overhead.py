"""What the live view costs a run: the same workload with ``progress="live"`` and without.

The runs happen in a child process whose stderr is a pseudo-terminal, so the view really
draws (rich, a few frames a second) and its bytes really travel; this process drains the
terminal and discards it. Rounds alternate which mode goes first, on one warm ``Pool``, so
drift in the machine's load falls on both; the result is the median of the per-round ratios.
On a busy machine that ratio swings by ±10 % from round to round, so two more figures are
reported: a control, the same run without the view once more ("off" against "off": how far
a ratio moves with no change at all), and the CPU time of the view's own thread (timed by the
thread itself with ``time.thread_time``; every run's report shows it as "live view") as a
share of the run's wall time.

    .venv/bin/python -m benchmarks.live_overhead              # ~4 min
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

import poolrun
from benchmarks.workloads import small, tiny

WORKLOADS = {
    # the supervisor is the bottleneck: the view's thread competes with it for the GIL
    "tiny items (supervisor-bound)": (tiny, 4_000_000),
    # ~50 µs items: the workers are the bottleneck, as in most real runs
    "50 µs items": (small, 20_000),
}


MODES = ("off", "live", "control")  # "control" is "off" again: the noise of a ratio


def measure(rounds: int) -> dict[str, dict[str, list[float]]]:
    times: dict[str, dict[str, list[float]]] = {}
    with poolrun.Pool(workers=2) as pool:
        for name, (fn, n) in WORKLOADS.items():
            items = range(n)
            for mode in (False, "live"):  # warm: function shipped, rich imported, caches filled
                pool.map(fn, items, progress=mode)
            got: dict[str, list[float]] = {mode: [] for mode in (*MODES, "view_cpu")}
            for r in range(rounds):
                for mode in MODES[r % 3 :] + MODES[: r % 3]:  # each mode first in turn
                    started = time.perf_counter()
                    run = pool.map(fn, items, progress="live" if mode == "live" else False)
                    elapsed = time.perf_counter() - started
                    got[mode].append(elapsed)
                    if mode == "live":  # the view's own thread, timed by itself
                        got["view_cpu"].append(run.report.live_view_cpu_s / elapsed)
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
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        assert sys.stderr.isatty(), "the child must draw on a terminal"
        print(json.dumps(measure(args.rounds)))
        return
    times = on_a_terminal(args.rounds)
    print(
        f"{'workload':<32} {'off (s)':>8} {'live (s)':>8} {'live/off':>8} "
        f"{'control/off':>11} {'view CPU':>8}"
    )
    for name, got in times.items():
        ratios = {
            mode: [t / off for t, off in zip(got[mode], got["off"], strict=True)]
            for mode in ("live", "control")
        }
        print(
            f"{name:<32} {statistics.median(got['off']):>8.3f} "
            f"{statistics.median(got['live']):>8.3f} {statistics.median(ratios['live']):>8.3f} "
            f"{statistics.median(ratios['control']):>11.3f} "
            f"{100 * statistics.median(got['view_cpu']):>7.2f}%"
        )
        for mode, values in ratios.items():
            spread = ", ".join(f"{r:.3f}" for r in sorted(values))
            print(f"{'':<32} per-round {mode}/off: {spread}")


if __name__ == "__main__":
    main()
