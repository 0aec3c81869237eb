"""The ``poolrun`` command line: ``poolrun run`` and ``poolrun retry`` over JSON Lines.

This module holds the click group (:data:`cli`), the option sets commands share
(:func:`engine_options`, :func:`output_options`), the run/retry commands and :func:`main`,
the console entry point. It is the thin click layer: the :class:`~poolrun.cli_job.Job` that
streams lines through the engine into the output files, the signal :class:`~poolrun.cli_job.Guard`
and the resume plumbing live in :mod:`poolrun.cli_job`. A further command (``bench``) belongs
in its own module, registered with ``cli.add_command``.

Exit codes: 0 every line succeeded; 1 some lines failed (all are in the errors file);
2 usage or setup error (one line on stderr, no traceback); 3 stopped by ``--max-failures``;
130 interrupted (resumable with ``--resume``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

import click

from . import __version__
from .backends.base import SetupFailed
from .checkpoint import Mark, ResumeRefused
from .cli_bench import bench_command
from .cli_job import (
    EXIT_ABORTED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    STDOUT_ERRORS,
    Guard,
    Interrupted,
    Job,
    Outcome,
    SetupError,
    Targets,
    _check_paths,
    _regular,
    _resumable,
    _writers,
    checkpoint_path,
)
from .cli_watch import job_display, live_option, watch_command
from .jsonl import Input, InputError, LineCounter, LineTask, read_errors
from .options import make_options, parse_max_failures
from .spec import SpecError, normalize, resolve

SETUP_ERRORS = (SetupError, SpecError, ResumeRefused, InputError, SetupFailed)


def _say(message: str) -> None:
    click.echo(f"poolrun: {message}", err=True)


# -- shared options -----------------------------------------------------------------------


def engine_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The engine's tuning flags, shared by every command that runs a SPEC."""
    flags = [
        click.option(
            "-w",
            "--workers",
            type=click.IntRange(min=1),
            metavar="N",
            help="Worker processes (default: the CPUs this process may use). Example: -w 4",
        ),
        click.option(
            "-b",
            "--batch-size",
            default="auto",
            metavar="auto|N",
            show_default=True,
            help="Lines per batch sent to a worker: 'auto' sizes batches to about 20 ms of "
            "work each, from measurements. Example: -b 256",
        ),
        click.option(
            "--max-rss",
            metavar="SIZE",
            help="Memory limit per worker; a worker above it is killed and the line it was "
            "running fails with cause memory-limit. Example: --max-rss 2GB",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            metavar="SECONDS",
            help="Time limit per line; a line over it fails with cause timeout (its worker "
            "is replaced). Example: --timeout 30",
        ),
        click.option(
            "--retries",
            type=click.IntRange(min=0),
            metavar="N",
            default=0,
            show_default=True,
            help="Times a line that raised (or timed out) is run again before it counts as "
            "failed. Example: --retries 2",
        ),
        click.option(
            "--unordered",
            is_flag=True,
            help="Write results as they finish instead of in input order (cannot be "
            "resumed). Example: --unordered",
        ),
        click.option(
            "--start-method",
            type=click.Choice(["forkserver", "spawn", "fork"]),
            default="forkserver",
            show_default=True,
            help="How worker processes start. Example: --start-method spawn",
        ),
        click.option(
            "--backend",
            type=click.Choice(["local", "dask"]),
            default="local",
            show_default=True,
            help="Where batches run: local processes, or a Dask cluster (needs the dask "
            "extra). Example: --backend dask --scheduler tcp://10.0.0.5:8786",
        ),
        click.option(
            "--scheduler",
            metavar="ADDR",
            help="Dask scheduler address for --backend dask. Example: --scheduler "
            "tcp://10.0.0.5:8786",
        ),
    ]
    for flag in reversed(flags):
        command = flag(command)
    return command


def output_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Where results, failures, the report and the trace go; shared by run and retry."""
    flags = [
        click.option(
            "-o",
            "--output",
            default="-",
            show_default=True,
            metavar="OUT",
            help="Output file, one JSON line per successful input line; '-' is stdout. "
            "Example: -o out/results.jsonl",
        ),
        click.option(
            "--errors",
            metavar="FILE",
            help="Errors file, one JSON line per failed input line: "
            '{"line": N, "input": ..., "error": {"type", "message", "traceback", "cause"}} '
            "(input is the raw text when the line is not JSON: cause invalid-json). Default: "
            f"OUT with .jsonl replaced by .errors.jsonl, or ./{STDOUT_ERRORS} when OUT is "
            "stdout. Example: --errors out/failed.jsonl",
        ),
        click.option(
            "--report",
            metavar="FILE",
            help="Write the run's report (throughput, batch sizes, item times, faults, "
            "memory): JSON, or a self-contained page with charts when FILE ends in .html. "
            "Example: --report out/report.html",
        ),
        click.option(
            "--trace",
            metavar="FILE",
            help="Write a Chrome trace of the batches on each worker (open it in "
            "https://ui.perfetto.dev). Example: --trace out/trace.json",
        ),
        click.option(
            "--max-failures",
            metavar="N|P%",
            help="Stop (exit 3) once more than N lines, or more than P% of the lines read, "
            "failed; the outputs written so far stay valid and resumable (a count spans the "
            "resumed runs too). Example: --max-failures 1%",
        ),
        click.option(
            "--no-progress",
            is_flag=True,
            help="No progress display (by default: a bar on a terminal, else a line on "
            "stderr every few seconds). Example: --no-progress",
        ),
    ]
    for flag in reversed(flags):
        command = flag(command)
    return command


def _engine_kwargs(flags: dict[str, Any], max_failures: int | float | None) -> dict[str, Any]:
    """Engine options from CLI flags, validated now so a bad value is a usage error."""
    kwargs = {
        "workers": flags["workers"],
        "batch_size": flags["batch_size"],
        "max_rss": flags["max_rss"],
        "timeout": flags["timeout"],
        "retries": flags["retries"],
        "ordered": not flags["unordered"],
        "start_method": flags["start_method"],
        "backend": flags["backend"],
        "scheduler": flags["scheduler"],
        "max_failures": max_failures,
    }
    try:
        make_options(**kwargs)
    except (ValueError, TypeError) as exc:
        raise click.UsageError(_flag_names(str(exc))) from None
    if kwargs["backend"] == "dask":
        _check_dask()
    return kwargs


def _check_dask() -> None:
    try:
        import_module("poolrun.backends.dask")
    except ImportError as exc:
        raise SetupError(
            f"--backend dask needs the dask extra (pip install 'poolrun[dask]'): {exc}"
        ) from None


def _flag_names(message: str) -> str:
    """Engine messages name options (max_rss); on the command line they are flags."""
    for name in ("batch_size", "max_rss", "max_failures", "start_method"):
        message = message.replace(name, "--" + name.replace("_", "-"))
    return message


def _max_failures(text: str | None) -> int | float | None:
    try:
        return parse_max_failures(text)
    except ValueError as exc:
        raise click.UsageError(_flag_names(str(exc))) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="poolrun")
def cli() -> None:
    """Run a Python function over every line of a JSON Lines file, on worker processes.

    \b
    Examples:
      poolrun run examples/transform.py:transform examples/records.jsonl -o out/results.jsonl
      poolrun run mypkg.clean:record big.jsonl.gz -o clean.jsonl -w 8 --max-failures 1%
      poolrun retry out/results.errors.jsonl mypkg.clean:record -o fixed.jsonl

    Exit codes: 0 all lines succeeded, 1 some lines failed (see the errors file),
    2 usage or setup error, 3 stopped by --max-failures, 130 interrupted (use --resume).
    """


cli.add_command(bench_command)
cli.add_command(watch_command)


@cli.command()
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
    on stderr at the end.

    Exit codes: 0 all lines succeeded, 1 some failed, 2 usage or setup error, 3 stopped by
    --max-failures, 130 interrupted (SIGINT/SIGTERM; a second Ctrl-C exits at once).

    \b
    Examples:
      poolrun run examples/transform.py:transform examples/records.jsonl -o out/r.jsonl
      zcat big.jsonl.gz | poolrun run mypkg.mod:fn - > results.jsonl
      poolrun run mypkg.mod:fn big.jsonl -o r.jsonl -w 8 --timeout 30 --report rep.json
      poolrun run mypkg.mod:fn big.jsonl -o r.jsonl --resume   # after Ctrl-C or a crash
    """
    task = _task(spec)
    max_failures = _max_failures(flags["max_failures"])
    options = _engine_kwargs(flags, max_failures)
    targets = Targets.from_flags(flags)
    written = [*targets.paths(), targets.output and checkpoint_path(targets.output)]
    _check_paths(None if input == "-" else input, written)
    source = Input(input)
    try:
        resumable = _resumable(targets, task.spec, source, resume, options["ordered"])
        start = resumable.base if resumable else Mark(task.spec, targets.errors, source.size)
        if isinstance(max_failures, int) and start.failed > max_failures:
            _say(
                f"stopped: {start.failed} lines failed before, more than --max-failures "
                f"{max_failures}; raise --max-failures to continue"
            )
            return EXIT_ABORTED
        if isinstance(max_failures, int):
            options["max_failures"] = max_failures - start.failed  # the budget spans resumes
        out, errors = _writers(targets, start.output_size, start.errors_size)
        progress = not flags["no_progress"]
        display = job_display(flags, targets.output)
        job = Job(
            task,
            source.lines(start.line),
            options,
            out,
            errors,
            guard,
            display,
            resumable,
            _counter(source, start.offset) if progress or display.status else None,
            start.failed,
        )
        display.follow(lambda: job.stream.call)
        outcome = job.run()
    finally:
        source.close()
    notes = [f"resumed after input line {start.line}"] if resume else []
    return _finish(job, outcome, targets, notes)


@cli.command()
@click.argument("errors_file", metavar="ERRORS", type=click.Path(exists=True, dir_okay=False))
@click.argument("spec")
@output_options
@live_option
@engine_options
@click.pass_obj
def retry(guard: Guard, errors_file: str, spec: str, **flags: Any) -> int:
    """Run SPEC again over the failed lines in ERRORS (an errors file of poolrun run).

    Results go to OUT in the lines' original order; lines that fail again go to the new
    errors file, with their original line numbers, so retry can be repeated. Lines that
    were not JSON fail again, as invalid-json.

    \b
    Examples:
      poolrun retry out/results.errors.jsonl examples/transform.py:transform -o out/retried.jsonl
      poolrun retry failed.jsonl mypkg.mod:fn --timeout 120 --retries 3 -o fixed.jsonl
    """
    task = _task(spec)
    options = _engine_kwargs(flags, _max_failures(flags["max_failures"]))
    targets = Targets.from_flags(flags)
    _check_paths(errors_file, targets.paths())
    if targets.output is not None and _regular(targets.output):
        Path(checkpoint_path(targets.output)).unlink(missing_ok=True)  # not this run's
    out, errors = _writers(targets, 0, 0)
    display = job_display(flags, targets.output)
    job = Job(task, read_errors(errors_file), options, out, errors, guard, display)
    display.follow(lambda: job.stream.call)
    return _finish(job, job.run(), targets, [])


def _counter(source: Input, offset: int) -> LineCounter | None:
    """A background line count for the progress total, where the input can be read twice."""
    if source.is_stdin or source.compressed:
        return None
    counter = LineCounter(source.path, offset)
    counter.start()
    return counter


def _finish(job: Job, outcome: Outcome, targets: Targets, notes: list[str]) -> int:
    """Report, trace, the summary on stderr, and the exit code."""
    report = job.stream.report()
    if report is not None:
        report.notes.extend(notes)
        if targets.report:
            report.save(targets.report)
        if targets.trace and job.stream.trace is not None:
            job.stream.trace.save(targets.trace)
        click.echo(str(report), err=True)
    upto = f"outputs are complete up to input line {job.complete_through}"
    if outcome.status == "interrupted":
        if job.resumable is None:
            _say("interrupted")
        else:
            _say(f"interrupted; {upto}; run the same command with --resume to continue")
        return EXIT_INTERRUPTED
    if job.failed:
        _say(f"{job.failed} lines failed; they are in {targets.errors}")
    if outcome.status == "aborted":
        more = f"; {upto} (--resume continues)" if job.resumable else ""
        _say(f"stopped: {outcome.message}{more}")
        return EXIT_ABORTED
    return EXIT_FAILED if job.failed else EXIT_OK


def _task(spec: str) -> LineTask:
    """Resolve SPEC as typed (so errors name the user's path), then build the task."""
    resolve(spec)
    return LineTask(normalize(spec))


def main(argv: list[str] | None = None) -> None:
    """Console entry point: ``poolrun``."""
    sys.exit(_main(argv))


def _main(argv: list[str] | None) -> int:
    with Guard() as guard:
        try:
            return cli.main(args=argv, prog_name="poolrun", standalone_mode=False, obj=guard) or 0
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.format_message())
            return EXIT_OK
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "poolrun"
            _say(f"error: {exc.format_message()} (see '{where} --help')")
            return EXIT_USAGE
        except SETUP_ERRORS as exc:
            _say(f"error: {str(exc).splitlines()[0]}")
            return EXIT_USAGE
        except (Interrupted, click.exceptions.Abort):
            _say("interrupted")
            return EXIT_INTERRUPTED
