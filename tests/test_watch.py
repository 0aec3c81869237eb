"""``poolrun watch`` follows a CLI job running in another process, through its status file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import wait_until
from terminal import Terminal

POOLRUN = str(Path(sys.executable).with_name("poolrun"))

FN = """
import time


def work(record):
    time.sleep(0.004)
    if record["i"] == 7:
        raise ValueError("seven")
    return record
"""


@pytest.fixture
def job_files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "fn.py").write_text(FN)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(1500)))
    return {
        "spec": f"{tmp_path}/fn.py:work",
        "input": str(source),
        "out": str(tmp_path / "out.jsonl"),
        "status": str(tmp_path / "out.status.json"),
    }


def _start(files: dict[str, str]) -> subprocess.Popen:
    args = [POOLRUN, "run", files["spec"], files["input"], "-o", files["out"], "-w", "2"]
    return subprocess.Popen([*args, "--no-progress"], stderr=subprocess.PIPE)


def test_watch_follows_a_running_job_to_its_end(job_files):
    job = _start(job_files)
    term = Terminal([POOLRUN, "watch", job_files["out"]])
    assert term.read_until(lambda text: "finished in" in text), term.text[-3000:]
    assert term.finish() == 0
    assert job.wait(timeout=60) == 1  # line 8 failed
    job.stderr.close()
    text = term.text
    assert text.count("throughput") >= 2  # it drew the job while it ran, not only the end
    assert "ETA" in text  # the job estimated its input lines for the watcher
    assert "w1 pid" in text and "w2 pid" in text
    final = text[text.rindex("finished in") - 2000 :]
    assert "1,500 / 1,500 items" in final and "1 failed" in final
    status = json.loads(Path(job_files["status"]).read_text())
    assert status["state"] == "finished" and status["done"] == 1500


def test_watch_exits_when_the_job_is_killed(job_files):
    source = Path(job_files["input"])
    source.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(50_000)))
    job = _start(job_files)
    status = Path(job_files["status"])
    assert wait_until(status.exists, timeout=30)
    job.kill()
    job.wait(timeout=30)
    job.stderr.close()
    done = subprocess.run([POOLRUN, "watch", job_files["out"]], capture_output=True, timeout=60)
    assert done.returncode == 1
    assert b"gone without finishing" in done.stderr


def test_run_draws_the_live_view_on_its_own_terminal(job_files):
    args = [POOLRUN, "run", job_files["spec"], job_files["input"], "-o", job_files["out"]]
    term = Terminal([*args, "-w", "2", "--live"])
    assert term.read_until(lambda text: "finished in" in text), term.text[-3000:]
    assert term.finish() == 1  # line 8 failed
    text = term.text
    assert "w1 pid" in text and "1,500 / 1,500 items" in text
    assert "poolrun report" in text  # the summary table still follows the view
