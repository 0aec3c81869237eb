"""The end of a run: report, trace, the summary on stderr, and the exit code."""

from __future__ import annotations

import click

from .feeds import RangeFeed
from .flags import say
from .job import Job, Outcome
from .resume import EXIT_ABORTED, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, Targets


def finish(job: Job, outcome: Outcome, targets: Targets, notes: list[str]) -> int:
    report = job.stream.report()
    grown = job.feed.grown if isinstance(job.feed, RangeFeed) else 0
    if grown:
        notes = [
            *notes,
            f"the input grew by {grown} bytes while it was read; this run covered its first "
            f"{job.feed.end} bytes, its size when the run started",  # type: ignore[attr-defined]
        ]
    if report is not None:
        if isinstance(job.feed, RangeFeed):
            job.feed.tally.apply(report, job.feed.fallback.counters)
        report.notes.extend(notes)
        if targets.report:
            report.save(targets.report)
        if targets.trace and job.stream.trace is not None:
            job.stream.trace.save(targets.trace)
        click.echo(str(report), err=True)
    elif grown:
        say(notes[-1])
    upto = f"outputs are complete up to input line {job.complete_through}"
    if outcome.status == "interrupted":
        if job.resumable is None:
            say("interrupted")
        else:
            say(f"interrupted; {upto}; run the same command with --resume to continue")
        return EXIT_INTERRUPTED
    if job.failed:
        say(f"{job.failed} lines failed; they are in {targets.errors}")
    if outcome.status == "aborted":
        more = f"; {upto} (--resume continues)" if job.resumable else ""
        say(f"stopped: {outcome.message}{more}")
        return EXIT_ABORTED
    return EXIT_FAILED if job.failed else EXIT_OK
