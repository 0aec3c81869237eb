"""pytest-benchmark tests of the engine's hot paths, so regressions show up as numbers.

Run: ``.venv/bin/pytest benchmarks/test_hot_paths.py`` (timings), or with
``--benchmark-disable`` to run each once as a smoke test (what ``scripts/test`` does).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import orjson
import pytest

import poolrun
from poolrun.items import run_batch
from poolrun.jsonl import LineTask
from poolrun.results import Run, Segment
from poolrun.worker import dumps

sys.path.insert(0, str(Path(__file__).parent))


def identity(x):
    return x


def transform(record):
    """A cheap record transform, like the JSONL workload's."""
    return {"id": record["id"], "name": record["name"].upper(), "n": len(record["tags"])}


@pytest.fixture(scope="module")
def warm_pool():
    with poolrun.Pool(workers=1) as pool:
        pool.map(identity, range(10))
        yield pool


def test_batch_round_trip(benchmark, warm_pool):
    """One batch of 1,000 small items out to a worker and back, through the whole supervisor."""
    items = list(range(1000))
    run = benchmark(warm_pool.map, identity, items, batch_size=1000)
    assert run.values == items


def test_worker_loop_per_item(benchmark):
    """The per-item loop inside a worker (try, timing, slot write) on 10,000 cheap items."""
    slot = memoryview(bytearray(24)).cast("d")
    items = list(range(10_000))
    values, durations, errors = benchmark(run_batch, identity, items, 1, slot, (Exception,))
    assert values == items and len(durations) == 10_000 and errors is None


def test_reorder_release_and_values(benchmark):
    """1,000 segments of 100 items completed out of order, then gathered in input order."""
    order = list(range(1000))
    random.Random(1).shuffle(order)

    def complete_and_gather():
        segments = [Segment(i * 100, 100) for i in range(1000)]
        for i in order:
            segments[i].fill_all(list(range(i * 100, i * 100 + 100)), [0.0] * 100, 1, i)
        return Run(segments, report=None, trace=None).values  # type: ignore[arg-type]

    assert benchmark(complete_and_gather) == list(range(100_000))


def test_jsonl_line_codec(benchmark, tmp_path):
    """Decode a JSONL line, run the function, encode the result (what each worker does)."""
    module = tmp_path / "fnmod.py"
    module.write_text(
        "def transform(r):\n"
        "    return {'id': r['id'], 'name': r['name'].upper(), 'n': len(r['tags'])}\n"
    )
    task = LineTask(f"{module}:transform")
    lines = [
        orjson.dumps({"id": i, "name": f"user{i}", "tags": ["a", "b", "c"], "text": "x" * 120})
        for i in range(10_000)
    ]
    out = benchmark(lambda: [task(line) for line in lines])
    assert orjson.loads(out[7]) == {"id": 7, "name": "USER7", "n": 3}


def test_batch_pickle(benchmark):
    """Pickling a 10,000-item batch of dict records for the pipe (protocol 5)."""
    records = [{"id": i, "name": f"user{i}", "tags": ["a", "b"]} for i in range(10_000)]
    assert len(benchmark(dumps, records)) > 100_000
