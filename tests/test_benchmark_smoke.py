"""The side-by-side benchmark at 1% size: it runs, every engine matches serial, and the
Markdown table is written (what CI can afford; the full run is in docs/BENCHMARKS.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_side_by_side_smoke(tmp_path):
    table = tmp_path / "bench.md"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.side_by_side",
            "--scale",
            "0.01",
            "--engines",
            "serial,mp_pool_map,ppe_map_chunked,poolrun,poolrun_b64,poolrun_cli",
            "--markdown",
            str(table),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    text = table.read_text()
    for workload in ("tiny", "small", "numpy", "heavy", "skewed", "jsonl"):
        assert f"{workload}" in text
    assert "MISMATCH" not in done.stdout and "poolrun_cli" in done.stdout


def test_round_by_round_pairs_runs_of_the_same_round():
    from benchmarks.side_by_side import Cell, round_by_round

    # The peer's one lucky run (0.9) wins the best-of race; round by round poolrun is ahead
    # in two rounds of three, and the slow second round slows both alike.
    poolrun = Cell("poolrun", seconds=[1.0, 2.0, 1.0])
    peer = Cell("mp_pool_map", seconds=[1.1, 2.2, 0.9])
    assert round_by_round(poolrun, peer) == "0.91 (won 2 of 3)"
    # A cell that stopped repeating early is paired only over the rounds it ran.
    assert round_by_round(Cell("poolrun", seconds=[3.0]), peer) == "2.73 (won 0 of 1)"
