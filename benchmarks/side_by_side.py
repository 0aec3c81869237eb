"""poolrun side by side with serial, multiprocessing, concurrent.futures, joblib and mpire.

Run from the repository root (all engines run in this one process tree)::

    .venv/bin/python -m benchmarks.side_by_side                   # full run, ~6 min on 2 cores
    .venv/bin/python -m benchmarks.side_by_side --scale 0.01      # CI smoke: seconds, same code
    .venv/bin/python -m benchmarks.side_by_side --workloads small,numpy \\
        --engines serial,mp_pool_map,poolrun --markdown docs/BENCHMARKS.md --json out/bench.json

What is measured, and why:

* Every engine runs with its defaults, start method included: multiprocessing, concurrent.futures
  and mpire fork (their workers start fast and inherit the inputs), joblib's loky spawns
  fresh interpreters, poolrun forks its workers from a template of this process (its
  ``start_method="auto"``).
* Wall time of one whole call, pool start-up and shutdown included: that is what a one-off
  ``map`` costs its caller, and where engines differ most on short workloads. The best of
  ``--repeat`` runs is kept; a cell stops repeating once its runs took ``--budget`` seconds, so
  that the slow cells (one IPC round trip per item over 200k items) run once and the full run
  stays within minutes. The runs are interleaved: each round runs every engine once, in an
  order rotated by a third of the list from round to round (see :func:`round_order`), so a
  slow minute on a shared machine hits all engines.
* Every run starts cold: joblib's loky workers, kept alive for reuse, are shut down inside
  its timed call (as the other pools are by their ``with`` blocks), and the multiprocessing
  forkserver poolrun starts is stopped after each run, so no engine skips its start-up on a
  repeat and no idle helper counts in the next row's memory.
* Every run's results are compared with the serial ones exactly (same code on the same
  inputs, so even floats are equal bit for bit). Any mismatch, or any engine raising, makes the
  script exit 1 after printing everything; a missing peer package only skips that engine.
* Peak RSS of the whole process tree: this process plus the descendants the run started,
  sampled every 20 ms in a thread and summed (helpers alive before the run, such as the
  resource trackers that multiprocessing and loky keep, are left out). RSS counts a page
  shared between processes once per process: a forked worker's RSS includes the parent's
  heap it inherited, so fork-based engines show up to (1 + workers) x the base on big inputs
  (PSS would not, but reading it costs ~15 ms per process per sample). This process's own
  part includes the inputs and the serial results: the ``base`` printed per workload.
* BLAS is pinned to one thread (``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``,
  ``MKL_NUM_THREADS`` = 1, set below before numpy is imported) in this process, so in every
  worker it starts and in the serial baseline too: the numpy workload then compares process
  parallelism rather than BLAS threading, and 2 workers do not oversubscribe 2 cores.

The ``poolrun_cli`` engine (jsonl workload only) runs the ``poolrun run`` command on the same
records written as a JSONL file; its time includes interpreter start-up and JSON parsing and
writing, which the in-process engines do not pay. See :func:`run_poolrun_cli`.
"""

from __future__ import annotations

import os

os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import argparse
import concurrent.futures
import contextlib
import ctypes
import datetime
import functools
import gc
import importlib
import importlib.metadata
import json
import math
import multiprocessing
import multiprocessing.forkserver
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import psutil

from benchmarks.tree_sampler import descendants
from benchmarks.workloads import WORKLOADS, Workload

REPO_ROOT = Path(__file__).resolve().parents[1]
CLI_ENGINE = "poolrun_cli"
CLI_WORKLOAD = "jsonl"
CLI_SPEC = "benchmarks.workloads:jsonl_transform"
SAMPLE_SECONDS = 0.02
MB = 1024 * 1024

Fn = Callable[[Any], Any]
Adapter = Callable[[Fn, list[Any], int], list[Any]]


# -- engines ------------------------------------------------------------------------------


def serial(fn: Fn, items: list[Any], workers: int) -> list[Any]:
    """The reference: every other engine's results must equal these."""
    return [fn(x) for x in items]


def mp_pool_map(fn: Fn, items: list[Any], workers: int) -> list[Any]:
    """``multiprocessing.Pool.map`` with its automatic chunksize (len / (4 * workers))."""
    with multiprocessing.Pool(workers) as pool:
        return pool.map(fn, items)


def mp_pool_imap1(fn: Fn, items: list[Any], workers: int) -> list[Any]:
    """``Pool.imap`` one item per task: best balance, one IPC round trip per item."""
    with multiprocessing.Pool(workers) as pool:
        return list(pool.imap(fn, items, chunksize=1))


def ppe_map1(fn: Fn, items: list[Any], workers: int) -> list[Any]:
    """``ProcessPoolExecutor.map`` with its default chunksize of 1 (one future per item)."""
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        return list(pool.map(fn, items, chunksize=1))


def ppe_map_chunked(fn: Fn, items: list[Any], workers: int) -> list[Any]:
    """``ProcessPoolExecutor.map`` with Pool.map's chunking rule, as a careful user would."""
    chunksize = max(1, len(items) // (4 * workers))
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        return list(pool.map(fn, items, chunksize=chunksize))


def joblib_parallel(fn: Fn, items: list[Any], workers: int) -> list[Any]:
    """joblib's default: the loky backend with automatic batching.

    loky keeps its workers alive after the call for reuse; they are shut down here, as the
    ``with`` blocks of the other engines shut theirs down, so that every run starts cold.
    """
    from joblib import Parallel, delayed
    from joblib.externals.loky import get_reusable_executor

    try:
        return Parallel(n_jobs=workers)(delayed(fn)(x) for x in items)
    finally:
        get_reusable_executor(reuse=True).shutdown(wait=True)


def mpire_map(fn: Fn, items: list[Any], workers: int) -> list[Any]:
    """mpire's ``WorkerPool.map`` with its defaults.

    mpire unpacks an item that is a dict or another non-string iterable into arguments, so
    such items (the jsonl records) go through mpire's own ``make_single_arguments``.
    """
    import tqdm
    from mpire import WorkerPool
    from mpire.utils import make_single_arguments

    # mpire's tqdm would leave its monitor thread running in this process, which the
    # engines after it would find there; a script that used only them would not have it.
    tqdm.tqdm.monitor_interval = 0

    if any(isinstance(x, Iterable) and not isinstance(x, str | bytes) for x in items):
        items = make_single_arguments(items, generator=False)
    with WorkerPool(n_jobs=workers) as pool:
        return pool.map(fn, items)


def poolrun_map(fn: Fn, items: list[Any], workers: int, batch_size: int | None = None) -> list[Any]:
    """``poolrun.map`` with its default options, or with one fixed batch size."""
    import poolrun

    options = {} if batch_size is None else {"batch_size": batch_size}
    return poolrun.map(fn, items, workers=workers, **options).values


ADAPTERS: dict[str, Adapter] = {
    "serial": serial,
    "mp_pool_map": mp_pool_map,
    "mp_pool_imap1": mp_pool_imap1,
    "ppe_map1": ppe_map1,
    "ppe_map_chunked": ppe_map_chunked,
    "joblib": joblib_parallel,
    "mpire": mpire_map,
    "poolrun": poolrun_map,
}
FIXED_BATCH = re.compile(r"poolrun_b(\d+)")
WARM_ENGINE = "poolrun_warm"
DEFAULT_ENGINES = (*ADAPTERS, WARM_ENGINE, "poolrun_b1", "poolrun_b64", CLI_ENGINE)
# The package each engine needs; without it the engine is reported, not run.
NEEDS = {"joblib": "joblib", "mpire": "mpire", "poolrun": "poolrun"}


def adapter_for(engine: str) -> Adapter:
    """The in-process adapter of ``engine``; ``poolrun_b<N>`` is poolrun with batch_size=N."""
    fixed = FIXED_BATCH.fullmatch(engine)
    if fixed:
        return functools.partial(poolrun_map, batch_size=int(fixed.group(1)))
    return ADAPTERS[engine]


def check_engine_name(engine: str) -> str:
    """argparse-friendly validation, so that a typo fails before minutes of benchmarking."""
    if engine in ADAPTERS or engine in (CLI_ENGINE, WARM_ENGINE) or FIXED_BATCH.fullmatch(engine):
        return engine
    raise argparse.ArgumentTypeError(
        f"unknown engine {engine!r}; known: {', '.join(DEFAULT_ENGINES)}, poolrun_b<N>"
    )


@functools.cache
def why_absent(engine: str) -> tuple[str, str] | None:
    """(status, note) when ``engine`` cannot run here; peers are skipped, poolrun unavailable.

    poolrun is imported for real (not just looked up) because it is being written alongside
    this script and may be importable yet broken. :func:`main` asks for every engine up
    front, so no first run pays an import and every row's base memory holds the same modules.
    """
    if engine == CLI_ENGINE:
        return None if cli_script() else ("unavailable", "`poolrun run --help` did not work")
    poolrun_engine = FIXED_BATCH.fullmatch(engine) or engine == WARM_ENGINE
    package = NEEDS.get("poolrun" if poolrun_engine else engine)
    if package is None:
        return None
    try:
        importlib.import_module(package)
    except Exception as exc:
        status = "unavailable" if package == "poolrun" else "skipped"
        return status, f"import {package}: {type(exc).__name__}: {exc}"
    return None


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc's ``malloc_trim``).

    Without it one engine's garbage (200k futures from ``ppe_map1``: ~120 MB) stays in this
    process, inflating the next rows' memory and the heap that forked workers inherit.
    """
    gc.collect()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


def stop_forkserver() -> None:
    """Stop the forkserver poolrun starts, so its next run starts cold like every other engine.

    multiprocessing keeps it until this process exits. ``_stop`` is how CPython's own tests
    stop it; it is a no-op when none is running.
    """
    multiprocessing.forkserver._forkserver._stop()


# -- measuring ----------------------------------------------------------------------------


class PeakTreeRss:
    """Peak of :func:`tree_rss` over a ``with`` block, sampled every 20 ms by a helper process.

    Sampling the sum is the point: ``ru_maxrss`` gives each process's own peak, not the peak
    of the tree at one moment, which is what decides whether a machine runs out of memory.
    The sampler is a process, not a thread, because a thread would change what is measured:
    poolrun forks its workers from a template of the caller only while the caller has no
    other threads, as a user's plain script has none.
    """

    def __init__(self, root: psutil.Process, exclude: frozenset[int] = frozenset()) -> None:
        self.root = root
        self.exclude = exclude
        self.peak = 0
        self._sampler: subprocess.Popen | None = None

    def __enter__(self) -> PeakTreeRss:
        command = [sys.executable, "-m", "benchmarks.tree_sampler", str(SAMPLE_SECONDS)]
        command += [str(self.root.pid), *map(str, self.exclude)]
        self._sampler = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
        )
        assert self._sampler.stdout is not None
        self._sampler.stdout.readline()  # "ready": its first sample is taken
        return self

    def __exit__(self, *_: object) -> None:
        assert self._sampler is not None
        out, _ = self._sampler.communicate()
        self.peak = int(out.strip())


class Trial(NamedTuple):
    """One run of one engine on one workload."""

    seconds: float
    peak_rss: int
    results: list[Any]


@dataclass
class Job:
    """What an engine runs: a workload's function on its items, plus the CLI's input file."""

    workload: Workload
    items: list[Any]
    workers: int
    records_path: Path | None


def run_in_process(adapter: Adapter, job: Job) -> Trial:
    """Time one adapter call while sampling the memory of this process and what it starts."""
    me = psutil.Process()
    helpers = frozenset(proc.pid for proc in descendants(me))
    with PeakTreeRss(me, helpers) as rss:
        start = time.perf_counter()
        results = adapter(job.workload.fn, job.items, job.workers)
        seconds = time.perf_counter() - start
    return Trial(seconds, rss.peak, list(results))


def run_trial(engine: str, job: Job) -> Trial:
    """One cold run of ``engine``; a forkserver it leaves behind is stopped before returning.

    ``poolrun`` is the first call in a process, as a one-off script makes it. ``poolrun_warm``
    is a ``poolrun.Pool`` that has already run one call (its workers are up), as in a
    long-lived program that calls it again and again. The warm-up call is not timed.
    """
    if engine == WARM_ENGINE:
        import poolrun

        with poolrun.Pool(workers=job.workers) as pool:
            pool.map(job.workload.fn, job.items[:1])
            try:
                return run_in_process(lambda fn, items, _: pool.map(fn, items).values, job)
            finally:
                stop_forkserver()
    try:
        if engine == CLI_ENGINE:
            trial = run_poolrun_cli(job.records_path, job.workers) if job.records_path else None
            if trial is None:
                raise RuntimeError("the poolrun CLI is not available")
            return trial
        return run_in_process(adapter_for(engine), job)
    finally:
        stop_forkserver()


# -- the poolrun CLI (jsonl workload) ------------------------------------------------------


def cli_env() -> dict[str, str]:
    """This environment (BLAS pinned) plus the repo root, so ``benchmarks.workloads`` imports."""
    paths = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


@functools.cache
def cli_script() -> str | None:
    """The venv's ``poolrun`` script if ``poolrun run --help`` works, else ``None``."""
    script = shutil.which("poolrun", path=str(Path(sys.executable).parent))
    if script is None:
        return None
    check = subprocess.run(
        [script, "run", "--help"], capture_output=True, env=cli_env(), timeout=120, check=False
    )
    return script if check.returncode == 0 else None


def write_jsonl(records: Sequence[Any], path: Path) -> None:
    """The CLI's input: one JSON document per line."""
    with path.open("w", encoding="utf-8") as out:
        out.writelines(json.dumps(record) + "\n" for record in records)


def read_jsonl(path: Path) -> list[Any]:
    """The CLI's output, parsed back so it compares with the serial results."""
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def run_poolrun_cli(records_path: Path, workers: int) -> Trial | None:
    """HOOK for the jsonl row: ``poolrun run`` on a JSONL file, as a user would run it.

    Returns ``None`` when the CLI is not there (see :func:`cli_script`). Otherwise it times the
    whole subprocess (interpreter start-up and JSON I/O included), samples the RSS of the
    subprocess tree only (not this process, which holds the records for the other engines),
    and returns the output read back. A non-zero exit raises with the last line of stderr.
    """
    script = cli_script()
    if script is None:
        return None
    output = records_path.with_name("poolrun-cli-out.jsonl")
    output.unlink(missing_ok=True)
    command = [script, "run", CLI_SPEC, str(records_path), "-o", str(output)]
    command += ["--no-progress", "-w", str(workers)]
    start = time.perf_counter()
    proc = psutil.Popen(
        command, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    with PeakTreeRss(proc) as rss:
        _, stderr = proc.communicate()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        last = (stderr.strip().splitlines() or ["(no stderr)"])[-1]
        raise RuntimeError(f"poolrun run exited {proc.returncode}: {last}")
    return Trial(seconds, rss.peak, read_jsonl(output))


# -- one cell of the table ----------------------------------------------------------------


@dataclass
class Cell:
    """One engine on one workload: its best time and peak memory, or why it has none."""

    engine: str
    status: str = "ok"  # ok | MISMATCH | failed | skipped | unavailable
    note: str = ""
    seconds: list[float] = field(default_factory=list)
    peak_rss: int = 0

    @property
    def best(self) -> float | None:
        """The least disturbed run: noise only ever adds time."""
        return min(self.seconds) if self.seconds else None


def first_difference(expected: list[Any], got: list[Any]) -> str | None:
    """Where ``got`` stops matching the serial results, said briefly; ``None`` if equal."""
    if len(got) != len(expected):
        return f"{len(got)} results, expected {len(expected)}"
    for i, (want, have) in enumerate(zip(expected, got, strict=True)):
        if want != have:
            return f"item {i}: {have!r:.60} != serial {want!r:.60}"
    return None


def new_cell(engine: str) -> Cell:
    """An empty cell, or one that says why the engine cannot run here."""
    absent = why_absent(engine)
    return Cell(engine, *absent) if absent else Cell(engine)


def wants_another(cell: Cell, repeat: int, budget: float) -> bool:
    return cell.status == "ok" and len(cell.seconds) < repeat and sum(cell.seconds) < budget


def measure_once(cell: Cell, job: Job, expected: list[Any]) -> None:
    """One more run of ``cell.engine``, checked against the serial results."""
    release_memory()
    try:
        trial = run_trial(cell.engine, job)
    except Exception as exc:
        first_line = next((line for line in str(exc).splitlines() if line.strip()), "")
        cell.status, cell.note = "failed", f"{type(exc).__name__}: {first_line}"
        return
    cell.seconds.append(trial.seconds)
    cell.peak_rss = max(cell.peak_rss, trial.peak_rss)
    difference = first_difference(expected, trial.results)
    if difference:
        cell.status, cell.note = "MISMATCH", difference


# -- tables -------------------------------------------------------------------------------

COLUMNS = ("engine", "runs", "time s", "items/s", "speedup", "eff.", "peak RSS MB", "status")
WIDTHS = (16, 4, 8, 11, 7, 5, 11, 0)


def row(cell: Cell, n: int, serial_best: float | None, workers: int) -> list[str]:
    """A table row; speedup is serial time / this time, efficiency is speedup per worker."""
    status = f"{cell.status}: {cell.note}" if cell.note else cell.status
    best = cell.best
    if best is None:
        return [cell.engine, "0", "-", "-", "-", "-", "-", status]
    speedup = serial_best / best if serial_best else None
    used = 1 if cell.engine == "serial" else workers
    return [
        cell.engine,
        str(len(cell.seconds)),
        f"{best:.3f}",
        f"{n / best:,.0f}",
        f"{speedup:.2f}" if speedup else "-",
        f"{speedup / used:.2f}" if speedup else "-",
        f"{cell.peak_rss / MB:,.0f}",
        status,
    ]


def text_line(cells: Sequence[str]) -> str:
    """A fixed-width line, so rows can be printed as they finish."""
    first, *rest = cells
    parts = [first.ljust(WIDTHS[0])] + [c.rjust(w) for c, w in zip(rest, WIDTHS[1:], strict=True)]
    return "  ".join(parts).rstrip()


def markdown_table(rows: list[list[str]], columns: Sequence[str] = COLUMNS) -> list[str]:
    """The same rows as a Markdown table (numbers right-aligned; a ``|`` in a note escaped)."""
    align = ["---"] + ["--:"] * (len(columns) - 2) + ["---"]
    lines = [columns, align, *rows]
    return ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines]


# -- the verdict: poolrun against the best peer -------------------------------------------

VERDICT_TITLE, VERDICT_NOTE = "poolrun against the best peer", "(below 1.00: poolrun is faster)"
PEERS = ("mp_pool_map", "mp_pool_imap1", "ppe_map1", "ppe_map_chunked", "joblib", "mpire")
VERDICT_COLUMNS = (
    "workload",
    "best peer",
    "first call / best peer",
    "warm pool / best peer",
    "runner-up peer / best peer",
    "first call / best peer, medians",
    "first call / best peer, round by round",
    "ideal / best peer",
)


def verdict_row(result: WorkloadResult) -> list[str] | None:
    """poolrun's first call and warm pool against the best peer, on best runs and on
    medians, beside how far the runner-up peer is from the best: where peers doing the same
    work differ by more than poolrun trails, a best-of-N race is decided by noise (the best
    of six peers' runs is the luckiest of many more runs than poolrun's own). The ideal is
    the serial time over the workers, what a perfect engine (no start-up, no IPC, no
    imbalance) would take: how much any engine could still beat the best peer by."""
    cells = {c.engine: c for c in result.cells if c.status == "ok" and c.seconds}
    peers = sorted((cells[p].best, p) for p in PEERS if p in cells)
    if "poolrun" not in cells or not peers:
        return None
    best, name = peers[0]

    def ratio(engine: str, of: Callable[[Cell], float | None] = lambda c: c.best) -> str:
        cell = cells.get(engine)
        return f"{of(cell) / of(cells[name]):.2f}" if cell else "-"

    runner_up = f"{peers[1][0] / best:.2f} ({peers[1][1]})" if len(peers) > 1 else "-"
    median = ratio("poolrun", lambda c: statistics.median(c.seconds))
    paired = round_by_round(cells["poolrun"], cells[name])
    serial = cells.get("serial")
    ideal = f"{serial.best / result.workers / best:.2f}" if serial else "-"
    row = [result.name, name, ratio("poolrun"), ratio(WARM_ENGINE), runner_up, median, paired]
    return [*row, ideal]


def round_by_round(cell: Cell, peer: Cell) -> str:
    """The median over rounds of ``cell``'s time over ``peer``'s in the same round, and how
    many rounds ``cell`` won: the paired reading, in which a slow minute of the machine
    slows both runs of a round and so cancels out (best-of readings instead pit one engine's
    luckiest run against the luckiest of all the peers' runs). A cell's i-th run is from
    round i: a cell that stops repeating does so for the rest of the workload."""
    pairs = list(zip(cell.seconds, peer.seconds, strict=False))
    ratios = [mine / theirs for mine, theirs in pairs]
    won = sum(ratio < 1 for ratio in ratios)
    return f"{statistics.median(ratios):.2f} (won {won} of {len(ratios)})"


def verdict(results: list[WorkloadResult]) -> list[list[str]]:
    return [r for r in map(verdict_row, results) if r is not None]


# -- the run ------------------------------------------------------------------------------


@dataclass
class WorkloadResult:
    """Everything measured for one workload, for the tables and the JSON dump."""

    name: str
    about: str
    n: int
    base_rss: int
    workers: int
    cells: list[Cell]
    rows: list[list[str]]

    @property
    def serial_us_per_item(self) -> float | None:
        """The calibrated cost of one item, as measured here."""
        best = self.cells[0].best
        return best / self.n * 1e6 if best else None


def heading(result: WorkloadResult) -> str:
    """One line that says what the rows below measure."""
    per_item = result.serial_us_per_item
    cost = f"{per_item:,.2f} µs/item serially" if per_item else "serial failed"
    return (
        f"{result.name}: {result.n:,} items, {result.about}; {cost}; {result.workers} workers; "
        f"base RSS {result.base_rss / MB:,.0f} MB"
    )


def round_order(cells: list[Cell], round_: int) -> list[Cell]:
    """The engines in the order of round ``round_``: rotated by about a third of the list a
    round, so that within the first three rounds (all that a slow cell gets before its
    budget runs out) every engine runs once early, once midway and once late. Rotated by one
    a round, the engines listed last (poolrun's) ran in the second half of each of heavy's
    three rounds, and a machine that slows as a round goes on would charge them for it."""
    n = len(cells)
    stride = max(1, round(n / 3))
    while math.gcd(stride, n) != 1:
        stride += 1
    shift = round_ * stride % n
    return cells[shift:] + cells[:shift]


def run_workload(
    workload: Workload, engines: Sequence[str], args: argparse.Namespace
) -> WorkloadResult:
    """Every engine once per round, rounds interleaved (so a slow minute on this shared
    machine slows every engine alike, not the ones that happened to run then); prints the
    table once the workload is done.

    The reference results come from one untimed serial pass, which also warms imports and
    caches (numpy's first matmul, the records' pages) so that no engine pays for them.
    """
    items = workload.items(args.scale)
    with tempfile.TemporaryDirectory(prefix="poolrun-bench-") as tmp:
        records_path = None
        if workload.name == CLI_WORKLOAD and CLI_ENGINE in engines:
            records_path = Path(tmp) / "records.jsonl"
            write_jsonl(items, records_path)
        job = Job(workload, items, args.workers, records_path)
        expected = serial(workload.fn, items, 1)
        release_memory()
        base_rss = psutil.Process().memory_info().rss
        cells = [new_cell(e) for e in engines if e != CLI_ENGINE or records_path is not None]
        for round_ in range(args.repeat):  # rounds, each engine once in a rotated order
            for cell in round_order(cells, round_):
                if wants_another(cell, args.repeat, args.budget):
                    measure_once(cell, job, expected)
        result = WorkloadResult(
            workload.name, workload.about, len(items), base_rss, args.workers, cells, []
        )
        print(f"\n{heading(result)}\n{text_line(COLUMNS)}", flush=True)
        for cell in cells:
            result.rows.append(row(cell, len(items), cells[0].best, args.workers))
            print(text_line(result.rows[-1]), flush=True)
    return result


def machine_facts() -> dict[str, Any]:
    """What a reader needs to compare these numbers with their own."""
    versions = {}
    for package in ("poolrun", "numpy", "joblib", "mpire", "psutil"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu": cpu_model(),
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def cpu_model() -> str:
    """The CPU's marketing name where Linux says it, else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def command_line() -> str:
    """The exact command, as it can be pasted again."""
    return shlex.join(["python", "-m", "benchmarks.side_by_side", *sys.argv[1:]])


def write_markdown(
    path: Path, results: list[WorkloadResult], facts: dict[str, Any], args: argparse.Namespace
) -> None:
    """The tables for docs/BENCHMARKS.md, with the command and machine they came from."""
    versions = ", ".join(f"{k} {v}" for k, v in facts["versions"].items())
    lines = [
        f"Command: `{command_line()}`",
        "",
        f"Machine: {facts['cpu']}, {facts['usable_cpus']} usable CPUs (of {facts['cpu_count']}), "
        f"{facts['memory_gb']} GB; Python {facts['python']} on {facts['platform']}; {versions}; "
        f"{facts['date']}.",
        "",
        f"Best of up to {args.repeat} runs (fewer once a cell took {args.budget:g} s), pool "
        "start-up included, BLAS pinned to 1 thread; speedup is against serial, efficiency is "
        "speedup per worker. Peak RSS is summed over the whole process tree, the base (the "
        "benchmark process holding the inputs and serial results) included; RSS counts shared "
        "pages once per process, so engines that fork (multiprocessing, concurrent.futures, "
        "mpire) also count the parent heap each worker inherits.",
    ]
    rows = verdict(results)
    if rows:
        lines += ["", f"**{VERDICT_TITLE}** {VERDICT_NOTE}", ""]
        lines += markdown_table(rows, VERDICT_COLUMNS)
    for result in results:
        lines += ["", f"**{heading(result)}**", "", *markdown_table(result.rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_json(
    path: Path, results: list[WorkloadResult], facts: dict[str, Any], args: argparse.Namespace
) -> None:
    """All raw numbers (every run's time, bytes not MB) for later analysis or plots."""
    data = {
        "command": command_line(),
        "machine": facts,
        "options": {k: v for k, v in vars(args).items() if k not in ("json", "markdown")},
        "workloads": [
            {
                "name": r.name,
                "about": r.about,
                "items": r.n,
                "serial_us_per_item": r.serial_us_per_item,
                "base_rss_bytes": r.base_rss,
                "cells": [{**asdict(c), "best": c.best} for c in r.cells],
            }
            for r in results
        ],
    }
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def check_workload_name(name: str) -> str:
    """argparse-friendly validation of one workload name."""
    if name in WORKLOADS:
        return name
    raise argparse.ArgumentTypeError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")


def name_list(check: Callable[[str], str]) -> Callable[[str], list[str]]:
    """An argparse type for a comma-separated list of names, each validated by ``check``."""

    def parse(text: str) -> list[str]:
        return [check(name.strip()) for name in text.split(",") if name.strip()]

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.side_by_side",
        description="Compare parallel engines on six workloads in one process tree.",
    )
    parser.add_argument("--workloads", type=name_list(check_workload_name), default=list(WORKLOADS))
    parser.add_argument(
        "--engines",
        type=name_list(check_engine_name),
        default=list(DEFAULT_ENGINES),
        help="serial always runs first: it is the reference. poolrun_b<N>: batch_size=N",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--repeat",
        type=int,
        help="runs per cell, the best is kept (default: 3; 1 with --scale below 1, a smoke run "
        "whose times mean little)",
    )
    parser.add_argument(
        "--budget", type=float, default=10.0, help="stop repeating a cell after this many seconds"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="item counts x this (0.01: smoke)")
    parser.add_argument("--json", type=Path, help="write all raw numbers here")
    parser.add_argument("--markdown", type=Path, help="write the tables here as Markdown")
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 3 if args.scale >= 1 else 1
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run every workload, write the reports, and exit 1 if any engine mismatched or failed."""
    args = parse_args(argv)
    engines = ["serial", *(e for e in dict.fromkeys(args.engines) if e != "serial")]
    for engine in engines:
        why_absent(engine)
    start = time.perf_counter()
    results = [run_workload(WORKLOADS[name], engines, args) for name in args.workloads]
    facts = machine_facts()
    if args.markdown:
        write_markdown(args.markdown, results, facts, args)
    if args.json:
        write_json(args.json, results, facts, args)
    rows = verdict(results)
    if rows:
        print(f"\n{VERDICT_TITLE} {VERDICT_NOTE}")
        for line in markdown_table(rows, VERDICT_COLUMNS):
            print(line)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    bad = [(r.name, c) for r in results for c in r.cells if c.status in ("MISMATCH", "failed")]
    for workload, cell in bad:
        print(f"{cell.status}: {cell.engine} on {workload}: {cell.note}", file=sys.stderr)
    if bad:
        print(f"FAILED: {len(bad)} cells mismatched serial or raised", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
