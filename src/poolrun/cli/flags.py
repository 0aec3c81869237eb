"""The flags commands share, and turning them into engine options.

``engine_options`` (how the engine runs) and ``output_options`` (where results go) are click
decorators that ``run`` and ``retry`` both wear; a bad value becomes a usage error (exit 2)
that names the flag, not the engine's option.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

import click

from ..options import make_options, parse_max_failures
from .resume import STDOUT_ERRORS, SetupError


def say(message: str) -> None:
    """One line on stderr, prefixed so it stands out from the function's own output."""
    click.echo(f"poolrun: {message}", err=True)


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
            type=click.Choice(["auto", "forkserver", "spawn", "fork"]),
            default="auto",
            show_default=True,
            help="How worker processes start: 'auto' forks them from a copy of this process "
            "when that is safe, else uses the forkserver. Example: --start-method spawn",
        ),
        click.option(
            "--start-timeout",
            type=float,
            metavar="S",
            default=60.0,
            show_default=True,
            help="Seconds a worker may take to start (initializer, loading SPEC) before it is "
            "killed and the run fails. Example: --start-timeout 10",
        ),
        click.option(
            "--rate",
            metavar="N/s|N/min",
            help="Start at most this many lines a second (or minute) across all workers, "
            "e.g. to respect an outside service's limit. Example: --rate 50/s",
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


def engine_kwargs(flags: dict[str, Any], max_failures: int | float | None) -> dict[str, Any]:
    """Engine options from CLI flags, validated now so a bad value is a usage error."""
    kwargs = {
        "workers": flags["workers"],
        "batch_size": flags["batch_size"],
        "max_rss": flags["max_rss"],
        "timeout": flags["timeout"],
        "retries": flags["retries"],
        "ordered": not flags["unordered"],
        "start_method": flags["start_method"],
        "start_timeout": flags["start_timeout"],
        "backend": flags["backend"],
        "scheduler": flags["scheduler"],
        "max_failures": max_failures,
        "rate": flags["rate"],
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
    for name in ("batch_size", "max_rss", "max_failures", "start_method", "start_timeout"):
        message = message.replace(name, "--" + name.replace("_", "-"))
    return message


def parse_flag_max_failures(text: str | None) -> int | float | None:
    try:
        return parse_max_failures(text)
    except ValueError as exc:
        raise click.UsageError(_flag_names(str(exc))) from None
