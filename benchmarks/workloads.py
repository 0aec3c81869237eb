"""The six workloads of the side-by-side benchmark (``benchmarks/side_by_side.py``).

Every function here is a module-level function so that every engine (``multiprocessing``,
``concurrent.futures``, joblib, mpire, poolrun and the ``poolrun`` CLI) can pickle it by
reference. Inputs are deterministic (fixed seeds, no clock) so that every engine's results can
be compared exactly with the serial ones, floats included. The pure-Python costs are fixed
iteration counts calibrated once on a 2-core AMD EPYC (Python 3.11); they are not re-timed at
run time, so a faster machine simply runs them faster.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

# Loop rounds of ``_spin`` (about 42 ns a round on the calibration machine).
SMALL_ROUNDS = 1_120  # ~50 µs
HEAVY_ROUNDS = 455_000  # ~20 ms
SKEW_LIGHT_ROUNDS = 2_400  # ~0.1 ms
SKEW_HEAVY_ROUNDS = 250_000  # ~10 ms: 100x the light items
SKEW_HEAVY_SHARE = 0.01
SKEW_CLUSTER = 5  # heavy items come in runs of this many consecutive items
MATRIX_SIDE = 200
# fmt: off
WORDS = (
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
    "lambda", "omicron", "sigma", "tau", "upsilon", "omega", "pool", "worker", "batch", "queue",
    "memory", "process", "result", "input", "output",
)
# fmt: on


def _spin(seed: int, rounds: int) -> int:
    """Pure-Python CPU work whose cost is linear in ``rounds`` and holds the GIL throughout."""
    total = 0
    for i in range(rounds):
        total += (seed ^ i) & 7
    return total


def tiny(x: int) -> int:
    """~0.1 µs: far cheaper than any inter-process hop, so only batching can win."""
    return (x * 7 + 3) % 1000


def small(x: int) -> int:
    """~50 µs of pure Python: the per-item overhead of an engine is still visible."""
    return _spin(x, SMALL_ROUNDS)


def matmul_sum(seed: int) -> float:
    """~0.4 ms: a 200x200 float64 matrix from ``seed``, squared, summed (BLAS-bound)."""
    a = np.random.default_rng(seed).random((MATRIX_SIDE, MATRIX_SIDE))
    return float((a @ a).sum())


def heavy(x: int) -> int:
    """~20 ms of pure Python: overhead is negligible, the ideal speedup should show."""
    return _spin(x, HEAVY_ROUNDS)


def skewed(rounds: int) -> int:
    """Cost proportional to the item itself (a round count), so 1% of items are 100x dearer."""
    return _spin(rounds, rounds)


def jsonl_transform(record: dict[str, Any]) -> dict[str, Any]:
    """~9 µs string work on one record; returns only JSON types so a JSONL round trip is exact."""
    words = record["text"].split()
    return {
        "id": record["id"],
        "name": record["name"].upper(),
        "tags": sorted(tag.lower() for tag in record["tags"]),
        "words": len(words),
        "longest": max(words, key=len),
        "slug": "-".join(words[:6]).lower(),
        "initials": "".join(word[0] for word in words).upper(),
        "vowels": sum(record["text"].count(vowel) for vowel in "aeiou"),
        "text": record["text"].title(),
    }


def ints(n: int) -> list[int]:
    """The inputs of ``tiny``, ``small``, ``matmul_sum`` and ``heavy``: 0..n-1 (also seeds)."""
    return list(range(n))


def skewed_items(n: int) -> list[int]:
    """Round counts: light everywhere except a few runs of heavy items at seeded positions.

    The heavy items are clustered (runs of ``SKEW_CLUSTER``) because that is what defeats
    static chunking: one chunk gets all the expensive work while the other workers idle.
    """
    items = [SKEW_LIGHT_ROUNDS] * n
    slots = max(1, n // SKEW_CLUSTER)
    clusters = min(slots, max(1, round(n * SKEW_HEAVY_SHARE / SKEW_CLUSTER)))
    for slot in random.Random(1234).sample(range(slots), k=clusters):
        start = slot * SKEW_CLUSTER
        for i in range(start, min(n, start + SKEW_CLUSTER)):
            items[i] = SKEW_HEAVY_ROUNDS
    return items


def records(n: int) -> list[dict[str, Any]]:
    """``n`` records of about 200 bytes of JSON each, from a fixed seed."""
    rng = random.Random(42)
    return [
        {
            "id": i,
            "name": f"user-{i:07d}",
            "tags": rng.sample(WORDS, k=3),
            "text": " ".join(rng.choices(WORDS, k=18)),
        }
        for i in range(n)
    ]


@dataclass(frozen=True)
class Workload:
    """A function, how to build its inputs, and its full-size item count."""

    name: str
    fn: Callable[[Any], Any]
    make_items: Callable[[int], list[Any]]
    size: int
    about: str

    def items(self, scale: float) -> list[Any]:
        """The inputs at ``scale`` x the full size (at least one item, for smoke runs)."""
        return self.make_items(max(1, round(self.size * scale)))


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("tiny", tiny, ints, 200_000, "~0.1 µs int ops"),
        Workload("small", small, ints, 20_000, "~50 µs pure Python"),
        Workload("numpy", matmul_sum, ints, 2_000, "~0.4 ms 200x200 matmul, 1 BLAS thread"),
        Workload("heavy", heavy, ints, 200, "~20 ms pure Python"),
        Workload("skewed", skewed, skewed_items, 2_000, "1% clustered ~10 ms, rest ~0.1 ms"),
        Workload("jsonl", jsonl_transform, records, 100_000, "~9 µs transform of ~200 B dicts"),
    )
}
