"""Peak memory of ``poolrun run`` on a 100k-line and a 1M-line input: it must not grow with
the input (target: the 1M run's peak at most 1.2x the 100k run's).

    .venv/bin/python benchmarks/cli_memory.py [--sizes 100000,1000000] [--workers 2]

The whole process tree is sampled with psutil every 20 ms (supervisor, forkserver, resource
tracker, workers) and the peak of the summed RSS is reported, together with the supervisor's
own peak, since the supervisor is where an unbounded read-ahead or reorder buffer would show.
Summed RSS counts pages shared between the forked processes more than once; that is the same
for both sizes, so the ratio is fair.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import psutil

POOLRUN = str(Path(sys.executable).with_name("poolrun"))
SAMPLE_SECONDS = 0.02
TARGET_RATIO = 1.2

FUNCTION = """
def enrich(record):
    words = record["text"].split()
    return {"id": record["id"], "words": len(words), "longest": max(words, key=len),
            "total": sum(record["values"])}
"""


def make_input(path: Path, lines: int) -> None:
    """Records of about 200 bytes, written in chunks so generating 1M lines stays small."""
    rng = random.Random(lines)
    vocabulary = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    with open(path, "wb") as f:
        chunk = []
        for i in range(lines):
            text = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(8, 20)))
            values = [rng.randint(0, 1000) for _ in range(rng.randint(3, 10))]
            chunk.append(orjson.dumps({"id": i, "text": text, "values": values}) + b"\n")
            if len(chunk) == 10_000:
                f.write(b"".join(chunk))
                chunk.clear()
        f.write(b"".join(chunk))


def tree_rss(root: psutil.Process) -> tuple[int, int]:
    """(RSS of the whole tree, RSS of the root alone), in bytes."""
    own = root.memory_info().rss
    total = own
    for child in root.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total, own


def measure(spec: str, source: Path, out: Path, workers: int) -> dict[str, float]:
    """Run the CLI once and sample its memory until it exits."""
    args = [POOLRUN, "run", spec, str(source), "-o", str(out), "--no-progress", "-w", str(workers)]
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = psutil.Process(proc.pid)
    peak_total = peak_supervisor = 0
    while proc.poll() is None:
        try:
            total, own = tree_rss(root)
        except psutil.NoSuchProcess:
            break
        peak_total, peak_supervisor = max(peak_total, total), max(peak_supervisor, own)
        time.sleep(SAMPLE_SECONDS)
    proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"poolrun exited with {proc.returncode} on {source}")
    return {
        "seconds": time.perf_counter() - started,
        "peak_total_mb": peak_total / 1e6,
        "peak_supervisor_mb": peak_supervisor / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="line counts, comma-separated")
    parser.add_argument("--workers", type=int, default=2)
    options = parser.parse_args()
    sizes = [int(s) for s in options.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="poolrun-memory-") as folder:
        work = Path(folder)
        (work / "fn.py").write_text(FUNCTION)
        results = {}
        for lines in sizes:
            source = work / f"in-{lines}.jsonl"
            make_input(source, lines)
            mb = source.stat().st_size / 1e6
            results[lines] = measure(
                f"{work}/fn.py:enrich", source, work / "out.jsonl", options.workers
            )
            r = results[lines]
            print(
                f"{lines:>9,} lines ({mb:6.1f} MB): {r['seconds']:6.1f} s, "
                f"peak RSS all processes {r['peak_total_mb']:6.1f} MB, "
                f"supervisor {r['peak_supervisor_mb']:5.1f} MB"
            )
            source.unlink()
    small, large = results[sizes[0]], results[sizes[-1]]
    ratio = large["peak_total_mb"] / small["peak_total_mb"]
    verdict = "ok" if ratio <= TARGET_RATIO else "ABOVE TARGET"
    print(
        f"peak ratio {sizes[-1]:,} / {sizes[0]:,} lines: {ratio:.2f}x "
        f"({verdict}, target <= {TARGET_RATIO}x)"
    )


if __name__ == "__main__":
    main()
