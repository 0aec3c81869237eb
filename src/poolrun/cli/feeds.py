"""What the engine runs for a command, and how each finished batch gets written.

Two feeds, one per way of reading the input:

* :class:`LineFeed` (stdin, ``.gz``, ``retry``, the Dask backend): the supervisor reads
  lines and each engine item is one raw line; a failed line is a failed item.
* :class:`RangeFeed` (a regular file, local workers): each engine item is a byte range the
  worker reads itself; a range comes back as one block of output lines plus its failed
  lines, the supervisor writes the block with one ``write``, numbers the lines as ranges
  complete in order, and chains the ranges' checksums into the watermark.

Both write the same bytes: same output lines, same errors records, same line numbers.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from ..batching import BatchSizer
from ..checkpoint import Watermark
from ..items import Uniform
from ..jsonl import (
    Cutter,
    InputError,
    LineFailure,
    LineTask,
    LineWriter,
    Range,
    RangeResult,
    error_record,
)
from ..jsonl.reader import Line
from ..report import Report
from ..results import ItemError, ItemResult, Segment
from ..stats import LatencyHistogram, SizeStats
from .fallback import LinePool

INPUT_ERROR = f"{InputError.__module__}.{InputError.__qualname__}"
FIRST_RANGE_BYTES = 16 * 1024
MAX_RANGE_BYTES = 8 * 1024 * 1024
Held = tuple[int, bytes, ItemError]  # a failed line: number in its range, raw bytes, error


class Feed(Protocol):
    task: LineTask
    batch_lines: int | None  # lines in the latest batch, for the progress display

    def items(self) -> Iterator[Any]: ...

    def estimated_lines(self) -> int | None:
        """Lines this run will handle, when the feed can tell without reading ahead."""
        ...

    def write(
        self, segment: Segment, out: LineWriter, errors: LineWriter, watermark: Watermark | None
    ) -> tuple[int, int]:
        """Write a finished segment; returns (lines handled, lines failed) by this call."""
        ...

    def close(self) -> None: ...


class LineFeed:
    """One raw line per engine item; each line's number waits here for its result."""

    batch_lines = None

    def __init__(self, task: LineTask, lines: Iterable[Line]) -> None:
        self.task = task
        self.lines = lines
        self.pending: dict[int, Line] = {}

    def estimated_lines(self) -> None:
        return None  # a background count (LineCounter) gives the total where it can

    def items(self) -> Iterator[bytes]:
        pending = self.pending
        for index, line in enumerate(self.lines):
            pending[index] = line
            yield line[1]

    def write(
        self, segment: Segment, out: LineWriter, errors: LineWriter, watermark: Watermark | None
    ) -> tuple[int, int]:
        """One batch's lines: its outputs in one write when none failed (the common case)."""
        lines = [self.pending.pop(i) for i in range(segment.start, segment.start + segment.n)]
        if not segment.errors:
            out.write(b"".join(segment.values))  # b"" for blank input lines
        else:
            for pos, (line, raw) in enumerate(lines):
                error = segment.errors.get(pos)
                if error is None:
                    out.write(segment.values[pos])
                else:
                    errors.write(error_record(line, raw, error))
        if watermark is not None:
            watermark.advance([raw for _, raw in lines])
        return segment.n, len(segment.errors)

    def close(self) -> None:
        pass


class RangeFeed:
    """Byte ranges of a regular file per engine item, from ``start`` to ``end`` bytes.

    Ranges are sized in bytes by a :class:`~poolrun.batching.BatchSizer` fed with each
    range's bytes, worker seconds and worker RSS (so about ``target_seconds`` of work each,
    within the memory limit), or hold ``fixed_lines`` lines for a fixed ``--batch-size``.
    ``line`` is the number of lines before ``start`` (a resumed run starts after them).
    """

    def __init__(
        self,
        task: LineTask,
        fd: int,
        start: tuple[int, int],
        end: int,
        sizer: BatchSizer | None,
        retries: int,
        fallback: LinePool,
        fixed_lines: int | None = None,
    ) -> None:
        self.task = task
        self.fd = fd
        self.start, self.next_line = start
        self.end = end
        self.cutter = Cutter(fd, end)
        self.sizer = sizer
        self.fixed_lines = fixed_lines
        self.retries = retries
        self.fallback = fallback
        self.pending: dict[int, Range] = {}
        self.finished: dict[int, tuple[Range, int, list[Held], int]] = {}
        self.next_index = 0
        self.batch_lines: int | None = None
        self.tally = RangeTally()
        self.grown = 0  # bytes the input gained during the run (not read), set at the end
        self.settled = (0, 0)  # (bytes, lines) of the ranges written in order so far

    def estimated_lines(self) -> int | None:
        """This run's lines, extrapolated from the bytes per line written so far: an ETA
        without counting every newline (a background count cost a core-second per GB)."""
        done_bytes, done_lines = self.settled
        if not done_bytes:
            return None
        left = self.end - self.start - done_bytes
        return done_lines + round(left * done_lines / done_bytes)

    def items(self) -> Iterator[Range]:
        offset, index = self.start, 0
        while offset < self.end:
            if self.fixed_lines is not None:
                stop = self.cutter.after_lines(offset, self.fixed_lines)
            else:
                assert self.sizer is not None
                stop = self.cutter.line_start(offset + self.sizer.next_size(self.end - offset))
            piece = Range(index, offset, stop - offset)
            self.pending[index] = piece
            yield piece
            offset, index = stop, index + 1

    def write(
        self, segment: Segment, out: LineWriter, errors: LineWriter, watermark: Watermark | None
    ) -> tuple[int, int]:
        written = 0
        for pos in range(segment.n):
            piece = self.pending.pop(segment.start + pos)
            error = segment.errors.get(pos)
            if error is None:
                result: RangeResult = segment.values[pos]
                self._observe(piece, result)
                held = self._write_result(result, out)
                done = (piece, result.lines, held, result.crc)
            else:
                done = self._write_again(piece, error, out)
            self.finished[piece.index] = done
            written += done[1]
        return written, self._settle(errors, watermark)

    def _observe(self, piece: Range, result: RangeResult) -> None:
        self.batch_lines = result.lines
        self.tally.add(result)
        if self.sizer is not None:
            self.sizer.observe(piece.length, result.seconds, result.rss_start, result.rss_end)

    def _write_result(self, result: RangeResult, out: LineWriter) -> list[Held]:
        """The block in one write; failed lines that may be retried run again first, and
        their outputs go in where they belong."""
        block = memoryview(result.block)
        if not result.failures:
            out.write(block)
            return []
        again = [f for f in result.failures if f.retryable] if self.retries else []
        redone: dict[int, ItemResult] = {}
        if again:
            self.tally.retried += len(again)
            results = self.fallback.run([f.raw for f in again], self.retries - 1)
            redone = {f.line: r for f, r in zip(again, results, strict=True)}
        held: list[Held] = []
        at = 0
        for failure in result.failures:
            second = redone.get(failure.line)
            if second is not None and second.ok:
                out.write(block[at : failure.out_at])
                out.write(second.value)
                at = failure.out_at
            else:
                error = second.error if second is not None else _item_error(failure)
                held.append((failure.line, failure.raw, error))  # type: ignore[arg-type]
        out.write(block[at:])
        return held

    def _write_again(
        self, piece: Range, error: ItemError, out: LineWriter
    ) -> tuple[Range, int, list[Held], int]:
        """A range whose worker died, timed out or ran out of memory: its lines again, one
        engine item each, so only the line at fault fails."""
        if error.type == INPUT_ERROR:
            raise InputError(error.message)
        data = os.pread(self.fd, piece.length, piece.offset)
        lines = data.split(b"\n")
        if not lines[-1]:
            lines.pop()
        self.tally.ranges_again += 1
        held: list[Held] = []
        for number, (raw, result) in enumerate(
            zip(lines, self.fallback.run(lines, self.retries), strict=True)
        ):
            if result.ok:
                out.write(result.value)
            else:
                held.append((number, raw, result.error))  # type: ignore[arg-type]
        self.tally.lines += len(lines)
        return piece, len(lines), held, zlib.crc32(data)

    def _settle(self, errors: LineWriter, watermark: Watermark | None) -> int:
        """Number the lines of ranges finished in order: write their errors, advance the
        watermark. Out of order (``--unordered``) ranges wait here for the ones before."""
        failed = 0
        while self.next_index in self.finished:
            piece, lines, held, crc = self.finished.pop(self.next_index)
            for number, raw, error in held:
                errors.write(error_record(self.next_line + number + 1, raw, error))
            failed += len(held)
            self.next_line += lines
            self.settled = (self.settled[0] + piece.length, self.settled[1] + lines)
            if watermark is not None:
                watermark.advance_range(piece.length, lines, crc)
            self.next_index += 1
        self.tally.failed += failed
        return failed

    def close(self) -> None:
        """Stop the line path's workers; note whether the input grew while it was read."""
        self.fallback.close()
        self.grown = max(os.fstat(self.fd).st_size - self.end, 0)


def _item_error(failure: LineFailure) -> ItemError:
    return ItemError(failure.type, failure.message, failure.traceback, "exception")


class RangeTally:
    """Line-level numbers for the report, which the engine counts in ranges."""

    def __init__(self) -> None:
        self.lines = 0
        self.failed = 0
        self.retried = 0
        self.ranges_again = 0
        self.sizes = SizeStats()
        self.latency = LatencyHistogram()

    def add(self, result: RangeResult) -> None:
        self.lines += result.lines
        self.sizes.record(result.lines)
        if result.lines:
            self.latency.add(Uniform(result.seconds / result.lines, result.lines))

    def apply(self, report: Report, counters: dict[str, int]) -> None:
        """Make the report speak of lines, and count the line path's faults in it."""
        report.items, report.failed = self.lines, self.failed
        report.succeeded = self.lines - self.failed
        report.items_per_s = round(self.lines / max(report.wall_s, 1e-9), 1)
        report.batch_size = self.sizes.to_dict()
        report.item_time_s = {f"p{q}": self.latency.percentile(q) for q in (50, 95, 99)}
        report.retries += self.retried + counters.get("retries", 0)
        report.timeouts += counters.get("timeouts", 0)
        report.worker_deaths += counters.get("worker_deaths", 0)
        report.worker_restarts += counters.get("restarts", 0)
        report.memory_kills += counters.get("memory_kills", 0)
        report.splits += counters.get("splits", 0)
        # Lines travel in ranges here, not one message each: that advice does not apply.
        report.notes = [n for n in report.notes if not n.startswith("work too fine-grained")]
        if self.ranges_again:
            report.notes.append(
                f"{self.ranges_again} byte ranges ran again line by line after their worker "
                "died, timed out or passed the memory limit"
            )
