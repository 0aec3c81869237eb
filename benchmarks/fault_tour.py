"""One run of each fault poolrun is built to survive, with what happened, as a table.

    .venv/bin/python benchmarks/fault_tour.py

Each row is a real fault (a segfault, ``os._exit``, SIGKILL, a hang, a leak, an allocation
over the limit, flaky failures, random SIGKILLs of healthy workers from outside) injected
into a 2-worker run; the row says how many items failed and why, and what the report counted.
The tests in tests/test_faults.py assert the same behaviour; this shows the numbers.
"""

from __future__ import annotations

import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import poolrun
from funcs import (
    allocate_mb,
    exit_on,
    flaky_until_third,
    hang_on,
    leak_2mb,
    segfault_on,
    sigkill_self_on,
    slow_square,
)


def workers_of(me: psutil.Process) -> list[psutil.Process]:
    found = []
    for child in me.children():
        try:
            cmd = " ".join(child.cmdline())
            if "forkserver" in cmd:
                found += child.children()
            elif "resource_tracker" not in cmd:
                found.append(child)
        except psutil.Error:  # gone, or a zombie not yet reaped
            continue
    return [p for p in found if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def chaos(kills: list[int], stop: threading.Event) -> None:
    """SIGKILL a random worker every 0.1-0.25 s."""
    rng, me = random.Random(7), psutil.Process()
    while not stop.wait(rng.uniform(0.1, 0.25)):
        victims = workers_of(me)
        if victims:
            victim = rng.choice(victims)
            try:
                victim.kill()
                kills.append(victim.pid)
            except psutil.NoSuchProcess:
                pass


def row(name: str, fn, items, expected=None, **options) -> None:
    started = time.monotonic()
    run = poolrun.map(fn, items, workers=2, **options)
    wall = time.monotonic() - started
    r = run.report
    causes = Counter(e.error.cause for e in run.errors)
    ok = [x.value for x in run.results if x.ok]
    correct = "-" if expected is None else ("yes" if ok == expected else "NO")
    print(
        f"{name:<34} {len(items):>5} {run.failed:>6}  {dict(causes)!s:<32} {correct:>8} "
        f"{r.worker_deaths:>6} {r.timeouts:>4} {r.memory_kills:>4} {r.recycled:>5} "
        f"{r.retries:>5} {wall:>6.2f}"
    )


def main() -> None:
    print(
        f"{'fault':<34} {'items':>5} {'failed':>6}  {'causes':<32} {'others ok':>8} "
        f"{'deaths':>6} {'tmo':>4} {'mem':>4} {'recyc':>5} {'retry':>5} {'wall s':>6}"
    )
    items = list(range(100))
    others = [x for x in items if x != 37]
    row("segfault in item 37 (batches of 16)", segfault_on(37), items, others, batch_size=16)
    row("os._exit(3) in item 37", exit_on(37), items, others, batch_size=16)
    row("SIGKILL of itself in item 37", sigkill_self_on(37), items, others, batch_size=16)
    row(
        "item 5 hangs, timeout=0.5 s",
        hang_on(5),
        list(range(40)),
        [x for x in range(40) if x != 5],
        batch_size=8,
        timeout=0.5,
    )
    row(
        "item 7 allocates 400 MB, max_rss=250MB",
        allocate_mb(7, 400),
        list(range(20)),
        [x for x in range(20) if x != 7],
        max_rss="250MB",
        batch_size=4,
    )
    row(
        "leaks 2 MB/item, max_rss=300MB",
        leak_2mb,
        list(range(1500)),
        list(range(1500)),
        max_rss="300MB",
    )
    with tempfile.TemporaryDirectory() as tmp:
        row(
            "fails twice then works, retries=3",
            flaky_until_third(tmp),
            list(range(20)),
            list(range(20)),
            retries=3,
            backoff=0.01,
        )
    kills: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=chaos, args=(kills, stop))
    killer.start()
    try:
        row(
            "random outside SIGKILLs of workers",
            slow_square,
            list(range(3000)),
            [x * x for x in range(3000)],
        )
    finally:
        stop.set()
        killer.join()
    print(f"(the outside killer sent {len(kills)} SIGKILLs during the last row)")


if __name__ == "__main__":
    main()
