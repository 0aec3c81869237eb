"""``poolrun run``: SPEC over every line of INPUT, results and failures into files.

A regular file on local workers is read by the workers in byte ranges (:class:`RangeFeed`);
stdin, a ``.gz`` file and the Dask backend go through the supervisor line by line
(:class:`LineFeed`). Both give the same bytes in the same files.
"""

from __future__ import annotations

import stat
from typing import Any

import click

from ..batching import BatchSizer
from ..checkpoint import Mark
from ..jsonl import Input, LineCounter, LineTask
from ..options import make_options
from ..spec import normalize, resolve
from .fallback import LinePool
from .feeds import FIRST_RANGE_BYTES, MAX_RANGE_BYTES, Feed, LineFeed, RangeFeed
from .flags import engine_kwargs, engine_options, output_options, parse_flag_max_failures, say
from .job import Budget, Guard, Job
from .resume import (
    EXIT_ABORTED,
    Targets,
    check_paths,
    checkpoint_path,
    resumable,
    writers,
)
from .summary import finish
from .watch import job_display, live_option


@click.command()
@click.argument("spec")
@click.argument("input", metavar="INPUT")
@output_options
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run (Ctrl-C, SIGTERM, a crash, kill -9) from its "
    "checkpoint (OUT with .jsonl replaced by .checkpoint.json): the outputs end up exactly "
    "as an uninterrupted run writes them. Refused when the input, SPEC or outputs changed, "
    "and for stdin, stdout or --unordered. Example: --resume",
)
@live_option
@engine_options
@click.pass_obj
def run(guard: Guard, spec: str, input: str, resume: bool, **flags: Any) -> int:
    """Run SPEC over each line of INPUT; write results to OUT, failures to the errors file.

    \b
    SPEC   the function: package.module:function, or path/to/file.py:function.
           It gets each line's JSON value and returns a JSON-able value
           (numpy values, datetimes and dataclasses are fine).
    INPUT  a .jsonl file, a gzip-compressed one, or - for stdin.

    Results are in input order (unless --unordered), one line per successful input line;
    blank lines are skipped. A line that is not JSON, or whose call raises, goes to the
    errors file with its line number and the run goes on. The summary report is printed
    on stderr at the end. Workers read a plain file themselves, in byte ranges; stdin and
    .gz input are read by poolrun and sent to them line by line. A file that grows during
    the run is read as it was when the run started (the report says so).

    Exit codes: 0 all lines succeeded, 1 some failed, 2 usage or setup error, 3 stopped by
    --max-failures, 130 interrupted (SIGINT/SIGTERM; a second Ctrl-C exits at once).

    \b
    Examples:
      poolrun run examples/transform.py:transform examples/records.jsonl -o out/r.jsonl
      zcat big.jsonl.gz | poolrun run mypkg.mod:fn - > results.jsonl
      poolrun run mypkg.mod:fn big.jsonl -o r.jsonl -w 8 --timeout 30 --report rep.json
      poolrun run mypkg.mod:fn big.jsonl -o r.jsonl --resume   # after Ctrl-C or a crash
    """
    resolve(spec)  # fail here, with the user's own path in the message
    spec = normalize(spec)
    max_failures = parse_flag_max_failures(flags["max_failures"])
    options = engine_kwargs(flags, max_failures)
    targets = Targets.from_flags(flags)
    written = [*targets.paths(), targets.output and checkpoint_path(targets.output)]
    check_paths(None if input == "-" else input, written)
    source = Input(input)
    try:
        ranged = _ranged(source, options)
        task = LineTask(spec, source.path if ranged else None, ranged and bool(flags["timeout"]))
        resumed = resumable(targets, spec, source, resume, options["ordered"])
        start = resumed.base if resumed else Mark(spec, targets.errors, source.size)
        if isinstance(max_failures, int) and start.failed > max_failures:
            say(
                f"stopped: {start.failed} lines failed before, more than --max-failures "
                f"{max_failures}; raise --max-failures to continue"
            )
            return EXIT_ABORTED
        budget = None
        if max_failures is not None and ranged:
            budget = Budget(max_failures, start.failed)
            options["max_failures"] = None  # the engine counts ranges; the job counts lines
        elif isinstance(max_failures, int):
            options["max_failures"] = max_failures - start.failed  # the budget spans resumes
        if ranged:
            feed: Feed = _range_feed(task, source, start, options)
            options = {**options, "batch_size": 1, "retries": 0}  # one range per batch
        else:
            feed = LineFeed(task, source.lines(start.line))
        out, errors = writers(targets, start.output_size, start.errors_size)
        display = job_display(flags, targets.output)
        job = Job(
            feed,
            options,
            out,
            errors,
            guard,
            display,
            resumed,
            _counter(source, start.offset) if display.shows_progress and not ranged else None,
            start.failed,
            budget,
            targets.trace,
        )
        outcome = job.run()
    finally:
        source.close()
    notes = [f"resumed after input line {start.line}"] if resume else []
    return finish(job, outcome, targets, notes)


def _ranged(source: Input, options: dict[str, Any]) -> bool:
    """Byte ranges need a file workers can read at an offset: a plain regular file, and
    workers on this machine. ``--rate`` counts lines, so it takes them one by one."""
    if source.is_stdin or source.compressed or options["backend"] != "local" or options["rate"]:
        return False
    return stat.S_ISREG(source.mode)


def _range_feed(task: LineTask, source: Input, start: Mark, options: dict[str, Any]) -> RangeFeed:
    """Ranges sized in bytes by the engine's own sizer (time and memory), unless the
    batch size is fixed: then each range holds that many lines."""
    engine = make_options(**options)
    fixed = engine.batch_size if isinstance(engine.batch_size, int) else None
    sizer = None
    if fixed is None:
        sizer = BatchSizer(
            workers=engine.workers,
            target_seconds=engine.target_batch_seconds,
            max_size=MAX_RANGE_BYTES,
            max_rss=engine.max_rss,
            initial=FIRST_RANGE_BYTES,
        )
    assert source.size is not None
    fallback = LinePool(task.spec, options)
    return RangeFeed(
        task,
        source.fileno(),
        (start.offset, start.line),
        source.size,
        sizer,
        options["retries"],
        fallback,
        fixed,
    )


def _counter(source: Input, offset: int) -> LineCounter | None:
    """A background line count for the progress total of the line path, where the input
    can be read twice (byte ranges extrapolate theirs from bytes per line instead).

    Its thread starts after the workers (see ``Job._show_progress``): a thread running when
    they start makes ``start_method="auto"`` fall back to the forkserver."""
    if source.is_stdin or source.compressed:
        return None
    return LineCounter(source.path, offset)  # started by the job once its workers are up
