"""The throughput report: what a run did and where the time went.

Numbers are gathered by :class:`~poolrun.stats.Stats` while the run goes and frozen into a
:class:`Report` at the end: a table (``print``), JSON, or an HTML page with charts.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

from .stats import LatencyHistogram, SizeStats, Stats, WorkerFigures

__all__ = ["LatencyHistogram", "Report", "SizeStats", "Stats", "WorkerFigures", "render_table"]

TYPE_CHECKING = False  # typing itself is not imported: it costs the first call
if TYPE_CHECKING:
    from typing import Any

FINE_GRAINED_SECONDS = 5e-6


def _pct(x: float) -> float:
    return round(100.0 * x, 1)


@dataclass
class Report:
    """A finished run in numbers: ``print(report)`` for a table, ``save()`` for JSON."""

    backend: str = "local"
    start_method: str = ""  # how workers started, and why that way
    items: int = 0
    succeeded: int = 0
    failed: int = 0
    wall_s: float = 0.0
    items_per_s: float = 0.0
    workers: int = 0
    batches: int = 0
    batch_size: dict[str, int | None] = field(default_factory=dict)
    busy_pct: dict[str, float] = field(default_factory=dict)
    overhead_pct: float = 0.0
    item_time_s: dict[str, float | None] = field(default_factory=dict)
    peak_rss_bytes: dict[str, int] = field(default_factory=dict)
    worker_restarts: int = 0
    worker_deaths: int = 0
    timeouts: int = 0
    retries: int = 0
    memory_kills: int = 0
    recycled: int = 0
    splits: int = 0
    resumed: int = 0  # of ``items``: read back from a checkpoint, not run this time
    rate: dict[str, Any] = field(default_factory=dict)  # rate=: "limit" and "held_per_s"
    live_view_cpu_s: float | None = None  # CPU the live view took, when it was drawn
    trace_events_dropped: int = 0  # the in-memory trace keeps only the most recent events
    notes: list[str] = field(default_factory=list)
    # drawn by the HTML report, not shown in the text table (see poolrun.timeline)
    timeline: dict[str, Any] = field(default_factory=dict)
    latency_histogram: list[list[float]] = field(default_factory=list)

    @classmethod
    def from_stats(cls, s: Stats) -> Report:
        wall = max((s.ended or time.perf_counter()) - s.started, 1e-9)
        names = {w: s.worker_names.get(w, str(w)) for w in s.per_worker}
        in_fn = s.latency.total
        report = cls(
            backend=s.backend,
            start_method=s.start_method,
            items=s.items + s.resumed,
            succeeded=s.items + s.resumed - s.failed - s.resumed_failed,
            failed=s.failed + s.resumed_failed,
            wall_s=round(wall, 6),
            items_per_s=round(s.items / wall, 1),
            workers=s.workers,
            batches=s.batches,
            batch_size=s.sizes.to_dict(),
            busy_pct={names[w]: _pct(f.busy_s / wall) for w, f in s.per_worker.items()},
            overhead_pct=_pct(max(0.0, 1.0 - in_fn / (s.workers * wall))) if s.items else 0.0,
            item_time_s={f"p{q}": s.latency.percentile(q) for q in (50, 95, 99)},
            peak_rss_bytes={names[w]: f.peak_rss for w, f in s.per_worker.items()},
            worker_restarts=s.counters["restarts"],
            worker_deaths=s.counters["worker_deaths"],
            timeouts=s.counters["timeouts"],
            retries=s.counters["retries"],
            memory_kills=s.counters["memory_kills"],
            recycled=s.counters["recycled"],
            splits=s.counters["splits"],
            resumed=s.resumed,
            rate=dict(s.rate),
            live_view_cpu_s=s.live_view_cpu_s,
            timeline=s.timeline.to_dict(s.ended or time.perf_counter()),
            latency_histogram=s.latency.buckets(),
        )
        report.notes = _notes(s)
        return report

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | os.PathLike[str]) -> None:
        """JSON, or a self-contained HTML page with charts when ``path`` ends in .html."""
        if str(path).lower().endswith((".html", ".htm")):
            from .html_report import report_page

            with open(path, "w", encoding="utf-8") as out:
                out.write(report_page(self))
            return
        import json  # here, not at import: nothing on a run's path needs it

        with open(path, "w") as out:
            out.write(json.dumps(self.to_dict(), indent=2) + "\n")

    def __str__(self) -> str:
        return render_table(self)


def _notes(s: Stats) -> list[str]:
    notes = []
    if s.latency.n and s.latency.total / s.latency.n < FINE_GRAINED_SECONDS and s.items >= 1000:
        mean_us = 1e6 * s.latency.total / s.latency.n
        notes.append(
            f"work too fine-grained to gain from processes: items take {mean_us:.2f} µs each, "
            "less than moving them between processes costs; run it serially, or give each "
            "item more work (e.g. a chunk of records per item)"
        )
    return notes


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1e3:.3f} ms" if x < 1 else f"{x:.2f} s"


def render_table(r: Report) -> str:
    bs = r.batch_size
    rows = [
        ("backend", r.backend),
        ("workers start", r.start_method or "-"),
        ("items", f"{r.items} ({r.succeeded} ok, {r.failed} failed)"),
        ("wall time", f"{r.wall_s:.3f} s"),
        ("throughput", f"{r.items_per_s:,.1f} items/s"),
        ("workers", str(r.workers)),
        (
            "batches",
            f"{r.batches} (size first {bs.get('first')}, last {bs.get('last')}, "
            f"min {bs.get('min')}, max {bs.get('max')})",
        ),
        ("overhead", f"{r.overhead_pct:.1f} % of worker time outside your function"),
        ("item time", " / ".join(f"{k} {_ms(v)}" for k, v in r.item_time_s.items())),
        (
            "faults",
            f"{r.worker_deaths} deaths, {r.worker_restarts} restarts, {r.timeouts} timeouts, "
            f"{r.retries} retries, {r.memory_kills} memory kills, {r.recycled} recycled",
        ),
    ]
    if r.resumed:
        rows.insert(3, ("resumed", f"{r.resumed} items read back from the checkpoint, not run"))
    if r.rate:
        held = r.rate.get("held_per_s")
        shown = "-" if held is None else f"{held:,.1f} items/s"
        rows.append(("rate", f"limit {r.rate['limit']}, held {shown}"))
    if r.live_view_cpu_s is not None:
        share = 100 * r.live_view_cpu_s / max(r.wall_s, 1e-9)
        cost = f"{1e3 * r.live_view_cpu_s:.0f} ms CPU, {share:.2f} % of the wall time"
        rows.append(("live view", cost))
    width = max(len(k) for k, _ in rows)
    lines = ["poolrun report", "-" * 60]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append(f"{'worker':<{width}}  {'busy':>7}  {'peak RSS':>10}")
    for name, busy in r.busy_pct.items():
        lines.append(f"{name:<{width}}  {busy:>6.1f}%  {_mb(r.peak_rss_bytes.get(name, 0)):>10}")
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)
