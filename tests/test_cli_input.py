"""Awkward input and faults in ``poolrun run``, on both ways of reading: a plain file (the
workers read byte ranges) and the same bytes gzipped (the supervisor reads lines). Both must
write the same bytes, and the same as a plain loop."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

POOLRUN = str(Path(sys.executable).with_name("poolrun"))

FNS = """
import os
import time


def echo(record):
    return record


def crash_on_five(record):
    if record["id"] == 5:
        os._exit(3)
    return record


def slow(record):
    time.sleep(0.1)
    return record["id"]


def flaky(record):
    marker = os.path.join(os.path.dirname(__file__), f"seen-{record['id']}")
    if record["id"] % 7 == 3 and not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError(f"first try of {record['id']}")
    return record["id"]


def grow(record):
    if record["id"] == 0:
        with open(os.environ["GROW_PATH"], "ab") as f:
            f.write(b'{"id": 999}\\n' * 2000)
        time.sleep(0.2)
    return record["id"]
"""


@pytest.fixture
def fns(tmp_path) -> Path:
    (tmp_path / "fns.py").write_text(FNS)
    return tmp_path


def run_both(
    fns: Path, data: bytes, name: str, *flags: str, readings=("ranges", "lines")
) -> dict[str, tuple]:
    """Run SPEC over ``data`` as a plain file and as gzip; (rc, output, errors, stderr) each."""
    seen = {}
    for reading in readings:
        source = fns / f"in-{reading}.jsonl"
        source.write_bytes(data if reading == "ranges" else gzip.compress(data))
        if reading == "lines":
            source = source.rename(source.with_suffix(".jsonl.gz"))
        out = fns / f"out-{reading}.jsonl"
        done = subprocess.run(
            [POOLRUN, "run", f"{fns}/fns.py:{name}", str(source), "-o", str(out), *flags],
            capture_output=True,
            timeout=120,
        )
        errors = fns / f"out-{reading}.errors.jsonl"
        seen[reading] = (
            done.returncode,
            out.read_bytes(),
            errors.read_bytes() if errors.exists() else b"",
            done.stderr.decode(),
        )
    return seen


def serial(data: bytes) -> tuple[bytes, list[tuple[int, str]]]:
    """The echo function as a plain loop: output and (line, cause) of each failure."""
    out, errors = [], []
    for number, line in enumerate(data.split(b"\n"), 1):
        if number > data.count(b"\n") and not line:
            break  # after the final newline
        if not line.strip():
            continue
        try:
            out.append(orjson.dumps(orjson.loads(line)) + b"\n")
        except orjson.JSONDecodeError:
            errors.append((number, "invalid-json"))
    return b"".join(out), errors


def causes(errors: bytes) -> list[tuple[int, str]]:
    return [(r["line"], r["error"]["cause"]) for r in map(json.loads, errors.splitlines())]


AWKWARD = (
    b'{"id": 0, "text": "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"}\r\n'  # CRLF, multi-byte
    b"\r\n"  # blank, CRLF
    b"\n"
    b'{"id": 3, "torn\r\n'  # invalid, CRLF
    b"   \n"
    + b"".join(b'{"id": %d, "s": "%s"}\n' % (i, "\xe2\x82\xac".encode() * i) for i in range(5, 60))
    + b"[1, 2\n"
    + b'{"id": 61, "last": "no newline \xc3\xa9"}'  # no final newline
)


@pytest.mark.parametrize("batch", ["auto", "1", "3"])
def test_crlf_blank_invalid_utf8_and_no_final_newline(fns, batch) -> None:
    seen = run_both(fns, AWKWARD, "echo", "-b", batch, "--no-progress")
    assert seen["ranges"][:3] == seen["lines"][:3]
    rc, out, errors, _ = seen["ranges"]
    want_out, want_errors = serial(AWKWARD)
    assert rc == 1
    assert out == want_out
    assert causes(errors) == want_errors == [(4, "invalid-json"), (61, "invalid-json")]


def test_lines_of_several_megabytes(fns) -> None:
    big = b'{"id": %d, "blob": "' + b"x" * 3_000_000 + b'"}\n'
    data = b"".join((big % i) if i % 4 == 1 else b'{"id": %d}\n' % i for i in range(12))
    seen = run_both(fns, data, "echo", "--no-progress")
    assert seen["ranges"][:3] == seen["lines"][:3]
    assert seen["ranges"][0] == 0
    assert seen["ranges"][1] == serial(data)[0]


def test_a_crash_fails_its_line_only(fns) -> None:
    data = b"".join(b'{"id": %d}\n' % i for i in range(40))
    seen = run_both(fns, data, "crash_on_five", "--no-progress")
    assert seen["ranges"][:3] == seen["lines"][:3]
    rc, out, errors, _ = seen["ranges"]
    assert rc == 1
    assert causes(errors) == [(6, "worker-died: exit 3")]
    assert len(out.splitlines()) == 39


def test_the_timeout_is_per_line_not_per_range(fns) -> None:
    data = b"".join(b'{"id": %d}\n' % i for i in range(12))
    seen = run_both(fns, data, "slow", "-b", "12", "--timeout", "0.6", "--no-progress")
    for rc, out, errors, stderr in seen.values():
        assert (rc, errors) == (0, b""), stderr  # 1.2 s per batch, 0.1 s per line
        assert out == b"".join(b"%d\n" % i for i in range(12))
        assert "0 timeouts" in stderr


def test_retried_lines_land_in_input_order(fns) -> None:
    data = b"".join(b'{"id": %d}\n' % i for i in range(50))
    for reading in ("ranges", "lines"):
        for marker in fns.glob("seen-*"):
            marker.unlink()
        flags = ("--retries", "1", "--no-progress")
        seen = run_both(fns, data, "flaky", *flags, readings=(reading,))[reading]
        rc, out, errors, stderr = seen
        assert (rc, errors) == (0, b""), stderr
        assert out == b"".join(b"%d\n" % i for i in range(50))
        assert "7 retries" in stderr


def test_a_file_that_grows_is_read_as_it_was_at_the_start(fns) -> None:
    data = b"".join(b'{"id": %d}\n' % i for i in range(100))
    source = fns / "in.jsonl"
    source.write_bytes(data)
    out = fns / "o.jsonl"
    done = subprocess.run(
        [POOLRUN, "run", f"{fns}/fns.py:grow", str(source), "-o", str(out), "--no-progress"],
        capture_output=True,
        timeout=120,
        env={**__import__("os").environ, "GROW_PATH": str(source)},
    )
    assert done.returncode == 0, done.stderr.decode()
    assert out.read_bytes() == b"".join(b"%d\n" % i for i in range(100))
    assert "the input grew by 24000 bytes while it was read" in done.stderr.decode()
