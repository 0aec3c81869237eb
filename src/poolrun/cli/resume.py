"""Where a run writes, and its resume plumbing: the checkpoint it starts or picks up.

:class:`Targets` and the path helpers say where the output, errors, report, trace and
checkpoint files go and refuse paths that would clash; :func:`resumable` starts a
checkpointed run or checks and picks up an interrupted one (reading the input up to the
checkpoint and checksumming what it skips).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint import (
    Checkpoint,
    Mark,
    Watermark,
    check_prefix,
    check_resumable,
    new_hash,
)
from ..jsonl import Input, LineWriter

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ABORTED, EXIT_INTERNAL = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130
STDOUT_ERRORS = "poolrun.errors.jsonl"


class SetupError(Exception):
    """A problem found before the run starts (a path, an option); exit 2 with its message."""


@dataclass
class Resumable:
    """What a checkpointed run carries: where to save, what stays fixed, the watermark."""

    checkpoint: Checkpoint
    base: Mark
    watermark: Watermark


def _stem(output: str) -> str:
    return output[: -len(".jsonl")] if output.endswith(".jsonl") else output


def errors_path(output: str | None) -> str:
    """Where failures go without --errors: next to the output file, or ./poolrun.errors.jsonl
    when the output is stdout or a device (``-o /dev/null``)."""
    if output is None or not regular(output):
        return STDOUT_ERRORS
    return _stem(output) + ".errors.jsonl"


def regular(path: str) -> bool:
    """A regular file, or one still to be made (not a device or a FIFO)."""
    return not os.path.exists(path) or os.path.isfile(path)


def checkpoint_path(output: str) -> str:
    return _stem(output) + ".checkpoint.json"


def check_paths(source: str | None, outputs: list[str | None]) -> None:
    """Refuse outputs that would overwrite the input or each other, or sit in missing folders."""
    written = [Path(p).resolve() for p in outputs if p is not None]
    if source is not None and Path(source).resolve() in written:
        raise SetupError(f"an output would overwrite the input {source!r}; choose another path")
    if len(set(written)) < len(written):
        raise SetupError("the output, errors, report and trace files must be different files")
    for path in written:
        if not path.parent.is_dir():
            raise SetupError(f"cannot write {str(path)!r}: folder {str(path.parent)!r} is missing")


def writers(targets: Targets, output_size: int, errors_size: int) -> tuple[LineWriter, LineWriter]:
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


def resumable(
    targets: Targets, spec: str, source: Input, resume: bool, ordered: bool
) -> Resumable | None:
    """The checkpoint for this run, or ``None`` when the run cannot be resumed anyway."""
    reason = None
    if source.is_stdin:
        reason = "stdin cannot be read again"
    elif targets.output is None or not regular(targets.output):
        reason = "the output cannot be cut back; use -o FILE"
    elif not ordered:
        reason = "--unordered output has no single point to resume from"
    if reason is not None:
        if resume:
            raise SetupError(f"cannot --resume: {reason}")
        if targets.output is not None and regular(targets.output):
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
