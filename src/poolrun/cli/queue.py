"""``poolrun queue put|drain|status``: a :class:`~poolrun.Queue` from the command line.

``put`` adds the JSON records of a JSONL file (or stdin) as jobs, a transaction per
10,000 lines; ``drain`` runs SPEC over every pending job with every engine option of
``run`` and writes ``{"id": ID, "value": VALUE}`` per job that succeeded (jobs run by
priority, so each result names its job) and an errors line per job that failed;
``status`` prints the counts as JSON.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from typing import IO, Any

import click

from ..durable.queue import Queue
from ..jsonl.codec import encode
from ..results import ItemResult, RunAborted
from ..spec import SpecFunction, normalize, resolve
from .flags import engine_kwargs, engine_options, output_options, parse_flag_max_failures, say
from .resume import EXIT_ABORTED, EXIT_FAILED, EXIT_OK, SetupError, Targets

PUT_CHUNK = 10_000


@click.group("queue")
def queue_command() -> None:
    """A durable job queue in one SQLite file: put JSONL records in, drain them on workers.

    \b
    Examples:
      poolrun queue put jobs.sqlite records.jsonl --priority 5
      poolrun queue drain jobs.sqlite mypkg.mod:fn -w 8 --rate 50/s -o results.jsonl
      poolrun queue status jobs.sqlite
    """


@queue_command.command("put")
@click.argument("queue")
@click.argument("input", default="-", metavar="[INPUT.jsonl|-]")
@click.option("--priority", type=int, default=0, show_default=True, metavar="N",
              help="Higher runs first; FIFO within a priority. Example: --priority 9")  # fmt: skip
def put(queue: str, input: str, priority: int) -> int:
    """Add each JSON line of INPUT (default: stdin) to QUEUE as a job."""
    added: list[int] = []
    with _open_queue(queue) as jobs, ExitStack() as stack:
        source = sys.stdin.buffer if input == "-" else stack.enter_context(_read(input))
        for chunk in _chunks(_records(source, input)):
            added += jobs.put_many(chunk, priority)
    what = f"ids {added[0]}..{added[-1]}" if added else "nothing to add"
    say(f"added {len(added)} jobs to {queue} ({what})")
    return EXIT_OK


@queue_command.command("drain")
@click.argument("queue")
@click.argument("spec")
@output_options
@engine_options
def drain(queue: str, spec: str, **flags: Any) -> int:
    """Run SPEC over every pending job of QUEUE; results are also stored in QUEUE."""
    resolve(spec)  # fail here, with the user's own path in the message
    options = engine_kwargs(flags, parse_flag_max_failures(flags["max_failures"]))
    options["progress"] = "auto" if not flags["no_progress"] and sys.stderr.isatty() else False
    targets = Targets.from_flags(flags)
    with _open_queue(queue) as jobs:
        try:
            run, status = jobs.drain(SpecFunction(normalize(spec)), **options), EXIT_OK
        except RunAborted as exc:
            say(f"stopped: {exc}")
            run, status = exc.run, EXIT_ABORTED
        failed = _write(jobs, run.results, targets)
    if targets.report:
        run.report.save(targets.report)
    if targets.trace:
        run.trace.save(targets.trace)
    click.echo(str(run.report), err=True)
    if failed:
        say(f"{failed} jobs failed; they are in {targets.errors}")
    return status if status != EXIT_OK else (EXIT_FAILED if failed else EXIT_OK)


@queue_command.command("status")
@click.argument("queue")
def status(queue: str) -> int:
    """Print how many jobs of QUEUE are pending, running, done and failed (JSON)."""
    with _open_queue(queue) as jobs:
        click.echo(json.dumps(jobs.status()))
    return EXIT_OK


def _open_queue(path: str) -> Queue:
    try:
        return Queue(path)
    except ValueError as exc:
        raise SetupError(str(exc)) from None


def _read(path: str) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise SetupError(f"cannot read {path!r}: {exc.strerror or exc}") from None


def _records(source: IO[bytes], name: str) -> Iterator[Any]:
    for number, line in enumerate(source, 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except ValueError as exc:
            raise SetupError(
                f"{name}:{number} is not JSON ({exc}); no job of it was added"
            ) from None


def _chunks(records: Iterator[Any]) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == PUT_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _write(jobs: Queue, results: list[ItemResult], targets: Targets) -> int:
    """Results to OUT, failures to the errors file; returns how many jobs failed."""
    failed = 0
    with ExitStack() as stack:
        out = (
            sys.stdout.buffer
            if targets.output is None
            else stack.enter_context(open(targets.output, "wb"))
        )
        errors = None
        for result in results:
            line = _line(result)
            if line is not None:
                out.write(line)
                continue
            failed += 1
            if errors is None:
                errors = stack.enter_context(open(targets.errors, "wb"))
            error = result.error or _unencodable(result)
            record = {"id": result.index, "input": jobs.get(result.index).item,
                      "error": {"type": error.type, "message": error.message,
                                "traceback": error.traceback, "cause": error.cause}}  # fmt: skip
            errors.write(encode(record))
        out.flush()
    return failed


def _line(result: ItemResult) -> bytes | None:
    if not result.ok:
        return None
    try:
        return encode({"id": result.index, "value": result.value})
    except TypeError:
        return None


def _unencodable(result: ItemResult) -> Any:
    from ..results import ItemError

    message = f"the value ({type(result.value).__name__}) cannot be written as JSON"
    return ItemError("TypeError", message, "", "unencodable")
