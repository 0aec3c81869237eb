"""Whole-process start-up benchmark: a script that calls ``map`` once, per engine.

Run from the repository root::

    .venv/bin/python -m benchmarks.startup                      # 5 rounds, every workload
    .venv/bin/python -m benchmarks.startup --rounds 7 --workloads small,table --pss
    .venv/bin/python -m benchmarks.startup --rounds 1 --scale 0.05   # CI smoke: seconds

What a new user sees is not a warm pool's throughput but ``time python script.py``: the
interpreter, the imports, the pool's start-up, the one call and the shutdown. So every cell
here is a fresh interpreter running a small script that a user would write, with the function
defined in the script itself (``__main__``), as it is the first time anyone tries a library.

* Engines: ``poolrun.map``, ``multiprocessing.Pool.map`` (its own chunking),
  ``ProcessPoolExecutor.map`` chunked as ``Pool.map`` chunks, and mpire's ``WorkerPool.map``,
  all with 2 workers and their default start methods. BLAS is pinned to one thread in every
  script's environment (``--no-pin-blas`` leaves it as the user has it: then the peers
  oversubscribe the cores on the matmul workload and take 5-10x longer, while poolrun pins
  its workers itself), so the matmul row compares start-up, not BLAS threading.
* ``--before SRC`` adds a ``poolrun_before`` engine: the same poolrun script run with
  ``PYTHONPATH=SRC`` (e.g. a ``git worktree`` of an older commit), so that a change is
  measured against what it replaced in the same interleaved rounds.
* ``--control`` adds ``poolrun_again``, the very same poolrun script a second time each
  round: what its ratio reads beside poolrun's is the noise of the ratio itself on this
  machine (on this 2-core machine, 21 rounds of the matmul row read 1.06 and 1.16 for the
  same code). ``--ideal`` adds ``ideal``: the same script computing its first 1/workers of
  the items serially with no pool, what a perfect engine with no start-up, no IPC and no
  imbalance would take; ``ideal / best peer`` is how much any engine could still beat the
  best peer by.
* Rounds are interleaved (every engine once per round, in a rotating order), so a noisy
  neighbour on this shared machine hits every engine alike; the median of the rounds is kept,
  and the ratio poolrun / best peer is taken between medians of the same run.
* Every script prints a digest of its results; all engines must agree or the run fails.
* poolrun's own modules are byte-compiled first (``compileall``), as ``pip install`` leaves
  an installed package: an editable install under ``PYTHONDONTWRITEBYTECODE`` (set on this
  machine) would otherwise compile poolrun from source in every run, which no installed
  peer pays.
* ``--pss`` adds one run per engine on the captured-table workload with the process tree's
  peak PSS sampled (PSS splits a page shared by fork between the processes sharing it, so a
  table inherited copy-on-write counts once, as memory really does). Sampling PSS is slow, so
  those runs are not the timed ones.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

WORKERS = 2

# Each workload: the imports and definitions of the script, the items, and the function.
PRELUDE = {
    "small": (
        "def fn(x):\n"
        "    total = 0\n"
        "    for i in range(450):\n"
        "        total += (x ^ i) & 7\n"
        "    return total\n",
        "range({n})",
        20_000,
        "20k items x ~20 µs pure Python",
    ),
    "matmul": (
        "import numpy as np\n"
        "def fn(seed):\n"
        "    a = np.random.default_rng(seed).random((160, 160))\n"
        "    return float((a @ a).sum())\n",
        "range({n})",
        1_500,
        "1.5k items, 160x160 matmul",
    ),
    "table": (
        "import numpy as np\n"
        "class Lookup:\n"
        "    def __init__(self, table):\n"
        "        self.table = table\n"
        "    def __call__(self, x):\n"
        "        start = (x * 7919) % (len(self.table) - 1000)\n"
        "        return float(self.table[start:start + 1000].sum())\n"
        "fn = Lookup(np.random.default_rng(0).random(6_000_000))\n",
        "range({n})",
        3_000,
        "3k items, a callable holding a 48 MB numpy table",
    ),
    "tiny": (
        "def fn(x):\n    return (x * 7 + 3) % 1000\n",
        "range({n})",
        100_000,
        "100k items x ~0.1 µs",
    ),
    "heavy": (
        "def fn(x):\n"
        "    total = 0\n"
        "    for i in range(200_000):\n"
        "        total += (x ^ i) & 7\n"
        "    return total\n",
        "range({n})",
        60,
        "60 items x ~10 ms pure Python",
    ),
    "records": (
        "import random\n"
        "def make(n):\n"
        "    rng = random.Random(1)\n"
        "    words = 'alpha beta gamma delta pool worker batch queue memory'.split()\n"
        "    return [{'id': i, 'text': ' '.join(rng.choices(words, k=16))} for i in range(n)]\n"
        "def fn(r):\n"
        "    words = r['text'].split()\n"
        "    return {'id': r['id'], 'n': len(words), 'slug': '-'.join(words[:5]).upper()}\n",
        "make({n})",
        30_000,
        "30k dict records x ~5 µs",
    ),
}

ENGINES = {
    "poolrun": (
        "import poolrun\n",
        "values = poolrun.map(fn, items, workers={w}).values\n",
    ),
    "mp_pool": (
        "import multiprocessing\n",
        "with multiprocessing.Pool({w}) as pool:\n    values = pool.map(fn, items)\n",
    ),
    "ppe": (
        "import concurrent.futures\n",
        "with concurrent.futures.ProcessPoolExecutor({w}) as ex:\n"
        "    values = list(ex.map(fn, items, chunksize=max(1, len(items) // (4 * {w}))))\n",
    ),
    "mpire": (
        "from mpire import WorkerPool\n",
        "with WorkerPool(n_jobs={w}) as pool:\n    values = pool.map(fn, [(x,) for x in items])\n",
    ),
}
ENGINES["ideal"] = ("", "values = [fn(x) for x in items[: len(items) // {w}]]\n")  # --ideal
# poolrun's own script under other names: from another src folder (--before), or again (--control)
SAME_SCRIPT = {"poolrun_before": "poolrun", "poolrun_again": "poolrun"}
PEERS = ["mp_pool", "ppe", "mpire"]
NOT_COMPARED = ("ideal",)  # computes part of the items: its digest differs on purpose
BLAS_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def script(workload: str, engine: str, scale: float) -> str:
    body, make_items, size, _ = PRELUDE[workload]
    imports, call = ENGINES[SAME_SCRIPT.get(engine, engine)]
    n = max(4, round(size * scale))
    return (
        f"{imports}{body}\n"
        "if __name__ == '__main__':\n"
        f"    items = list({make_items.format(n=n)})\n"
        + "".join(f"    {line}\n" for line in call.format(w=WORKERS).splitlines())
        + "    import hashlib\n"
        + "    print(hashlib.sha1(repr(values).encode()).hexdigest())\n"
    )


@dataclass
class Cell:
    seconds: list[float]
    digest: str = ""
    pss: int | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def run_script(path: Path, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, env=env, check=False
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{path.name} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, done.stdout.strip()


def tree_pss(root: psutil.Process) -> int:
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_full_info().pss
    return total


def peak_pss(path: Path, env: dict[str, str]) -> int:
    """Run the script once, sampling its process tree's summed PSS until it exits."""
    proc = psutil.Popen([sys.executable, str(path)], env=env, stdout=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, tree_pss(proc))
        time.sleep(0.01)
    return peak


def environments(engines: list[str], pin_blas: bool, before: str | None) -> dict:
    env = dict(os.environ)
    env.pop("POOLRUN_LOG", None)
    if pin_blas:
        env.update(dict.fromkeys(BLAS_VARIABLES, "1"))
    envs = dict.fromkeys(engines, env)
    if before:
        envs["poolrun_before"] = {**env, "PYTHONPATH": before}
    return envs


def measure(
    workloads: list[str], engines: list[str], rounds: int, scale: float, pss: bool, envs: dict,
    folder: Path,
) -> dict:  # fmt: skip
    paths = {}
    for w in workloads:
        for e in engines:
            paths[w, e] = folder / f"{w}_{e}.py"
            paths[w, e].write_text(script(w, e, scale))
    cells = {key: Cell([]) for key in paths}
    for r in range(rounds):
        order = engines[r % len(engines) :] + engines[: r % len(engines)]
        for w in workloads:
            for e in order:
                seconds, digest = run_script(paths[w, e], envs[e])
                cell = cells[w, e]
                cell.seconds.append(seconds)
                cell.digest = digest
            digests = {cells[w, e].digest for e in engines if e not in NOT_COMPARED}
            if len(digests) != 1:
                raise SystemExit(f"{w}: engines disagree on the results: {digests}")
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    if pss and "table" in workloads:
        for e in (e for e in engines if e not in NOT_COMPARED):
            cells["table", e].pss = peak_pss(paths["table", e], envs[e])
    return cells


def table(workloads: list[str], engines: list[str], cells: dict) -> str:
    ours = [e for e in engines if e not in PEERS]
    head = ["workload", *engines, *(f"{e} / best peer" for e in ours)]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " --: |" * (len(head) - 1)]
    for w in workloads:
        medians = {e: cells[w, e].median for e in engines}
        best = min(medians[e] for e in PEERS)
        row = [PRELUDE[w][3], *(f"{medians[e]:.3f} s" for e in engines)]
        row += [f"{medians[e] / best:.2f}" for e in ours]
        lines.append("| " + " | ".join(row) + " |")
    if any(cells.get(("table", e)) and cells["table", e].pss for e in engines):
        pss = {e: cells["table", e].pss / 2**20 for e in engines if e not in NOT_COMPARED}
        row = ["peak PSS, table", *(f"{pss[e]:.0f} MiB" if e in pss else "-" for e in engines)]
        row += [f"{pss[e] / pss['mpire']:.2f} (vs mpire)" if e in pss else "-" for e in ours]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def compile_poolrun(before: str | None) -> None:
    """Byte-compile the poolrun packages the scripts will import, as pip would."""
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("poolrun")
    folders = [*(spec.submodule_search_locations or [])] if spec else []
    if before:
        folders.append(os.path.join(before, "poolrun"))
    for folder in folders:
        compileall.compile_dir(folder, quiet=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each item count")
    parser.add_argument("--workloads", default=",".join(PRELUDE))
    parser.add_argument("--pss", action="store_true", help="also measure peak PSS on 'table'")
    parser.add_argument("--no-pin-blas", action="store_true", help="leave BLAS threads as set")
    parser.add_argument("--before", metavar="SRC", help="also run poolrun from this src folder")
    parser.add_argument(
        "--control", action="store_true", help="also run poolrun's script again, as a control"
    )
    parser.add_argument(
        "--ideal", action="store_true", help="also run 1/workers of the items serially, no pool"
    )
    args = parser.parse_args(argv)
    workloads = args.workloads.split(",")
    unknown = set(workloads) - set(PRELUDE)
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    optional = {"poolrun_again": args.control, "ideal": args.ideal, "poolrun_before": args.before}
    engines = [e for e in ENGINES if e not in optional] + [e for e, on in optional.items() if on]
    compile_poolrun(args.before)
    envs = environments(engines, not args.no_pin_blas, args.before)
    with tempfile.TemporaryDirectory(prefix="poolrun-startup-") as folder:
        cells = measure(workloads, engines, args.rounds, args.scale, args.pss, envs, Path(folder))
    print(f"median of {args.rounds} interleaved rounds, {WORKERS} workers, whole process")
    print(table(workloads, engines, cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
