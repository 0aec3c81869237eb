"""The ``poolrun`` command line: ``poolrun run`` and ``poolrun retry`` over JSON Lines.

This module holds the click group (:data:`cli`), the option sets commands share
(:func:`engine_options`, :func:`output_options`), the run/retry commands and the
:class:`Job` that streams lines through the engine into the output files. A further command
(``bench``) belongs in its own module, registered with ``cli.add_command``.

Exit codes: 0 every line succeeded; 1 some lines failed (all are in the errors file);
2 usage or setup error (one line on stderr, no traceback); 3 stopped by ``--max-failures``;
130 interrupted (resumable with ``--resume``).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import click

from . import __version__
from .api import Streaming
from .backends.base import SetupFailed
from .checkpoint import (
    Checkpoint,
    Mark,
    ResumeRefused,
    Watermark,
    check_prefix,
    check_resumable,
    new_hash,
)
from .cli_bench import bench_command
from .jsonl import Input, InputError, LineCounter, LineTask, LineWriter, error_record, read_errors
from .options import make_options, parse_max_failures
from .progress import Progress
from .results import RunAborted, Segment
from .spec import SpecError, normalize, resolve

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ABORTED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
STDOUT_ERRORS = "poolrun.errors.jsonl"
TICK_SECONDS = 0.1


class SetupError(Exception):
    """A problem found before the run starts (a path, an option); exit 2 with its message."""


class Interrupted(KeyboardInterrupt):
    """The first SIGINT/SIGTERM. A KeyboardInterrupt, so the engine kills its workers at
    once and no ``except Exception`` on the way can swallow it."""


SETUP_ERRORS = (SetupError, SpecError, ResumeRefused, InputError, SetupFailed)


def _say(message: str) -> None:
    click.echo(f"poolrun: {message}", err=True)


# -- signals ------------------------------------------------------------------------------


class Guard:
    """SIGINT/SIGTERM handling that never leaves the outputs and the watermark apart.

    The first signal raises :class:`Interrupted` at once while the supervisor waits for
    workers, but is held back while a result is being written (between :meth:`hold` and
    :meth:`release`), so a line and the watermark always move together. A second signal
    exits at once: nothing needs cleaning, workers exit when their supervisor is gone and
    the last checkpoint is consistent by construction.
    """

    def __init__(self) -> None:
        self.holding = False
        self.pending = False
        self.signals = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Guard:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *_: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signals += 1
        if self.signals > 1:
            os.write(2, b"poolrun: interrupted again; exiting now\n")
            os._exit(EXIT_INTERRUPTED)
        if self.holding:
            self.pending = True
        else:
            raise Interrupted(signal.Signals(signum).name)

    def hold(self) -> None:
        self.holding = True

    def release(self) -> None:
        self.holding = False
        if self.pending:
            self.pending = False
            raise Interrupted("signal")


# -- the streaming job --------------------------------------------------------------------


@dataclass
class Resumable:
    """What a checkpointed run carries: where to save, what stays fixed, the watermark."""

    checkpoint: Checkpoint
    base: Mark
    watermark: Watermark


@dataclass
class Outcome:
    status: str  # "done", "interrupted", "aborted" (--max-failures) or "error"
    message: str = ""


class Job:
    """Streams lines through the engine and writes each result where it belongs.

    Results arrive in input order (unless unordered); each one is written to the output or
    the errors file, then the watermark advances, all while signals are held. On every way
    out (end, interrupt, ``--max-failures``, an error) the outputs are synced and a last
    checkpoint is saved, so whatever happened the run can be resumed.
    """

    def __init__(
        self,
        task: LineTask,
        lines: Iterable[tuple[int, bytes]],
        options: dict[str, Any],
        out: LineWriter,
        errors: LineWriter,
        guard: Guard,
        progress: Progress,
        resumable: Resumable | None = None,
        counter: LineCounter | None = None,
        failed: int = 0,
    ) -> None:
        self.pending: dict[int, tuple[int, bytes]] = {}
        self.stream = Streaming(task, self._feed(lines), **options)
        self.out = out
        self.errors = errors
        self.guard = guard
        self.progress = progress
        self.resumable = resumable
        self.counter = counter
        self.failed = failed
        self.done = 0
        self.shown = (0, failed)
        self.next_tick = 0.0

    def _feed(self, lines: Iterable[tuple[int, bytes]]) -> Iterator[bytes]:
        """The engine's input: raw lines; each one's number waits here for its result."""
        pending = self.pending
        for index, line in enumerate(lines):
            pending[index] = line
            yield line[1]

    def run(self) -> Outcome:
        segments = self.stream.segments()
        try:
            self._drain(segments)
        except Interrupted:
            return self._stop(segments, Outcome("interrupted"))
        except RunAborted as exc:
            return self._stop(segments, Outcome("aborted", str(exc)))
        except BaseException:
            self._stop(segments, Outcome("error"))
            raise
        return self._stop(segments, Outcome("done"))

    def _drain(self, segments: Generator[Segment, None, None]) -> None:
        guard, clock = self.guard, time.monotonic
        for segment in segments:
            guard.hold()
            self._write(segment)
            now = clock()
            if now >= self.next_tick:
                self._tick(now)
            guard.release()

    def _write(self, segment: Segment) -> None:
        """One batch's lines: its outputs in one write when none failed (the common case)."""
        lines = [self.pending.pop(i) for i in range(segment.start, segment.start + segment.n)]
        if not segment.errors:
            self.out.write(b"".join(segment.values))  # b"" for blank input lines
        else:
            for pos, (line, raw) in enumerate(lines):
                error = segment.errors.get(pos)
                if error is None:
                    self.out.write(segment.values[pos])
                else:
                    self.errors.write(error_record(line, raw, error))
                    self.failed += 1
        self.done += segment.n
        if self.resumable is not None:
            self.resumable.watermark.advance([raw for _, raw in lines])

    def _tick(self, now: float) -> None:
        self.next_tick = now + TICK_SECONDS
        self._show_progress()
        if self.resumable is not None and self.resumable.checkpoint.due(now):
            self._save()

    def _show_progress(self) -> None:
        if self.counter is not None and self.counter.total is not None:
            self.progress.total = self.counter.total
            if self.progress.bar is not None:
                self.progress.bar.total = self.counter.total
            self.counter = None
        done, failed = self.shown
        self.shown = (self.done, self.failed)
        self.progress.update(
            self.done - done, self.failed - failed, self.stream.batch_size, self.stream.worker_rss
        )

    def _save(self, complete: bool = False) -> None:
        assert self.resumable is not None
        self.out.sync()
        self.errors.sync()
        sizes = (self.out.size, self.errors.size)
        mark = self.resumable.watermark.snapshot(self.resumable.base, sizes, self.failed, complete)
        self.resumable.checkpoint.save(mark)

    def _stop(self, segments: Generator[Segment, None, None], outcome: Outcome) -> Outcome:
        """Close the engine (workers are killed if it did not finish), then save for good."""
        self.guard.hold()
        segments.close()
        self._show_progress()
        self.progress.close()
        if self.resumable is not None:
            self._save(complete=outcome.status == "done")
        else:
            self.out.sync()
            self.errors.sync()
        self.out.close()
        self.errors.close()
        return outcome

    @property
    def complete_through(self) -> int:
        """The last input line the outputs are complete up to."""
        return self.resumable.watermark.line if self.resumable else 0


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
            "memory) as JSON. Example: --report out/report.json",
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


# -- paths --------------------------------------------------------------------------------


def _stem(output: str) -> str:
    return output[: -len(".jsonl")] if output.endswith(".jsonl") else output


def errors_path(output: str | None) -> str:
    """Where failures go without --errors: next to the output file, or ./poolrun.errors.jsonl
    when the output is stdout or a device (``-o /dev/null``)."""
    if output is None or not _regular(output):
        return STDOUT_ERRORS
    return _stem(output) + ".errors.jsonl"


def _regular(path: str) -> bool:
    """A regular file, or one still to be made (not a device or a FIFO)."""
    return not os.path.exists(path) or os.path.isfile(path)


def checkpoint_path(output: str) -> str:
    return _stem(output) + ".checkpoint.json"


def _check_paths(source: str | None, outputs: list[str | None]) -> None:
    """Refuse outputs that would overwrite the input or each other, or sit in missing folders."""
    written = [Path(p).resolve() for p in outputs if p is not None]
    if source is not None and Path(source).resolve() in written:
        raise SetupError(f"an output would overwrite the input {source!r}; choose another path")
    if len(set(written)) < len(written):
        raise SetupError("the output, errors, report and trace files must be different files")
    for path in written:
        if not path.parent.is_dir():
            raise SetupError(f"cannot write {str(path)!r}: folder {str(path.parent)!r} is missing")


def _writers(targets: Targets, output_size: int, errors_size: int) -> tuple[LineWriter, LineWriter]:
    try:
        return (
            LineWriter(targets.output, output_size),
            LineWriter(targets.errors, errors_size, lazy=True),
        )
    except OSError as exc:
        raise SetupError(f"cannot write {exc.filename!r}: {exc.strerror or exc}") from None


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


# -- run ----------------------------------------------------------------------------------


@dataclass
class Targets:
    """Where one command writes: output (None: stdout), errors, report, trace."""

    output: str | None
    errors: str
    report: str | None
    trace: str | None

    @classmethod
    def from_flags(cls, flags: dict[str, Any]) -> Targets:
        output = None if flags["output"] == "-" else flags["output"]
        return cls(output, flags["errors"] or errors_path(output), flags["report"], flags["trace"])

    def paths(self) -> list[str | None]:
        return [self.output, self.errors, self.report, self.trace]


def _resumable(
    targets: Targets, spec: str, source: Input, resume: bool, ordered: bool
) -> Resumable | None:
    """The checkpoint for this run, or ``None`` when the run cannot be resumed anyway."""
    reason = None
    if source.is_stdin:
        reason = "stdin cannot be read again"
    elif targets.output is None or not _regular(targets.output):
        reason = "the output cannot be cut back; use -o FILE"
    elif not ordered:
        reason = "--unordered output has no single point to resume from"
    if reason is not None:
        if resume:
            raise SetupError(f"cannot --resume: {reason}")
        if targets.output is not None and _regular(targets.output):
            Path(checkpoint_path(targets.output)).unlink(missing_ok=True)  # a stale one
        return None
    assert targets.output is not None
    checkpoint = Checkpoint(checkpoint_path(targets.output))
    base = Mark(spec=spec, errors=str(Path(targets.errors).resolve()), input_size=source.size)
    if not resume:
        checkpoint.save(base)
        return Resumable(checkpoint, base, Watermark(base, new_hash()))
    return _resume_from(checkpoint, base, targets, source)


def _resume_from(checkpoint: Checkpoint, base: Mark, targets: Targets, source: Input) -> Resumable:
    """Load and check the checkpoint, then read the input up to it (hashing what it skips)."""
    mark = checkpoint.load()
    assert targets.output is not None
    sizes = (_size(targets.output), _size(targets.errors))
    check_resumable(mark, base.spec, base.errors, source.size, sizes)
    hasher = new_hash()
    source.skip(mark.offset, hasher)
    check_prefix(mark, hasher.hexdigest())
    return Resumable(checkpoint, mark, Watermark(mark, hasher))


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
        job = Job(
            task,
            source.lines(start.line),
            options,
            out,
            errors,
            guard,
            Progress(None, progress),
            resumable,
            _counter(source, start.offset) if progress else None,
            start.failed,
        )
        outcome = job.run()
    finally:
        source.close()
    notes = [f"resumed after input line {start.line}"] if resume else []
    return _finish(job, outcome, targets, notes)


@cli.command()
@click.argument("errors_file", metavar="ERRORS", type=click.Path(exists=True, dir_okay=False))
@click.argument("spec")
@output_options
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
    progress = Progress(None, not flags["no_progress"])
    job = Job(task, read_errors(errors_file), options, out, errors, guard, progress)
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
