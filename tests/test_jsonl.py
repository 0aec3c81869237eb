"""The JSONL building blocks in-process: reader offsets, the worker-side codec, the writers,
reading an errors file back, and SPEC resolution."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import hashlib
import os
import pickle
import textwrap
import zlib
from array import array

import cloudpickle
import orjson
import pytest

from poolrun import worker
from poolrun.backends.wire import unpack
from poolrun.jsonl import (
    INVALID_JSON,
    Cutter,
    Input,
    InputError,
    InvalidJSON,
    LineCounter,
    LineTask,
    LineWriter,
    Range,
    encode,
    error_record,
    read_errors,
)
from poolrun.results import ItemError
from poolrun.spec import SpecError, normalize, resolve

LINES = [b'{"a": 1}\n', b"\n", b'{"a": 2}\r\n', b"not json\n", b'{"a": 3}']


@pytest.fixture
def plain(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(LINES))
    return path


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "fns.py"
    path.write_text(
        textwrap.dedent(
            """
            import datetime as dt
            from dataclasses import dataclass

            import numpy as np

            @dataclass
            class Point:
                x: int
                when: dt.date

            def double(record):
                return {"a": record["a"] * 2}

            def shapes(record):
                grid = np.arange(6).reshape(2, 3)
                return {
                    "mean": np.float32(1.5), "n": np.int64(3), "grid": grid,
                    "column": grid[:, 1], "point": Point(1, dt.date(2024, 2, 29)),
                    "at": dt.datetime(2024, 1, 2, 3, 4, 5), "tags": {"x"}, 7: "int key",
                }

            answer = 42
            """
        )
    )
    return path


# -- reading ------------------------------------------------------------------------------


def test_lines_carry_their_numbers_and_exact_bytes(plain) -> None:
    source = Input(str(plain))
    got = list(source.lines())
    source.close()
    assert got == list(enumerate(LINES, 1))
    assert source.size == len(b"".join(LINES)) and not source.compressed


def test_gzip_is_recognised_by_its_bytes_and_offsets_count_decompressed(tmp_path) -> None:
    path = tmp_path / "in.data"  # no .gz suffix on purpose
    path.write_bytes(gzip.compress(b"".join(LINES)))
    source = Input(str(path))
    assert source.compressed
    assert [raw for _, raw in source.lines()] == LINES
    source.close()


def test_skip_hashes_the_prefix_then_lines_continue(plain) -> None:
    prefix = len(LINES[0]) + len(LINES[1])
    source = Input(str(plain))
    hasher = hashlib.sha1()
    source.skip(prefix, hasher)
    rest = list(source.lines(2))
    source.close()
    assert hasher.hexdigest() == hashlib.sha1(LINES[0] + LINES[1]).hexdigest()
    assert rest[0] == (3, LINES[2])


def test_a_missing_input_is_an_input_error(tmp_path) -> None:
    with pytest.raises(InputError, match=r"cannot read .*No such file"):
        Input(str(tmp_path / "missing.jsonl"))
    with pytest.raises(InputError, match="Is a directory"):
        Input(str(tmp_path))


def test_a_truncated_gzip_fails_as_an_input_error(tmp_path) -> None:
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(gzip.compress(b"".join(LINES) * 1000)[:-20])
    source = Input(str(path))
    with pytest.raises(InputError, match="cannot read"):
        list(source.lines())


def test_line_counter_counts_after_an_offset(plain) -> None:
    counter = LineCounter(str(plain), offset=len(LINES[0]))
    counter.run()
    assert counter.total == 4  # the last line has no newline and still counts


# -- the worker-side codec ----------------------------------------------------------------


def test_line_task_runs_the_function_on_decoded_json(spec_file) -> None:
    task = LineTask(f"{spec_file}:double")
    assert task(b'{"a": 21}\n') == b'{"a":42}\n'
    assert task(b"  \r\n") == b""  # blank lines are skipped


def test_line_task_marks_invalid_json(spec_file) -> None:
    task = LineTask(f"{spec_file}:double")
    with pytest.raises(InvalidJSON, match="line 1 column 1"):
        task(b"nope\n")
    assert INVALID_JSON == "poolrun.jsonl.codec.InvalidJSON"


def test_line_task_pickles_as_its_spec_only(spec_file) -> None:
    task = LineTask(f"{spec_file}:double")
    payload = cloudpickle.dumps(task)
    assert b"double" in payload and len(payload) < 300
    again = pickle.loads(payload)
    assert again.spec == task.spec and again(b'{"a": 1}') == b'{"a":2}\n'


def test_numpy_datetimes_dataclasses_and_sets_are_encoded(spec_file) -> None:
    out = orjson.loads(LineTask(f"{spec_file}:shapes")(b"{}"))
    assert out == {
        "mean": 1.5,
        "n": 3,
        "grid": [[0, 1, 2], [3, 4, 5]],
        "column": [1, 4],  # not contiguous: orjson refuses it, the default handler does not
        "point": {"x": 1, "when": "2024-02-29"},
        "at": "2024-01-02T03:04:05",
        "tags": ["x"],
        "7": "int key",
    }


def test_datetime_subclasses_are_encoded() -> None:
    class Stamp(dt.datetime):
        pass

    assert encode(Stamp(2024, 1, 2)) == b'"2024-01-02T00:00:00"\n'


def test_values_json_cannot_hold_fail_clearly() -> None:
    with pytest.raises(TypeError, match="not JSON serializable: object"):
        encode(object())


# -- errors file --------------------------------------------------------------------------


def test_error_record_for_an_invalid_line_keeps_the_raw_text() -> None:
    error = ItemError(INVALID_JSON, "unexpected character", "Traceback ...", "exception")
    record = orjson.loads(error_record(4, b"not json\r\n", error))
    assert record == {
        "line": 4,
        "input": "not json\r",  # exactly the line's bytes, so retry reruns the same input
        "error": {
            "type": "JSONDecodeError",
            "message": "unexpected character",
            "traceback": "",
            "cause": "invalid-json",
        },
    }


def test_error_record_for_a_failed_call_has_the_parsed_input() -> None:
    error = ItemError("ValueError", "bad", "Traceback (most recent call last): ...", "timeout")
    line = error_record(9, b'{"a": [1, 2]}\n', error)
    assert line.endswith(b"}\n") and line.count(b"\n") == 1
    record = orjson.loads(line)
    assert record["line"] == 9 and record["input"] == {"a": [1, 2]}
    assert record["error"] == {
        "type": "ValueError",
        "message": "bad",
        "traceback": "Traceback (most recent call last): ...",
        "cause": "timeout",
    }


def _errors_file(path, numbers) -> None:
    failure = ItemError("ValueError", "bad", "", "exception")
    invalid = ItemError(INVALID_JSON, "bad", "", "exception")
    with open(path, "wb") as f:
        for n in numbers:
            if n % 2:
                f.write(error_record(n, b'{"n": %d}' % n, failure))
            else:
                f.write(error_record(n, b"raw %d" % n, invalid))


@pytest.mark.parametrize("numbers", [[1, 2, 5, 9], [9, 2, 5, 1]])
def test_read_errors_gives_failed_lines_back_in_line_order(tmp_path, numbers) -> None:
    path = tmp_path / "errors.jsonl"
    _errors_file(path, numbers)
    got = list(read_errors(str(path)))
    assert got == [(1, b'{"n":1}\n'), (2, b"raw 2\n"), (5, b'{"n":5}\n'), (9, b'{"n":9}\n')]


def test_read_errors_refuses_other_files(plain) -> None:
    with pytest.raises(InputError, match="line 1 is not a poolrun errors record"):
        list(read_errors(str(plain)))


# -- writers ------------------------------------------------------------------------------


def test_writer_counts_bytes_and_resumes_by_cutting_back(tmp_path) -> None:
    path = tmp_path / "out.jsonl"
    writer = LineWriter(str(path))
    writer.write(b"one\n")
    writer.write(b"two\n")
    writer.sync()
    assert path.read_bytes() == b"one\ntwo\n" and writer.size == 8
    writer.write(b"tor")  # a torn line after the last checkpoint
    writer.close()
    resumed = LineWriter(str(path), size=4)
    resumed.write(b"TWO\n")
    resumed.close()
    assert path.read_bytes() == b"one\nTWO\n" and resumed.size == 8


def test_lazy_writer_creates_nothing_until_a_line_and_drops_a_stale_file(tmp_path) -> None:
    path = tmp_path / "errors.jsonl"
    path.write_bytes(b"from an older run\n")
    writer = LineWriter(str(path), lazy=True)
    assert not path.exists()
    writer.write(b"x\n")
    writer.close()
    assert path.read_bytes() == b"x\n"


def test_writer_to_a_device_neither_truncates_nor_fsyncs_it() -> None:
    writer = LineWriter("/dev/null")
    writer.write(b"x\n")
    writer.sync()
    writer.close()


# -- SPEC ---------------------------------------------------------------------------------


def test_spec_names_a_module_function_or_a_file_function(spec_file) -> None:
    assert resolve("json:dumps")([1]) == "[1]"
    assert resolve(f"{spec_file}:double")({"a": 2}) == {"a": 4}
    assert resolve("os.path:join.__call__")("a", "b") == "a/b"  # dotted attributes


def test_file_spec_is_normalized_to_an_absolute_path(spec_file, monkeypatch) -> None:
    monkeypatch.chdir(spec_file.parent)
    assert normalize("fns.py:double") == f"{spec_file}:double"
    assert normalize("json:dumps") == "json:dumps"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nocolon", "SPEC must be 'package.module:function' or 'path/to/file.py:function'"),
        ("json:", "SPEC must be"),
        ("no_such_module_xyz:f", "no module named 'no_such_module_xyz'"),
        ("json:nope", "'json' has no function 'nope'"),
        ("os:sep", "'os:sep' is not callable"),
        ("missing/file.py:f", "cannot read 'missing/file.py': no such file"),
    ],
)
def test_bad_specs_fail_with_one_clear_line(spec, message) -> None:
    with pytest.raises(SpecError) as caught:
        resolve(spec)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_spec_file_that_fails_to_import_says_why(tmp_path) -> None:
    (tmp_path / "broken.py").write_text("def f(x) return x\n")
    (tmp_path / "needs.py").write_text("import no_such_dependency_xyz\n")
    (tmp_path / "folder.py").mkdir()
    with pytest.raises(SpecError, match=r"importing .*broken\.py' failed: SyntaxError"):
        resolve(f"{tmp_path}/broken.py:f")
    with pytest.raises(SpecError, match="ModuleNotFoundError: No module named 'no_such_dep"):
        resolve(f"{tmp_path}/needs.py:f")
    with pytest.raises(SpecError, match=r"folder\.py': not a file"):
        resolve(f"{tmp_path}/folder.py:f")


def test_spec_file_dataclasses_work_and_its_folder_is_importable(tmp_path) -> None:
    (tmp_path / "helper_mod_xyz.py").write_text("FACTOR = 3\n")
    (tmp_path / "uses.py").write_text(
        "from dataclasses import dataclass\nfrom helper_mod_xyz import FACTOR\n"
        "@dataclass\nclass R:\n    v: int\n"
        "def f(x):\n    return R(x * FACTOR)\n"
    )
    assert dataclasses.asdict(resolve(f"{tmp_path}/uses.py:f")(2)) == {"v": 6}


# -- byte ranges --------------------------------------------------------------------------


def cutter_for(tmp_path, data: bytes, window: int = 4) -> Cutter:
    path = tmp_path / "cut.jsonl"
    path.write_bytes(data)
    return Cutter(os.open(path, os.O_RDONLY), len(data), window=window)


def test_a_range_ends_at_the_first_line_start_at_or_after_the_wanted_offset(tmp_path) -> None:
    data = b"ab\ncdefghijklmnop\nq\n"  # lines start at 0, 3, 18; 20 is the end
    cut = cutter_for(tmp_path, data)  # a 4-byte window: the long line takes several reads
    assert [cut.line_start(at) for at in (0, 1, 3, 4, 17, 18, 19, 20, 50)] == [
        0, 3, 3, 18, 18, 18, 20, 20, 20,
    ]  # fmt: skip
    assert [cut.after_lines(0, n) for n in (1, 2, 3, 9)] == [3, 18, 20, 20]
    assert cut.after_lines(3, 1) == 18


def test_no_final_newline_ends_the_last_range_at_the_end(tmp_path) -> None:
    cut = cutter_for(tmp_path, b"a\nbcdefgh")
    assert (cut.line_start(3), cut.after_lines(2, 5)) == (9, 9)


def test_a_range_task_splits_decodes_and_reports_failures_where_they_belong(
    tmp_path, spec_file
) -> None:
    data = b'{"a": 1}\r\n\n{"a": 2}\nnope\n{"b": 0}\n{"a": 3}'
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    task = LineTask(f"{spec_file}:double", str(path))
    result = task(Range(0, 0, len(data)))
    assert bytes(result.block) == b'{"a":2}\n{"a":4}\n{"a":6}\n'
    assert result.lines == 6 and result.crc == zlib.crc32(data)
    bad_json, no_a = result.failures
    assert (bad_json.line, bad_json.out_at, bad_json.type) == (3, 16, INVALID_JSON)
    assert (no_a.line, no_a.out_at, no_a.type, no_a.raw) == (4, 16, "KeyError", b'{"b": 0}')
    assert "in __call__" in no_a.traceback and "in double" in no_a.traceback
    assert bytes(task(Range(1, 10, 9)).block) == b'{"a":4}\n'  # the second line alone


def test_a_range_block_travels_out_of_band_and_arrives_as_a_view(tmp_path, spec_file) -> None:
    """Pickled in band, a block of a few MB costs the pickler ~1 s per GB; out of band it
    goes from the worker's buffer to the socket, and the supervisor reads it in place."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a": 1}\n' * 1000)
    result = LineTask(f"{spec_file}:double", str(path))(Range(0, 0, 9000))
    message = worker.encode_result(7, [result], array("d", [0.0]), None, ())
    assert isinstance(message, list)  # header, pickle, then the block itself
    received = b"".join(bytes(memoryview(part)) for part in message)
    kind, batch, values, *_ = unpack(received)
    block = values[0].block
    assert (kind, batch) == ("done", 7)
    assert isinstance(block, memoryview) and block.obj is received  # not a copy
    assert bytes(block) == b'{"a":2}\n' * 1000
    plain = worker.encode_result(8, [1, 2], array("d", [0.0, 0.0]), None, ())
    assert isinstance(plain, bytes) and unpack(plain)[2] == [1, 2]  # no buffers: a pickle
