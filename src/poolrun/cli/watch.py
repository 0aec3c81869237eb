"""``poolrun watch OUT.jsonl``, and the progress display of a CLI job that it follows.

A job writing ``OUT.jsonl`` keeps ``OUT.status.json`` beside its checkpoint: the status dict
of :mod:`poolrun.status`, replaced atomically at most once a second, and a last time with
``state: "finished"`` when the job ends. ``watch`` draws that file with the same live view
the job would draw on its own terminal, and exits when the job finished, or when the process
that wrote the file is gone (killed before it could say so).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from ..monitor import Monitor, progress_display
from ..status import Snapshotter, StatusFile, status_path, writer_alive

REDRAW_SECONDS = 0.25
APPEAR_SECONDS = 10.0  # how long watch waits for a job that is only starting


def live_option(command: Any) -> Any:
    return click.option(
        "--live/--no-live",
        default=None,
        help="The live view (workers, throughput, batch size, faults, ETA) on a terminal, "
        "at once; --no-live shows the plain progress bar instead. By default the live view "
        "appears when the run lasts more than a few seconds and stderr is a terminal "
        "(and results are not going to that terminal). Example: --no-live",
    )(command)


def job_display(flags: dict[str, Any], output: str | None) -> Monitor:
    """The progress output of ``poolrun run``/``retry``, which also keeps the status file
    when the output is a regular file (so ``poolrun watch`` works whatever is shown)."""
    mode: bool | str = {None: "auto", True: "live", False: "bar"}[flags["live"]]
    if flags["no_progress"]:
        mode = False
    elif mode == "auto" and output is None and sys.stdout.isatty():
        mode = "bar"  # results are being printed on this terminal: do not draw over them
    regular = output is not None and (os.path.isfile(output) or not os.path.exists(output))
    path = status_path(output) if output is not None and regular else None
    if path is not None:
        Path(path).unlink(missing_ok=True)  # an earlier job's, which said "finished"
    shown = progress_display(mode, None, None, status_path=path)
    return shown if isinstance(shown, Monitor) else Monitor(Snapshotter(), shown)


@click.command("watch")
@click.argument("output", metavar="OUT")
def watch_command(output: str) -> int:
    """Follow a `poolrun run ... -o OUT` job running elsewhere, with its live view.

    Reads the status file the job keeps beside its checkpoint (OUT with .jsonl replaced by
    .status.json) a few times a second, and exits when the job ends: 0 when it finished,
    1 when its process is gone without finishing (killed), 2 when there is no job to watch.

    \b
    Examples:
      poolrun run mypkg.mod:fn big.jsonl -o out/results.jsonl     # in one terminal
      poolrun watch out/results.jsonl                             # in another
    """
    status = StatusFile(status_path(output))
    snap = _first(status)
    if snap is None:
        raise click.UsageError(
            f"no job is writing {output!r}: {status.path} did not appear within "
            f"{APPEAR_SECONDS:.0f} s (a job writes it when its output is a file)"
        )
    from ..live import LiveDisplay

    display = LiveDisplay(sys.stdout)
    while snap["state"] == "running" and writer_alive(snap):
        display.show(snap)
        time.sleep(REDRAW_SECONDS)  # the job writes once a second; nothing to wait on
        snap = status.read() or snap
    display.show(snap)
    display.close(None)
    if snap["state"] == "running":
        click.echo(f"poolrun: the job (pid {snap['pid']}) is gone without finishing", err=True)
        return 1
    return 0


def _first(status: StatusFile) -> dict[str, Any] | None:
    deadline = time.monotonic() + APPEAR_SECONDS
    while True:
        snap = status.read()
        if snap is not None or time.monotonic() >= deadline:
            return snap
        time.sleep(REDRAW_SECONDS)
