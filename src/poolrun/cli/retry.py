"""``poolrun retry``: SPEC again over the failed lines of an errors file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..jsonl import LineTask, read_errors
from ..spec import normalize, resolve
from .feeds import LineFeed
from .flags import engine_kwargs, engine_options, output_options, parse_flag_max_failures
from .job import Guard, Job
from .resume import Targets, check_paths, checkpoint_path, regular, writers
from .summary import finish
from .watch import job_display, live_option


@click.command()
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
    resolve(spec)  # fail here, with the user's own path in the message
    task = LineTask(normalize(spec))
    options = engine_kwargs(flags, parse_flag_max_failures(flags["max_failures"]))
    targets = Targets.from_flags(flags)
    check_paths(errors_file, targets.paths())
    if targets.output is not None and regular(targets.output):
        Path(checkpoint_path(targets.output)).unlink(missing_ok=True)  # not this run's
    out, errors = writers(targets, 0, 0)
    feed = LineFeed(task, read_errors(errors_file))
    display = job_display(flags, targets.output)
    job = Job(feed, options, out, errors, guard, display, trace_path=targets.trace)
    return finish(job, job.run(), targets, [])
