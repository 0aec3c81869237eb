"""Errors files: the record of a failed line, and reading those records back for ``retry``."""

from __future__ import annotations

from collections.abc import Iterator
from operator import itemgetter

import orjson

from ..results import ItemError
from .codec import INVALID_JSON, encode
from .reader import Input, InputError, Line


def error_record(line: int, raw: bytes, error: ItemError) -> bytes:
    """One errors-file line: the input line number, the input, and what went wrong.

    The input is the parsed JSON when the line is JSON, else the raw text (cause
    ``invalid-json``); the traceback of an invalid line would only point into poolrun.
    """
    if error.type == INVALID_JSON:
        fields = {
            "type": "JSONDecodeError",
            "message": error.message,
            "traceback": "",
            "cause": "invalid-json",
        }
        return encode({"line": line, "input": _text(raw), "error": fields})
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = _text(raw)
    fields = {
        "type": error.type,
        "message": error.message,
        "traceback": error.traceback,
        "cause": error.cause,
    }
    return encode({"line": line, "input": value, "error": fields})


def _text(raw: bytes) -> str:
    """The line as text, without its newline (``retry`` puts it back, to rerun the same bytes)."""
    return raw.removesuffix(b"\n").decode("utf-8", "replace")


def read_errors(path: str) -> Iterator[Line]:
    """The failed lines of a poolrun errors file, to run again: ``(line, raw line)``.

    Lines that were not JSON are given back as their raw text; the others re-encoded.
    Records come back sorted by line number (an ``--unordered`` run writes them unsorted).
    """
    records = _errors_records(path)
    if _sorted(_errors_records(path)):
        yield from records
    else:
        yield from sorted(records, key=itemgetter(0))


def _sorted(records: Iterator[Line]) -> bool:
    previous = 0
    for line, _ in records:
        if line < previous:
            return False
        previous = line
    return True


def _errors_records(path: str) -> Iterator[Line]:
    source = Input(path)
    try:
        for number, text in source.lines():
            if text.isspace():
                continue
            try:
                record = orjson.loads(text)
                line, value, cause = record["line"], record["input"], record["error"]["cause"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise InputError(f"{path!r} line {number} is not a poolrun errors record") from None
            raw = value.encode() if cause == "invalid-json" else orjson.dumps(value)
            yield line, raw + b"\n"
    finally:
        source.close()
