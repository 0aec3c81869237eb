"""Batch-size sweep: run the user's own function on a sample of their data at each batch size
and worker count, and recommend a setting.

Why a sweep and not only ``batch_size="auto"``: the automatic sizer aims at a time per batch,
which is right for most work, but a user tuning a job that will run for hours wants to see
the curve (throughput and worker memory against batch size) on their own data.

Each worker count gets one warm :class:`~poolrun.Pool`, so start-up is left out and the rows
compare batching alone; each setting runs ``repeat`` times and keeps the fastest.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .api import Pool
from .report import Report


@dataclass
class BenchRow:
    workers: int
    batch_size: str
    items: int
    seconds: float
    items_per_s: float
    speedup: float | None  # vs the same batch size on 1 worker (None if 1 worker not run)
    busy_pct: float
    overhead_pct: float
    peak_rss_mb: float
    failed: int


def parse_sizes(text: str) -> list[int | str]:
    """``"1,8,64,auto"`` -> ``[1, 8, 64, "auto"]`` with a clear error for anything else."""
    sizes: list[int | str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == "auto":
            sizes.append("auto")
        elif part.isdigit() and int(part) > 0:
            sizes.append(int(part))
        else:
            raise ValueError(f"{part!r} is not 'auto' or a whole number > 0")
    if not sizes:
        raise ValueError("give at least one size, e.g. 1,8,64,auto")
    return sizes


def parse_workers(text: str) -> list[int]:
    try:
        counts = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"{text!r} is not a list of whole numbers like 1,2,4") from None
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"{text!r} must list worker counts >= 1, e.g. 1,2,4")
    return counts


def _row(workers: int, size: int | str, best: Report) -> BenchRow:
    busy = list(best.busy_pct.values())
    return BenchRow(
        workers=workers,
        batch_size=str(size),
        items=best.items,
        seconds=best.wall_s,
        items_per_s=best.items_per_s,
        speedup=None,
        busy_pct=round(sum(busy) / len(busy), 1) if busy else 0.0,
        overhead_pct=best.overhead_pct,
        peak_rss_mb=round(max(best.peak_rss_bytes.values(), default=0) / 1e6, 1),
        failed=best.failed,
    )


def sweep(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    sizes: Sequence[int | str],
    workers: Sequence[int],
    repeat: int = 3,
    **options: Any,
) -> list[BenchRow]:
    """Time ``fn`` over ``items`` for every (workers, batch size) pair."""
    rows = []
    for count in workers:
        with Pool(workers=count, **options) as pool:
            pool.map(fn, items[: max(1, count)])  # warm: function shipped, imports done
            for size in sizes:
                reports = [pool.map(fn, items, batch_size=size).report for _ in range(repeat)]
                rows.append(_row(count, size, min(reports, key=lambda r: r.wall_s)))
    single = {r.batch_size: r.items_per_s for r in rows if r.workers == 1}
    for r in rows:
        if single.get(r.batch_size):
            r.speedup = round(r.items_per_s / single[r.batch_size], 2)
    return rows


def recommend(rows: Sequence[BenchRow]) -> BenchRow:
    """Fastest setting; among those within 3% of it, the one using the least memory."""
    ok = [r for r in rows if r.failed == 0] or list(rows)
    top = max(r.items_per_s for r in ok)
    close = [r for r in ok if r.items_per_s >= 0.97 * top]
    return min(close, key=lambda r: (r.peak_rss_mb, -r.items_per_s))


def render(rows: Sequence[BenchRow], best: BenchRow) -> str:
    head = (
        f"{'workers':>7} {'batch':>6} {'items/s':>12} {'speedup':>8} {'busy %':>7} "
        f"{'overhead %':>10} {'peak RSS':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        speedup = f"{r.speedup:.2f}" if r.speedup is not None else "-"
        mark = "  <- recommended" if r is best else ""
        lines.append(
            f"{r.workers:>7} {r.batch_size:>6} {r.items_per_s:>12,.0f} {speedup:>8} "
            f"{r.busy_pct:>7.1f} {r.overhead_pct:>10.1f} {r.peak_rss_mb:>7.1f} MB{mark}"
        )
    lines.append(f"recommended: --workers {best.workers} --batch-size {best.batch_size}")
    return "\n".join(lines)


def save(rows: Sequence[BenchRow], best: BenchRow, path: str | Path) -> None:
    doc = {"rows": [asdict(r) for r in rows], "recommended": asdict(best)}
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")


def plot(rows: Sequence[BenchRow], path: str | Path) -> None:
    """Throughput and peak worker RSS against batch size, one line per worker count."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'poolrun[plot]'") from None
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    labels = list(dict.fromkeys(r.batch_size for r in rows))
    for count in sorted({r.workers for r in rows}):
        mine = {r.batch_size: r for r in rows if r.workers == count}
        xs = [i for i, label in enumerate(labels) if label in mine]
        top.plot(xs, [mine[labels[i]].items_per_s for i in xs], marker="o", label=f"{count} w")
        bottom.plot(xs, [mine[labels[i]].peak_rss_mb for i in xs], marker="o")
    top.set_ylabel("items/s")
    top.legend()
    bottom.set_ylabel("peak worker RSS (MB)")
    bottom.set_xlabel("batch size")
    bottom.set_xticks(range(len(labels)), labels)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
