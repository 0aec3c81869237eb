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
