"""The drop-in interfaces against the peers they replace, in one process, rounds interleaved.

    .venv/bin/python -m benchmarks.dropin                    # ~1-2 min on 2 cores
    .venv/bin/python -m benchmarks.dropin --submissions 2000 --joblib-items 2000 --rounds 1

* ``submit``: ``Executor.submit`` of ``--submissions`` tiny calls (``abs(i)``), then every
  result, on ``poolrun.Executor`` and on ``concurrent.futures.ProcessPoolExecutor`` (both with
  ``--workers``). Both executors are made and warmed (one call) before the clock starts: this
  measures the per-submission cost, which is where a tiny task's time goes.
* ``joblib``: ``joblib.Parallel(n_jobs=--workers)`` over ``--joblib-items`` small items
  (~20 µs each) with the ``"poolrun"`` backend and with loky, joblib's default. Each call is
  timed whole, as a user sees it. Both backends keep their workers between calls, so both
  are warmed with one small call first: this times a program's later calls, not its first.

Each round runs every engine once, in alternating order, and the ratio (peer time / poolrun
time; above 1 means poolrun is faster) is taken per round, so that load from other processes
on a shared machine hits both sides of a ratio alike. The table shows medians over rounds.
Every result list is checked against the serial one.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import joblib

import poolrun
import poolrun.joblib


def small_item(i: int) -> int:
    """About 20 µs of pure Python."""
    total = 0
    for k in range(200):
        total += (i + k) * k % 7
    return total


def submit_all(executor: object, n: int) -> list[int]:
    futures = [executor.submit(abs, -i) for i in range(n)]  # type: ignore[attr-defined]
    return [f.result() for f in futures]


def timed(fn: Callable[[], list[int]], expected: list[int]) -> float:
    started = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - started
    if result != expected:
        raise SystemExit(f"wrong results from {fn}")
    return elapsed


def bench_submit(n: int, workers: int, rounds: int) -> list[tuple[float, float]]:
    expected = list(range(n))
    times = []
    with ProcessPoolExecutor(workers) as ppe, poolrun.Executor(max_workers=workers) as ours:
        ppe.submit(abs, 1).result()
        ours.submit(abs, 1).result()
        for r in range(rounds):
            engines = [("poolrun", ours), ("peer", ppe)]
            row = {}
            for name, executor in engines if r % 2 == 0 else reversed(engines):
                row[name] = timed(lambda e=executor: submit_all(e, n), expected)
            times.append((row["poolrun"], row["peer"]))
    return times


def parallel_on(backend: str, n: int, workers: int) -> list[int]:
    with joblib.parallel_config(backend=backend, n_jobs=workers):
        return joblib.Parallel()(joblib.delayed(small_item)(i) for i in range(n))


def bench_joblib(n: int, workers: int, rounds: int) -> list[tuple[float, float]]:
    poolrun.joblib.register()
    expected = [small_item(i) for i in range(n)]
    # both backends keep their workers between calls: time a user's later calls, not the first
    parallel_on("loky", 10, workers)
    parallel_on("poolrun", 10, workers)
    times = []
    for r in range(rounds):
        engines = [("poolrun", "poolrun"), ("peer", "loky")]
        row = {}
        for name, backend in engines if r % 2 == 0 else reversed(engines):
            row[name] = timed(lambda b=backend: parallel_on(b, n, workers), expected)
        times.append((row["poolrun"], row["peer"]))
    return times


def table(rows: list[tuple[str, str, int, list[tuple[float, float]]]]) -> str:
    lines = [
        "| workload | peer | items | poolrun s | peer s | peer/poolrun (median of rounds) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for workload, peer, n, times in rows:
        ours = statistics.median(t for t, _ in times)
        theirs = statistics.median(p for _, p in times)
        ratio = statistics.median(p / t for t, p in times)
        lines.append(f"| {workload} | {peer} | {n:,} | {ours:.2f} | {theirs:.2f} | {ratio:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=100_000)
    parser.add_argument("--joblib-items", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = [
        (
            "Executor.submit, abs(i)",
            "ProcessPoolExecutor",
            args.submissions,
            bench_submit(args.submissions, args.workers, args.rounds),
        ),
        (
            "joblib.Parallel, ~20 µs items",
            "loky",
            args.joblib_items,
            bench_joblib(args.joblib_items, args.workers, args.rounds),
        ),
    ]
    for workload, _, _, times in rows:
        print(
            f"{workload}: per round (poolrun s, peer s):",
            [(round(t, 3), round(p, 3)) for t, p in times],
        )
    print(table(rows))


if __name__ == "__main__":
    main()
