"""`poolrun bench` in a subprocess, on the bundled example."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
POOLRUN = str(Path(sys.executable).with_name("poolrun"))
EXAMPLE = ["examples/transform.py:transform", "examples/records.jsonl"]


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [POOLRUN, "bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_bench_sweeps_and_recommends(tmp_path):
    out = tmp_path / "b.json"
    done = bench(
        *EXAMPLE,
        "--sizes",
        "1,auto",
        "--workers",
        "1,2",
        "--repeat",
        "1",
        "--limit",
        "300",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    assert "recommended: --workers" in done.stdout
    assert "sampling 300 lines" in done.stderr
    doc = json.loads(out.read_text())
    assert [(r["workers"], r["batch_size"]) for r in doc["rows"]] == [
        (1, "1"),
        (1, "auto"),
        (2, "1"),
        (2, "auto"),
    ]
    # line 137 of the bundled example is not JSON: every setting ran all 300, one failed
    assert all(r["items"] == 300 and r["failed"] == 1 for r in doc["rows"])


def test_bench_plot(tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "b.png"
    done = bench(
        *EXAMPLE,
        "--sizes",
        "8",
        "--workers",
        "1",
        "--repeat",
        "1",
        "--limit",
        "100",
        "--plot",
        str(plot),
    )
    assert done.returncode == 0, done.stderr
    assert plot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sizes", "1,x"], "'x' is not 'auto' or a whole number"),
        (["--workers", "0"], "worker counts >= 1"),
        (["--limit", "0"], "--limit"),
    ],
)
def test_bench_bad_flags_exit_2_with_one_line(args, message):
    done = bench(*EXAMPLE, *args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in done.stderr


def test_bench_unknown_spec_exits_2():
    done = bench("no_such_module:fn", "examples/records.jsonl")
    assert done.returncode == 2 and "no module named 'no_such_module'" in done.stderr
