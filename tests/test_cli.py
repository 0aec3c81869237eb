"""``poolrun run`` and ``poolrun retry``, run for real in subprocesses."""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import click
import orjson
import pytest

from poolrun.cli import cli

POOLRUN = str(Path(sys.executable).with_name("poolrun"))

FNS = """
import time


def transform(record):
    if record.get("fail"):
        raise ValueError(f"record {record['id']} is marked bad")
    return {"id": record["id"], "square": record["id"] ** 2, "name": record["name"].upper()}


def fixed(record):
    return {"id": record["id"], "fixed": True}


def slow_three(record):
    if record["id"] == 3:
        time.sleep(60)
    return record
"""


def poolrun(*args: str, cwd=None, stdin: bytes | None = None, timeout: float = 60):
    return subprocess.run(
        [POOLRUN, *args], cwd=cwd, input=stdin, capture_output=True, timeout=timeout
    )


def records(n: int, fail_every: int = 0, invalid_every: int = 0) -> bytes:
    lines = []
    for i in range(n):
        if invalid_every and i % invalid_every == invalid_every - 1:
            lines.append(b'{"id": %d, "name": "torn' % i)
            continue
        record = {"id": i, "name": f"name {i}"}
        if fail_every and i % fail_every == fail_every - 1:
            record["fail"] = True
        lines.append(orjson.dumps(record))
    return b"\n".join(lines) + b"\n"


def serial(data: bytes, fn_name: str = "transform") -> tuple[bytes, list[tuple[int, str]]]:
    """The reference: a plain loop, no poolrun. Returns the output and (line, cause) errors."""
    namespace: dict = {}
    exec(FNS, namespace)
    fn = namespace[fn_name]
    out, errors = [], []
    for number, line in enumerate(data.splitlines(), 1):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            errors.append((number, "invalid-json"))
            continue
        try:
            out.append(orjson.dumps(fn(record)) + b"\n")
        except Exception:
            errors.append((number, "exception"))
    return b"".join(out), errors


def error_lines(path: Path) -> list[tuple[int, str]]:
    """(line, cause) of each record in an errors file; none when the file was never made."""
    if not path.exists():
        return []
    return [
        (r["line"], r["error"]["cause"]) for r in map(json.loads, path.read_text().splitlines())
    ]


def one_line(stderr: bytes) -> str:
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, stderr.decode()
    assert "Traceback" not in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    (folder / "fns.py").write_text(FNS)
    (folder / "big.jsonl").write_bytes(records(20_000, fail_every=97, invalid_every=1009))
    (folder / "small.jsonl").write_bytes(records(50, fail_every=10))
    return folder


def spec(work: Path, name: str = "transform") -> str:
    return f"{work}/fns.py:{name}"


@pytest.fixture(params=["ranges", "lines"])
def reading(request) -> str:
    """How the run reads its input: a plain file is read by the workers in byte ranges, a
    gzip file by the supervisor line by line. Both must behave the same."""
    return request.param


def as_read(path: Path, reading: str, folder: Path) -> Path:
    """``path`` itself for the range path, a gzip copy of it for the line path."""
    if reading == "ranges":
        return path
    packed = folder / (path.name + ".gz")
    packed.write_bytes(gzip.compress(path.read_bytes()))
    return packed


# -- results ------------------------------------------------------------------------------


def test_twenty_thousand_lines_equal_a_serial_run(work, tmp_path, reading) -> None:
    out, report, trace = tmp_path / "out.jsonl", tmp_path / "report.json", tmp_path / "t.json"
    source = as_read(work / "big.jsonl", reading, tmp_path)
    done = poolrun(
        "run", spec(work), str(source), "-o", str(out), "--no-progress",
        "--report", str(report), "--trace", str(trace), "-w", "2",
    )  # fmt: skip
    want_out, want_errors = serial((work / "big.jsonl").read_bytes())
    assert done.returncode == 1, done.stderr.decode()
    assert out.read_bytes() == want_out
    assert error_lines(tmp_path / "out.errors.jsonl") == want_errors
    assert {cause for _, cause in want_errors} == {"exception", "invalid-json"}
    assert json.loads(report.read_text())["items"] == 20_000
    assert json.loads(trace.read_text())["traceEvents"]
    stderr = done.stderr.decode()
    assert "poolrun report" in stderr and "throughput" in stderr
    assert f"{len(want_errors)} lines failed; they are in {tmp_path}/out.errors.jsonl" in stderr


def test_gzip_input_gives_the_same_output(work, tmp_path) -> None:
    packed = tmp_path / "big.jsonl.gz"
    packed.write_bytes(gzip.compress((work / "big.jsonl").read_bytes()))
    done = poolrun("run", spec(work), str(packed), "-o", str(tmp_path / "o.jsonl"), "--no-progress")
    assert done.returncode == 1
    assert (tmp_path / "o.jsonl").read_bytes() == serial((work / "big.jsonl").read_bytes())[0]


def test_stdin_to_stdout_with_the_default_errors_file(work, tmp_path) -> None:
    data = (work / "small.jsonl").read_bytes()
    done = poolrun("run", spec(work), "-", cwd=tmp_path, stdin=data)
    want_out, want_errors = serial(data)
    assert done.returncode == 1
    assert done.stdout == want_out
    assert error_lines(tmp_path / "poolrun.errors.jsonl") == want_errors
    assert "they are in poolrun.errors.jsonl" in done.stderr.decode()


def test_output_to_a_device_keeps_errors_and_checkpoint_out_of_dev(work, tmp_path) -> None:
    done = poolrun("run", spec(work), str(work / "small.jsonl"), "-o", "/dev/null", cwd=tmp_path)
    assert done.returncode == 1
    assert (
        error_lines(tmp_path / "poolrun.errors.jsonl")
        == serial((work / "small.jsonl").read_bytes())[1]
    )
    assert not Path("/dev/null.errors.jsonl").exists()
    assert not Path("/dev/null.checkpoint.json").exists()


def test_a_module_spec_is_found_in_the_working_directory(work, tmp_path) -> None:
    (tmp_path / "mymod.py").write_text(FNS)
    done = poolrun("run", "mymod:fixed", str(work / "small.jsonl"), "-o", "o.jsonl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr.decode()
    assert (tmp_path / "o.jsonl").read_bytes() == serial(
        (work / "small.jsonl").read_bytes(), "fixed"
    )[0]
    assert not (tmp_path / "o.errors.jsonl").exists()  # no failures: no empty errors file


def test_invalid_json_fails_its_own_line_only(work, tmp_path, reading) -> None:
    lines = [b'{"id": 0, "name": "a"}', b"{oops", b"", b'{"id": 3, "name": "d"}', b"[1, 2", b"  "]
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    source = as_read(source, reading, tmp_path)
    done = poolrun("run", spec(work), str(source), "-o", str(tmp_path / "o.jsonl"))
    assert done.returncode == 1
    assert (tmp_path / "o.jsonl").read_bytes() == (
        b'{"id":0,"square":0,"name":"A"}\n{"id":3,"square":9,"name":"D"}\n'
    )  # blank lines are skipped
    errors = [json.loads(x) for x in (tmp_path / "o.errors.jsonl").read_text().splitlines()]
    assert [(e["line"], e["input"], e["error"]["cause"]) for e in errors] == [
        (2, "{oops", "invalid-json"),
        (5, "[1, 2", "invalid-json"),
    ]


def test_the_bundled_example_serializes_numpy_dates_and_dataclasses(tmp_path) -> None:
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "r.jsonl"
    done = poolrun(
        "run", "examples/transform.py:transform", "examples/records.jsonl", "-o", str(out),
        cwd=root,
    )  # fmt: skip
    assert done.returncode == 1
    first = json.loads(out.read_text().splitlines()[0])
    assert set(first) == {"id", "name", "country", "signup", "mean", "best", "scores"}
    assert len(out.read_text().splitlines()) == 1997
    assert error_lines(tmp_path / "r.errors.jsonl") == [
        (137, "invalid-json"),
        (1024, "invalid-json"),
        (1500, "exception"),
    ]


def test_unordered_writes_the_same_lines(work, tmp_path, reading) -> None:
    out = tmp_path / "o.jsonl"
    source = as_read(work / "big.jsonl", reading, tmp_path)
    done = poolrun("run", spec(work), str(source), "-o", str(out), "--unordered")
    want_out, want_errors = serial((work / "big.jsonl").read_bytes())
    assert done.returncode == 1
    assert sorted(out.read_bytes().splitlines()) == sorted(want_out.splitlines())
    assert sorted(error_lines(tmp_path / "o.errors.jsonl")) == want_errors


def test_timeout_and_retries_reach_the_engine(work, tmp_path, reading) -> None:
    source = as_read(work / "small.jsonl", reading, tmp_path)
    done = poolrun(
        "run", spec(work, "slow_three"), str(source), "-o", str(tmp_path / "o.jsonl"),
        "--timeout", "0.5", "--retries", "1", "-b", "4",
    )  # fmt: skip
    assert done.returncode == 1
    [error] = [json.loads(x) for x in (tmp_path / "o.errors.jsonl").read_text().splitlines()]
    assert (error["line"], error["error"]["cause"]) == (4, "timeout")
    assert "1 retries" in done.stderr.decode()


# -- --max-failures -----------------------------------------------------------------------


def test_max_failures_stops_with_valid_outputs_that_resume(work, tmp_path, reading) -> None:
    data = (work / "big.jsonl").read_bytes()
    out = tmp_path / "o.jsonl"
    source = as_read(work / "big.jsonl", reading, tmp_path)
    args = ["run", spec(work), str(source), "-o", str(out), "--no-progress"]
    stopped = poolrun(*args, "--max-failures", "20")
    assert stopped.returncode == 3, stopped.stderr.decode()
    assert "stopped:" in stopped.stderr.decode() and "--resume continues" in stopped.stderr.decode()
    want_out, want_errors = serial(data)
    written = out.read_bytes()
    assert written and want_out.startswith(written) and len(written) < len(want_out)
    assert want_errors[: len(error_lines(tmp_path / "o.errors.jsonl"))] == error_lines(
        tmp_path / "o.errors.jsonl"
    )
    again = poolrun(*args, "--max-failures", "20", "--resume")  # the budget spans resumes
    assert again.returncode == 3
    assert want_out.startswith(out.read_bytes())
    finished = poolrun(*args, "--max-failures", "1000", "--resume")
    assert finished.returncode == 1, finished.stderr.decode()
    assert out.read_bytes() == want_out
    assert error_lines(tmp_path / "o.errors.jsonl") == want_errors


def test_max_failures_as_a_percentage(work, tmp_path, reading) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(records(2000, fail_every=2))
    source = as_read(source, reading, tmp_path)
    done = poolrun(
        "run", spec(work), str(source), "-o", str(tmp_path / "o.jsonl"), "--max-failures", "10%"
    )
    assert done.returncode == 3
    assert "more than max_failures=0.1" in done.stderr.decode()


# -- retry --------------------------------------------------------------------------------


def test_retry_reruns_failed_lines_in_their_original_order(work, tmp_path) -> None:
    first = poolrun("run", spec(work), str(work / "big.jsonl"), "-o", str(tmp_path / "o.jsonl"))
    assert first.returncode == 1
    errors = tmp_path / "o.errors.jsonl"
    failed = [json.loads(x) for x in errors.read_text().splitlines()]
    shuffled = tmp_path / "shuffled.jsonl"  # as an --unordered run may write them
    shuffled.write_text("".join(json.dumps(r) + "\n" for r in failed[::-1]))

    again = poolrun("retry", str(shuffled), spec(work, "fixed"), "-o", str(tmp_path / "r.jsonl"))
    assert again.returncode == 1  # invalid JSON stays invalid
    ids = [json.loads(x)["id"] for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    want = [r["input"]["id"] for r in failed if r["error"]["cause"] == "exception"]
    assert ids == want
    still = error_lines(tmp_path / "r.errors.jsonl")
    assert still == [
        (r["line"], "invalid-json") for r in failed if r["error"]["cause"] == "invalid-json"
    ]

    same = poolrun("retry", str(errors), spec(work), "-o", str(tmp_path / "s.jsonl"))
    assert same.returncode == 1
    assert (tmp_path / "s.errors.jsonl").read_text().splitlines() == errors.read_text().splitlines()


def test_retry_will_not_overwrite_the_errors_file_it_reads(work, tmp_path) -> None:
    errors = tmp_path / "o.errors.jsonl"
    errors.write_text("")
    done = poolrun("retry", str(errors), spec(work), "-o", str(tmp_path / "o.jsonl"))
    assert done.returncode == 2
    assert "would overwrite the input" in one_line(done.stderr)


# -- usage and setup errors: exit 2, one line ---------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "no_such_module_xyz:f", "IN"], "no module named 'no_such_module_xyz'"),
        (["run", "FNS:nope", "IN"], "has no function 'nope'"),
        (["run", "WORK/missing.py:f", "IN"], "missing.py': no such file"),
        (["run", "WORK:f", "IN"], "not a file"),
        (["run", "json", "IN"], "SPEC must be"),
        (["run", "SPEC", "WORK/missing.jsonl"], "cannot read"),
        (["run", "SPEC", "WORK"], "Is a directory"),
        (["run", "SPEC", "IN", "-o", "WORK/no/such/folder/o.jsonl"], "folder"),
        (["run", "SPEC", "IN", "-o", "IN"], "would overwrite the input"),
        (["run", "SPEC", "IN", "-o", "WORK/o", "--errors", "WORK/o"], "must be different"),
        (["run", "SPEC", "IN", "--max-rss", "lots"], "--max-rss='lots' is not a size"),
        (["run", "SPEC", "IN", "--max-failures", "x%"], "not a count like '10'"),
        (["run", "SPEC", "IN", "-b", "big"], "--batch-size must be 'auto' or an int"),
        (["run", "SPEC", "IN", "-w", "0"], "0 is not in the range"),
        (["run", "SPEC", "IN", "--bogus"], "No such option '--bogus'"),
        (["run", "SPEC"], "Missing argument 'INPUT'"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["run", "SPEC", "-", "-o", "WORK/x.jsonl", "--resume"], "stdin cannot be read again"),
        (["run", "SPEC", "IN", "--resume"], "the output cannot be cut back"),
        (["run", "SPEC", "IN", "-o", "/dev/null", "--resume"], "the output cannot be cut back"),
        (["run", "SPEC", "IN", "-o", "WORK/x.jsonl", "--unordered", "--resume"], "--unordered"),
        (["run", "SPEC", "IN", "-o", "WORK/none.jsonl", "--resume"], "no checkpoint at"),
        (["retry", "WORK/missing.jsonl", "SPEC"], "does not exist"),
        (["retry", "IN", "SPEC"], "line 1 is not a poolrun errors record"),
    ],
)
def test_usage_and_setup_errors_exit_2_with_one_line(work, tmp_path, args, message) -> None:
    fill = {
        "WORK": str(tmp_path),
        "IN": str(work / "small.jsonl"),
        "SPEC": spec(work),
        "FNS": str(work / "fns.py"),
    }
    for key, value in fill.items():
        args = [a.replace(key, value) for a in args]
    done = poolrun(*args, stdin=b"")
    assert done.returncode == 2, done.stderr.decode()
    line = one_line(done.stderr)
    assert line.startswith("poolrun: error: ") and message in line


def test_a_spec_that_only_fails_in_workers_is_a_setup_error(work, tmp_path) -> None:
    (tmp_path / "gpu.py").write_text(
        "import multiprocessing\nif multiprocessing.parent_process() is not None:\n"
        "    raise RuntimeError('no GPU here')\ndef f(x):\n    return x\n"
    )
    args = ["run", f"{tmp_path}/gpu.py:f", str(work / "small.jsonl"), "-o", str(tmp_path / "o")]
    # workers forked from a copy of the supervisor inherit the module it loaded: no error
    assert poolrun(*args).returncode == 0
    # workers that import it themselves (the forkserver) fail to load it: a setup error
    done = poolrun(*args, "--start-method", "forkserver")
    assert done.returncode == 2
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("poolrun: error: the function could not be loaded in a worker")
    assert "no GPU here" in last


def test_a_spec_that_only_fails_in_workers_prints_one_line(work, tmp_path) -> None:
    (tmp_path / "gpu.py").write_text(
        "import multiprocessing\nif multiprocessing.parent_process() is not None:\n"
        "    raise RuntimeError('no GPU here')\ndef f(x):\n    return x\n"
    )
    for _ in range(3):  # a race: it shows in about three runs out of four
        done = poolrun(
            "run", f"{tmp_path}/gpu.py:f", str(work / "small.jsonl"), "-o", str(tmp_path / "o"),
            "--start-method", "forkserver",
        )  # fmt: skip
        assert done.returncode == 2
        one_line(done.stderr)


# -- resume refusals ----------------------------------------------------------------------


@pytest.fixture
def finished(work, tmp_path, reading) -> tuple[list[str], Path]:
    """A completed run over a copy of the input; returns its arguments and the input."""
    source = tmp_path / "in.jsonl"
    source.write_bytes((work / "small.jsonl").read_bytes())
    source = as_read(source, reading, tmp_path)
    args = ["run", spec(work), str(source), "-o", str(tmp_path / "o.jsonl")]
    assert poolrun(*args).returncode == 1
    return args, source


def test_resuming_a_finished_run_changes_nothing(finished, tmp_path) -> None:
    args, _ = finished
    before = (tmp_path / "o.jsonl").read_bytes()
    done = poolrun(*args, "--resume")
    assert done.returncode == 1  # the earlier failures still count
    assert (tmp_path / "o.jsonl").read_bytes() == before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("append", "the input changed since the checkpoint (size"),
        ("edit", "the input changed since the checkpoint (its first"),
        ("spec", "the checkpoint is for SPEC"),
        ("errors", "the checkpoint wrote errors to"),
        ("output", "the output file is shorter than the checkpoint says"),
    ],
)
def test_resume_refuses_when_something_changed(finished, work, tmp_path, change, message) -> None:
    args, source = finished
    packed = source.suffix == ".gz"
    text = gzip.decompress(source.read_bytes()) if packed else source.read_bytes()
    if change == "append":
        text += b'{"id": 99, "name": "late"}\n'
    elif change == "edit":
        text = text.replace(b"name 1", b"NAME 1", 1)
        if packed:  # the compressed size may change too: either reason will do
            message = "the input changed since the checkpoint"
    elif change == "spec":
        args = [*args[:1], spec(work, "fixed"), *args[2:]]
    elif change == "errors":
        args = [*args, "--errors", str(tmp_path / "elsewhere.jsonl")]
    else:
        (tmp_path / "o.jsonl").write_bytes(b"")
    if change in ("append", "edit"):
        source.write_bytes(gzip.compress(text) if packed else text)
    done = poolrun(*args, "--resume")
    assert done.returncode == 2
    assert message in one_line(done.stderr)


# -- help and progress --------------------------------------------------------------------


def test_every_flag_is_explained_with_an_example() -> None:
    for command in cli.commands.values():
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help and "Example" in param.help, (command.name, param.name)


@pytest.mark.parametrize("command", [[], ["run"], ["retry"]])
def test_help_works_for_each_command(command) -> None:
    done = poolrun(*command, "--help")
    assert done.returncode == 0
    assert b"Example" in done.stdout


def test_progress_bar_on_a_terminal(work, tmp_path) -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # tqdm needs a width
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    args = [POOLRUN, "run", spec(work), str(work / "big.jsonl"), "-o", str(tmp_path / "o.jsonl")]
    done = subprocess.run(
        [*args, "--no-live"],  # the tqdm bar; by default a terminal gets the live view
        stderr=slave,
        timeout=60,
    )
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    shown = b"".join(chunks).decode(errors="replace")
    assert done.returncode == 1
    assert "20000/20000" in shown and "item/s" in shown and "failed=" in shown
