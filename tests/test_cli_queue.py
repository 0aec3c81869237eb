"""``poolrun queue put|drain|status`` and ``--rate``, run as the user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

POOLRUN = os.path.join(os.path.dirname(sys.executable), "poolrun")

FN = """
def double(record):
    if record["n"] == 3:
        raise ValueError("three")
    return record["n"] * 2
"""


def poolrun(*args: str, cwd, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [POOLRUN, *args], cwd=cwd, input=stdin, capture_output=True,
        timeout=60,
    )  # fmt: skip


def test_put_drain_status(tmp_path):
    (tmp_path / "fn.py").write_text(FN)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"n": i}) + "\n" for i in range(8)))
    put = poolrun("queue", "put", "q.sqlite", "in.jsonl", cwd=tmp_path)
    assert put.returncode == 0 and b"added 8 jobs" in put.stderr
    urgent = poolrun(
        "queue", "put", "q.sqlite", "--priority", "5", cwd=tmp_path, stdin=b'{"n": 50}\n'
    )
    assert urgent.returncode == 0
    status = poolrun("queue", "status", "q.sqlite", cwd=tmp_path)
    assert json.loads(status.stdout) == {"pending": 9, "running": 0, "done": 0, "failed": 0}

    drain = poolrun(
        "queue", "drain", "q.sqlite", "fn.py:double", "-w", "1", "-b", "1", "--rate", "200/s",
        "-o", "out.jsonl", "--report", "r.json", "--no-progress", cwd=tmp_path,
    )  # fmt: skip
    assert drain.returncode == 1, drain.stderr  # one job failed
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert out == [{"id": i + 1, "value": 2 * i} for i in range(8) if i != 3] + [
        {"id": 9, "value": 100}
    ]
    (error,) = [json.loads(x) for x in (tmp_path / "out.errors.jsonl").read_text().splitlines()]
    assert (error["id"], error["input"], error["error"]["message"]) == (4, {"n": 3}, "three")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["rate"]["limit"] == "200/s" and report["items"] == 9
    status = poolrun("queue", "status", "q.sqlite", cwd=tmp_path)
    assert json.loads(status.stdout) == {"pending": 0, "running": 0, "done": 8, "failed": 1}


def test_clear_errors(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"n": 1}\nnot json\n')
    put = poolrun("queue", "put", "q.sqlite", "bad.jsonl", cwd=tmp_path)
    assert put.returncode == 2 and b"bad.jsonl:2 is not JSON" in put.stderr
    status = poolrun("queue", "status", "bad.jsonl", cwd=tmp_path)
    assert status.returncode == 2 and b"bad.jsonl is not a poolrun queue" in status.stderr
    rate = poolrun("queue", "drain", "q.sqlite", "fn.py:f", "--rate", "lots", cwd=tmp_path)
    assert rate.returncode == 2


def test_run_with_rate_reads_lines_and_reports_the_rate(tmp_path):
    (tmp_path / "fn.py").write_text(FN.replace("== 3", "== -1"))
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"n": i}) + "\n" for i in range(30)))
    run = poolrun(
        "run", "fn.py:double", "in.jsonl", "-o", "out.jsonl", "--rate", "100/s", "--report",
        "r.json", "--no-progress", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out.jsonl").read_text().split() == [str(2 * i) for i in range(30)]
    assert json.loads((tmp_path / "r.json").read_text())["rate"]["limit"] == "100/s"
