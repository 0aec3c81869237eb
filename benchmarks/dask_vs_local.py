"""The benchmark's small and numpy workloads on backend="dask" beside the local backend.

Run from the repository root: ``.venv/bin/python benchmarks/dask_vs_local.py``
(``--workers 2 --repeat 5 --workloads small,numpy`` are the defaults).

Each backend is started once (a warm ``poolrun.Pool``; its start-up time is printed apart),
then each workload runs ``--repeat`` times and the best wall time is kept, beside a serial
loop with BLAS pinned to one thread like each worker's. The Dask backend starts its own
``LocalCluster``: one single-threaded worker process per worker, on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from threadpoolctl import threadpool_limits

import poolrun
from workloads import WORKLOADS


def serial_seconds(fn: Callable[[Any], Any], items: list[Any]) -> float:
    with threadpool_limits(limits=1):
        started = time.perf_counter()
        for item in items:
            fn(item)
        return time.perf_counter() - started


def best_run(pool: poolrun.Pool, fn: Callable[[Any], Any], items: list[Any], repeat: int) -> float:
    """Best wall time of ``repeat`` runs; every run must give the serial loop's values."""
    expected = [fn(item) for item in items[:50]]
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run = pool.map(fn, items)
        best = min(best, time.perf_counter() - started)
        assert run.values[:50] == expected and len(run.values) == len(items)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workloads", default="small,numpy")
    args = parser.parse_args()
    chosen = [WORKLOADS[name] for name in args.workloads.split(",")]
    inputs = {w.name: w.items(1.0) for w in chosen}
    serial = {w.name: serial_seconds(w.fn, inputs[w.name]) for w in chosen}
    header = ("backend", "start s", "workload", "items", "wall s", "items/s", "vs serial")
    print("{:<8} {:>8} {:<8} {:>7} {:>8} {:>10} {:>9}".format(*header))
    for backend in ("local", "dask"):
        started = time.perf_counter()
        with poolrun.Pool(workers=args.workers, backend=backend) as pool:
            pool.map(abs, range(args.workers))  # the workers are up
            start_s = time.perf_counter() - started
            for w in chosen:
                n = len(inputs[w.name])
                wall = best_run(pool, w.fn, inputs[w.name], args.repeat)
                speedup = serial[w.name] / wall
                print(
                    f"{backend:<8} {start_s:>8.2f} {w.name:<8} {n:>7} {wall:>8.3f} "
                    f"{n / wall:>10,.0f} {speedup:>8.2f}x"
                )
    for name, seconds in serial.items():
        print(f"serial {name}: {seconds:.3f} s")


if __name__ == "__main__":
    main()
