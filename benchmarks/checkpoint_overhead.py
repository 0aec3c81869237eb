"""What ``checkpoint=`` costs a run, and how fast ``Queue.put_many`` is.

The small workload (20,000 items of ~50 µs, two workers) runs on one warm ``Pool`` with and
without ``checkpoint=`` (a new file each time, so every item is computed and committed);
rounds alternate which goes first so drift in the machine's load falls on both, and the
result is the median of the per-round ratios. A warm pool leaves out the workers' start,
which would hide part of the cost. On a shared machine the wall-clock ratio is noisy, so
the supervisor process's CPU time is reported too: the checkpoint's work (hashing items,
committing batches) all happens there. Also timed: the same call again on a complete checkpoint
(everything read back, nothing run), and ``put_many`` of 100,000 ints and of 100,000 small
dicts into a fresh queue.

    .venv/bin/python -m benchmarks.checkpoint_overhead              # ~1 min
    .venv/bin/python -m benchmarks.checkpoint_overhead --rounds 3   # quicker, noisier
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import poolrun
from benchmarks.workloads import small

ITEMS = 20_000
PUT_ITEMS = 100_000


CPU: dict[str, list[float]] = {"plain": [], "checkpoint": []}


def _timed(fn, *args, **kwargs) -> float:
    began = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - began


def _cpu_timed(name: str, fn) -> float:
    """Wall time; the supervisor process's CPU time goes to ``CPU[name]``: what the
    checkpoint adds there is its cost, measured without the machine's other load."""
    cpu = time.process_time()
    wall = _timed(fn)
    CPU[name].append(time.process_time() - cpu)
    return wall


def checkpoint_cost(rounds: int, folder: Path) -> dict[str, float]:
    items = list(range(ITEMS))
    plain, checked, ratios = [], [], []
    with poolrun.Pool(workers=2) as pool:
        pool.map(small, items[:2000])  # warm: the function is loaded in every worker
        for r in range(rounds):
            path = folder / f"round{r}.sqlite"
            runs = {
                "plain": lambda: pool.map(small, items),
                "checkpoint": lambda path=path: pool.map(small, items, checkpoint=path),
            }
            order = ["plain", "checkpoint"] if r % 2 == 0 else ["checkpoint", "plain"]
            times = {name: _cpu_timed(name, runs[name]) for name in order}
            plain.append(times["plain"])
            checked.append(times["checkpoint"])
            ratios.append(times["checkpoint"] / times["plain"])
        resumed = _timed(pool.map, small, items, checkpoint=folder / "round0.sqlite")
    return {
        "plain_s": round(statistics.median(plain), 4),
        "checkpoint_s": round(statistics.median(checked), 4),
        "overhead_pct": round(100 * (statistics.median(ratios) - 1), 1),
        "ratio_per_round": [round(r, 3) for r in ratios],
        "supervisor_cpu_plain_s": round(statistics.median(CPU["plain"]), 4),
        "supervisor_cpu_checkpoint_s": round(statistics.median(CPU["checkpoint"]), 4),
        "resume_all_read_back_s": round(resumed, 4),
    }


def put_rate(folder: Path) -> dict[str, float]:
    out = {}
    kinds = {
        "ints": list(range(PUT_ITEMS)),
        "dicts": [{"id": i, "name": f"item {i}", "tags": ["a", "b"]} for i in range(PUT_ITEMS)],
    }
    for kind, items in kinds.items():
        queue = poolrun.Queue(folder / f"put-{kind}.sqlite")
        seconds = _timed(queue.put_many, items)
        out[f"put_many_{kind}_s"] = round(seconds, 4)
        out[f"put_many_{kind}_per_s"] = round(PUT_ITEMS / seconds)
        queue.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = {
            "workload": f"small: {ITEMS:,} items of ~50 µs, 2 workers, warm Pool",
            "rounds": args.rounds,
            **checkpoint_cost(args.rounds, Path(tmp)),
            **put_rate(Path(tmp)),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
