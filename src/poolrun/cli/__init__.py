"""The ``poolrun`` command line: ``run``, ``retry`` and ``bench`` over JSON Lines, and
``queue`` (:mod:`.queue`: put, drain, status of a durable job queue).

One module per command (:mod:`.run`, :mod:`.retry`, :mod:`.bench`), and beside them the
plumbing they share: :mod:`.flags` (the options), :mod:`.job` (drains the engine into the
files, holding signals back while it writes), :mod:`.feeds` (lines or byte ranges: what
the engine runs and how results are written), :mod:`.fallback` (the line path for ranges
that need per-line handling), :mod:`.resume` (paths and checkpoints), :mod:`.streaming`
(one engine call) and :mod:`.summary` (report and exit code). This module holds the click
group and :func:`main`, the console entry point.

Exit codes: 0 every line succeeded; 1 some lines failed (all are in the errors file);
2 usage or setup error (one line on stderr, no traceback); 3 stopped by ``--max-failures``;
4 an internal error (a bug, or the system failing under it: one line on stderr, the
traceback in the log with ``POOLRUN_LOG=debug``); 130 interrupted (resumable with
``--resume``).
"""

from __future__ import annotations

import sys

import click

from .. import __version__, log
from ..backends.base import SetupFailed
from ..checkpoint import ResumeRefused
from ..durable.sqlite import DatabaseLocked
from ..jsonl import InputError
from ..spec import SpecError
from .bench import bench_command
from .flags import say
from .job import Guard, Interrupted
from .queue import queue_command
from .resume import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, SetupError
from .retry import retry
from .run import run
from .watch import watch_command

SETUP_ERRORS = (SetupError, SpecError, ResumeRefused, InputError, SetupFailed, DatabaseLocked)


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
    2 usage or setup error, 3 stopped by --max-failures, 4 internal error (details with
    POOLRUN_LOG=debug), 130 interrupted (use --resume).
    """


cli.add_command(run)
cli.add_command(retry)
cli.add_command(bench_command)
cli.add_command(watch_command)
cli.add_command(queue_command)


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
            say(f"error: {exc.format_message()} (see '{where} --help')")
            return EXIT_USAGE
        except SETUP_ERRORS as exc:
            say(f"error: {str(exc).splitlines()[0]}")
            return EXIT_USAGE
        except (Interrupted, click.exceptions.Abort):
            say("interrupted")
            return EXIT_INTERRUPTED
        except Exception as exc:  # not "some lines failed" (1): something broke
            log.debug_traceback("internal error")
            first = (str(exc).splitlines() or [""])[0]
            say(f"internal error: {type(exc).__name__}: {first} (POOLRUN_LOG=debug shows more)")
            return EXIT_INTERNAL
