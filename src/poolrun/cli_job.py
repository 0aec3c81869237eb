"""The streaming job behind ``poolrun run`` and ``poolrun retry``, and its resume plumbing.

It exists so that the part of the command line that must keep the outputs and the resume
watermark together lives apart from the click commands: :class:`Guard` (SIGINT/SIGTERM held
back while a result is written), :class:`Job` (streams lines through the engine into the
output and errors files, advancing the watermark), :class:`Targets` and the path helpers
(where a run writes, its checkpoint), and :func:`_resumable` / :func:`_resume_from` (start or
pick up a checkpointed run). The commands themselves live in :mod:`poolrun.cli`.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .api import Streaming
from .checkpoint import (
    Checkpoint,
    Mark,
    Watermark,
    check_prefix,
    check_resumable,
    new_hash,
)
from .jsonl import Input, LineCounter, LineTask, LineWriter, error_record
from .progress import Progress
from .results import RunAborted, Segment

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ABORTED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
STDOUT_ERRORS = "poolrun.errors.jsonl"
TICK_SECONDS = 0.1


class SetupError(Exception):
    """A problem found before the run starts (a path, an option); exit 2 with its message."""


class Interrupted(KeyboardInterrupt):
    """The first SIGINT/SIGTERM. A KeyboardInterrupt, so the engine kills its workers at
    once and no ``except Exception`` on the way can swallow it."""


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


# -- targets and resume ---------------------------------------------------------------


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
