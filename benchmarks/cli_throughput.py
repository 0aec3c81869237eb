"""``poolrun run`` against the serial loops a user writes by hand, on cheap JSONL records.

    .venv/bin/python -m benchmarks.cli_throughput [--scale 1.0] [--workers 2] [--cases ...]

Two cases (the inputs are generated under /tmp, never in the repository):

* ``normalize``: 1M benchmark records (about 200 B each) through ``jsonl_transform`` of
  :mod:`benchmarks.workloads` (~9 µs of string work per record);
* ``big``: 4M lines, about 1 GB, through :func:`light` (a transform of a few µs).

Each case runs four commands, each in its own process tree: a serial loop with the stdlib
``json``, a serial loop with ``orjson``, the *split* (``--workers`` copies of the orjson loop
side by side, each on its share of the file: what this machine's cores can give at best,
with no coordination at all) and ``poolrun run`` with ``--workers`` workers. Rounds are
interleaved and the median is reported (the json loop runs in the first ``--json-rounds``
rounds, one by default: it takes minutes, and one run carries its noise). For each it
reports the wall time, the peak of the summed RSS of all its processes (sampled with
psutil every 50 ms), and for the CLI the supervisor's CPU time (psutil ``cpu_times``,
user + system) as a share of the wall time. Goals (issue 12):
the CLI at least 1.6x the orjson loop and 3x the json loop, peak RSS at most 300 MiB,
supervisor CPU at most 15 %.
Every output is checked against the orjson loop's.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import psutil

from benchmarks.workloads import WORDS

REPO_ROOT = Path(__file__).resolve().parent.parent
POOLRUN = str(Path(sys.executable).with_name("poolrun"))
SAMPLE_SECONDS = 0.05
GOALS = {"orjson": 1.6, "json": 3.0}
RSS_GOAL_MIB = 300
SUPERVISOR_GOAL_PCT = 15

SERIAL = """
import sys
from importlib import import_module
module, name = sys.argv[2].split(":")
fn = getattr(import_module(module), name)
if sys.argv[1] == "json":
    import json
    with open(sys.argv[3], "rb") as src, open(sys.argv[4], "w") as out:
        for line in src:
            out.write(json.dumps(fn(json.loads(line)), separators=(",", ":")) + "\\n")
else:
    import orjson
    dumps, loads, newline = orjson.dumps, orjson.loads, orjson.OPT_APPEND_NEWLINE
    with open(sys.argv[3], "rb") as src, open(sys.argv[4], "wb") as out:
        for line in src:
            out.write(dumps(fn(loads(line)), option=newline))
"""


SPLIT = """
import os, sys
from importlib import import_module
module, name = sys.argv[1].split(":")
fn = getattr(import_module(module), name)
path, out, parts = sys.argv[2], sys.argv[3], int(sys.argv[4])
size = os.path.getsize(path)
children = []
for part in range(parts):
    pid = os.fork()
    if pid:
        children.append(pid)
        continue
    import orjson
    dumps, loads, newline = orjson.dumps, orjson.loads, orjson.OPT_APPEND_NEWLINE
    start, stop = size * part // parts, size * (part + 1) // parts
    with open(path, "rb") as src, open(f"{out}.{part}", "wb") as sink:
        src.seek(max(start - 1, 0))  # from the byte before: a line may start right at start
        at = start - 1 + len(src.readline()) if start else 0
        for line in src:
            if at >= stop:
                break
            at += len(line)
            sink.write(dumps(fn(loads(line)), option=newline))
    os._exit(0)
for pid in children:
    os.waitpid(pid, 0)
"""


def light(record: dict) -> dict:
    """A few µs: pick fields, one string method, one sum (the ``big`` case's transform)."""
    return {"id": record["id"], "user": record["user"].upper(), "total": sum(record["values"])}


@dataclass
class Case:
    name: str
    spec: str
    lines: int
    about: str


CASES = {
    "normalize": Case(
        "normalize", "benchmarks.workloads:jsonl_transform", 1_000_000, "1M records, ~9 µs each"
    ),
    "big": Case("big", "benchmarks.cli_throughput:light", 4_000_000, "4M lines ~1 GB, light"),
}


def write_records(path: Path, n: int) -> None:
    """The side-by-side benchmark's record shape, streamed to disk (never all in memory)."""
    rng = random.Random(42)
    with open(path, "wb") as f:
        chunk = []
        for i in range(n):
            record = {
                "id": i,
                "name": f"user-{i:07d}",
                "tags": rng.sample(WORDS, k=3),
                "text": " ".join(rng.choices(WORDS, k=18)),
            }
            chunk.append(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
            if len(chunk) == 20_000:
                f.write(b"".join(chunk))
                chunk.clear()
        f.write(b"".join(chunk))


def write_big(path: Path, n: int) -> None:
    """Lines of about 250 B: an id, a user, a note of words and ten numbers."""
    rng = random.Random(7)
    notes = [" ".join(rng.choices(WORDS, k=22)) for _ in range(512)]
    with open(path, "wb") as f:
        chunk = []
        for i in range(n):
            record = {
                "id": i,
                "user": f"user-{i % 100_000:06d}",
                "note": notes[i % 512],
                "values": [(i * 31 + k * 17) % 1000 for k in range(10)],
            }
            chunk.append(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
            if len(chunk) == 20_000:
                f.write(b"".join(chunk))
                chunk.clear()
        f.write(b"".join(chunk))


@dataclass
class Measured:
    seconds: float
    peak_rss: int
    supervisor_cpu: float
    total_cpu: float  # all processes of the tree, as last sampled


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def measure(command: list[str]) -> Measured:
    """Run one command; sample its process tree's summed RSS and the root's CPU time."""
    # PYTHONPATH first: set it to another checkout's src to measure that code instead.
    paths = [*filter(None, [os.environ.get("PYTHONPATH")]), str(REPO_ROOT)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    peak, cpus = 0, {}
    while proc.poll() is None:
        total = 0
        for p in _tree(root):
            try:
                total += p.memory_info().rss
                times = p.cpu_times()
                cpus[p.pid] = times.user + times.system
            except psutil.NoSuchProcess:
                continue
        peak = max(peak, total)
        time.sleep(SAMPLE_SECONDS)
    seconds = time.perf_counter() - started
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{command[:3]} exited {proc.returncode}: {stderr[-2000:]}")
    return Measured(seconds, peak, cpus.get(root.pid, 0.0), sum(cpus.values()))


def run_case(
    case: Case, lines: int, workers: int, rounds: int, folder: Path, json_rounds: int = 1
) -> list[str]:
    """Rounds interleaved (orjson loop, its ideal split, the CLI), medians reported; the
    stdlib-json loop is 1.5-5x slower than everything else and runs in the first
    ``json_rounds`` rounds only."""
    source = folder / f"{case.name}.jsonl"
    (write_records if case.name == "normalize" else write_big)(source, lines)
    mb = source.stat().st_size / 1e6
    runs: dict[str, list[Measured]] = {kind: [] for kind in ("json", "orjson", "split", "cli")}
    outputs = {kind: folder / f"{case.name}.{kind}.out" for kind in ("json", "orjson", "cli")}
    same = json_same = True
    for round_ in range(rounds):
        for kind in (
            ("json", "orjson", "split", "cli")
            if round_ < json_rounds
            else ("orjson", "split", "cli")
        ):
            runs[kind].append(measure(_command(kind, case, source, folder, workers)))
        same &= outputs["cli"].read_bytes() == outputs["orjson"].read_bytes()
        if round_ == 0:
            json_same = _parsed(outputs["json"]) == _parsed(outputs["orjson"])
    for path in folder.iterdir():
        path.unlink()
    results = {kind: _median(found) for kind, found in runs.items()}
    cli = results["cli"]
    share = 100 * cli.supervisor_cpu / cli.seconds
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    rows = [
        f"{case.name}: {lines:,} lines, {mb:.0f} MB ({case.about}), {workers} workers, "
        f"median of {rounds} interleaved rounds (json loop: {len(runs['json'])} run(s))"
    ]
    rows.append(f"  load average after the runs: {load} (on {os.cpu_count()} CPUs)")
    for kind, m in results.items():
        rows.append(
            f"  {kind:<7} {m.seconds:7.2f} s   peak RSS all processes {m.peak_rss / 2**20:7.1f} MiB"
            f"   CPU all processes {m.total_cpu:6.2f} s"
        )
    ceiling = results["orjson"].seconds / results["split"].seconds
    rows.append(
        f"  this machine's ceiling: {workers} orjson loops side by side, each on 1/{workers} "
        f"of the file, run {ceiling:.2f}x one loop"
    )
    for kind, goal in GOALS.items():
        ratio = results[kind].seconds / cli.seconds
        verdict = "ok" if ratio >= goal else "BELOW GOAL"
        rows.append(f"  cli vs {kind:<7} {ratio:5.2f}x ({verdict}, goal >= {goal}x)")
    rows.append(f"  cli vs the split {results['split'].seconds / cli.seconds:5.2f}x (1.0 = ideal)")
    rss_verdict = "ok" if cli.peak_rss <= RSS_GOAL_MIB * 2**20 else "ABOVE GOAL"
    cpu_verdict = "ok" if share <= SUPERVISOR_GOAL_PCT else "ABOVE GOAL"
    rows.append(f"  cli peak RSS {cli.peak_rss / 2**20:.1f} MiB ({rss_verdict}, goal <= 300)")
    rows.append(
        f"  supervisor CPU {cli.supervisor_cpu:.2f} s = {share:.1f} % of the wall time "
        f"({cpu_verdict}, goal <= {SUPERVISOR_GOAL_PCT} %)"
    )
    rows.append(f"  output identical to the orjson loop: {same}; json loop equal: {json_same}")
    return rows


def _command(kind: str, case: Case, source: Path, folder: Path, workers: int) -> list[str]:
    out = str(folder / f"{case.name}.{kind}.out")
    if kind == "cli":
        flags = ["-o", out, "--no-progress", "-w", str(workers)]
        return [POOLRUN, "run", case.spec, str(source), *flags]
    if kind == "split":  # the ideal split: one serial loop per worker, on its share of lines
        return [sys.executable, "-c", SPLIT, case.spec, str(source), out, str(workers)]
    return [sys.executable, "-c", SERIAL, kind, case.spec, str(source), out]


def _median(found: list[Measured]) -> Measured:
    """The run of median wall time (its RSS and CPU come with it)."""
    return sorted(found, key=lambda m: m.seconds)[len(found) // 2]


def _parsed(path: Path) -> bool | int:
    """A cheap fingerprint of the parsed lines (the json loop writes other whitespace)."""
    total = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f):
            total ^= hash((number, orjson.dumps(orjson.loads(line))))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the line counts")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cases", default="normalize,big", help="comma-separated case names")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument(
        "--json-rounds",
        type=int,
        default=1,
        help="rounds that run the slow stdlib-json loop too (its ratio is one run's by default)",
    )
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="poolrun-throughput-", dir="/tmp") as folder:
        for name in options.cases.split(","):
            case = CASES[name]
            lines = max(1, round(case.lines * options.scale))
            rounds = (options.rounds, Path(folder), options.json_rounds)
            for row in run_case(case, lines, options.workers, *rounds):
                print(row, flush=True)


if __name__ == "__main__":
    main()
