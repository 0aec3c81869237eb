"""The tail's floor for tiny items: 200k items of 0.1 µs and the skewed workload, with the
floor at 0 (the old behaviour), 2 ms (poolrun's) and 5 ms of work, in one process.

    .venv/bin/python -m benchmarks.tail_floor [--rounds 15]

Each round runs every variant once, each first in turn; the table shows, per workload, the
median over rounds of each variant's time over the floor-0 time of the same round.
"""

from __future__ import annotations

import argparse
import statistics
import time

import poolrun
import poolrun.batching as batching
from benchmarks.workloads import skewed, skewed_items, tiny

VARIANTS = {"floor 0": 0.0, "2 ms": 0.002, "5 ms": 0.005}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    rounds = parser.parse_args().rounds
    workloads = {
        "200k x 0.1 µs": (tiny, list(range(200_000))),
        "skewed": (skewed, skewed_items(2000)),
    }
    names = list(VARIANTS)
    kept = batching.TAIL_MIN_SECONDS
    try:
        for label, (fn, items) in workloads.items():
            poolrun.map(fn, items[:50], workers=2)  # imports and caches, once
            times: dict[str, list[float]] = {name: [] for name in names}
            for r in range(rounds):
                for name in names[r % 3 :] + names[: r % 3]:
                    batching.TAIL_MIN_SECONDS = VARIANTS[name]
                    started = time.perf_counter()
                    poolrun.map(fn, items, workers=2)
                    times[name].append(time.perf_counter() - started)
            base = times["floor 0"]
            ratios = {
                name: statistics.median(t / b for t, b in zip(times[name], base, strict=True))
                for name in names
            }
            print(label, "  ".join(f"{name}: {ratio:.3f}" for name, ratio in ratios.items()))
    finally:
        batching.TAIL_MIN_SECONDS = kept


if __name__ == "__main__":
    main()
