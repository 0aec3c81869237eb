"""``poolrun bench``: sweep batch sizes (and worker counts) on the user's own SPEC and data.

It samples the first ``--limit`` lines of INPUT and runs them exactly as ``poolrun run``
would (raw lines to the workers, encoded lines back), once per setting, on warm workers; the
sweep itself, the table and the recommendation live in :mod:`poolrun.bench`.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import click

from .. import bench
from ..html_report import bench_page
from ..jsonl import Input, LineTask
from ..options import available_cpus
from ..spec import normalize, resolve

EXAMPLES = """
\b
Examples:
  poolrun bench examples/transform.py:transform examples/records.jsonl
  poolrun bench mypkg.mod:fn big.jsonl.gz --sizes 1,16,256,auto --workers 1,2,4 --limit 20000
  poolrun bench mypkg.mod:fn big.jsonl --out bench.json --plot bench.png
  poolrun bench mypkg.mod:fn big.jsonl --html bench.html
"""


def _sizes(_ctx: click.Context, _param: click.Parameter, text: str) -> list[int | str]:
    try:
        return bench.parse_sizes(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _workers(_ctx: click.Context, _param: click.Parameter, text: str | None) -> list[int]:
    if text is None:
        return sorted({1, available_cpus()})
    try:
        return bench.parse_workers(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def sample(path: str, limit: int) -> list[bytes]:
    """The first ``limit`` non-blank lines of INPUT (a file, .gz, or - for stdin)."""
    source = Input(path)
    try:
        lines = (raw for _, raw in source.lines() if not raw.isspace())
        return list(itertools.islice(lines, limit))
    finally:
        source.close()


@click.command("bench", epilog=EXAMPLES)
@click.argument("spec")
@click.argument("input", metavar="INPUT")
@click.option(
    "--sizes",
    default="1,8,64,512,auto",
    show_default=True,
    callback=_sizes,
    help="Batch sizes to try, 'auto' included. Example: --sizes 1,32,auto",
)
@click.option(
    "--workers",
    "workers",
    default=None,
    callback=_workers,
    metavar="N,N,...",
    help="Worker counts to try (default: 1 and the CPUs this process may use); "
    "speedup is against 1 worker. Example: --workers 1,2,4",
)
@click.option(
    "--limit",
    default=10_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Lines sampled from the start of INPUT. Example: --limit 50000",
)
@click.option(
    "--repeat",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    help="Runs per setting; the fastest counts. Example: --repeat 5",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write every row and the recommendation as JSON. Example: --out b.json",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default=None,
    help="Draw items/s and peak worker RSS against batch size (needs matplotlib: "
    "pip install 'poolrun[plot]'). Example: --plot b.png",
)
@click.option(
    "--html",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the sweep, its charts and the recommendation as one self-contained HTML "
    "page. Example: --html b.html",
)
def bench_command(
    spec: str,
    input: str,
    sizes: list[int | str],
    workers: list[int],
    limit: int,
    repeat: int,
    out: str | None,
    plot: str | None,
    html: str | None,
) -> int:
    """Find the batch size (and worker count) that runs SPEC fastest on a sample of INPUT.

    Prints items/s, speedup against 1 worker, worker busy %, overhead % (worker time not
    spent in SPEC) and peak worker RSS for each setting, then the recommended flags for
    `poolrun run`.
    """
    resolve(spec)  # fail here, with the user's own path in the message
    task = LineTask(normalize(spec))
    lines = sample(input, limit)
    if not lines:
        raise click.BadParameter(f"{input!r} has no lines to sample", param_hint="INPUT")
    click.echo(f"sampling {len(lines)} lines of {input}; {repeat} runs per setting", err=True)
    rows = bench.sweep(task, lines, sizes, workers, repeat)
    best = bench.recommend(rows)
    click.echo(bench.render(rows, best))
    if out:
        bench.save(rows, best, out)
    if html:
        source = f"{spec} over {len(lines)} lines of {input}, fastest of {repeat} runs"
        Path(html).write_text(bench_page(rows, best, source), encoding="utf-8")
        click.echo(f"page written to {Path(html)}", err=True)
    if plot:
        try:
            bench.plot(rows, plot)
        except RuntimeError as exc:
            raise click.UsageError(str(exc)) from None
        click.echo(f"plot written to {Path(plot)}", err=True)
    return 0
