"""The HTML pages: a run's report (``report.save("r.html")``, ``--report r.html``) and the
bench sweep (``poolrun bench --html``).

Each page is one self-contained file: inline CSS, inline SVG charts (:mod:`poolrun.charts`),
no script and nothing fetched, so it opens offline, from an e-mail or a CI artifact, and
stays small (a day-long run's report is the same size as a minute's, see
:mod:`poolrun.timeline`). It answers the questions a table cannot: did the batch size
settle, whose memory crept up to the limit, when did the crashes happen, did throughput
fall off at the end.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING, Any

from . import __version__
from .charts import (
    MARK_COLORS,
    MARK_LABELS,
    category_chart,
    clock_label,
    events_chart,
    histogram_chart,
    time_chart,
)

if TYPE_CHECKING:
    from .bench import BenchRow
    from .report import Report

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 920px;
       color: #222; padding: 0 12px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
.meta { color: #666; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 16px 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 8px 14px; min-width: 110px; }
.card b { display: block; font-size: 18px; }
figure { margin: 14px 0; } figcaption { font-weight: 600; margin-bottom: 2px; }
svg.chart { max-width: 100%; height: auto; background: #fff; }
svg .grid { stroke: #eee; } svg .axis { stroke: #999; }
svg .tick { font-size: 11px; fill: #555; } svg .axis-label { font-size: 12px; fill: #333; }
svg .limit line { stroke: #d62728; stroke-dasharray: 6 4; stroke-width: 1.5; }
svg .limit text { font-size: 11px; fill: #d62728; }
svg line.mark { stroke-width: 1.2; opacity: 0.75; }
svg .bar { fill: #1f77b4; }
.legend-marks span { margin-right: 14px; white-space: nowrap; }
.legend-marks i { display: inline-block; width: 10px; height: 10px; border-radius: 5px;
                  margin-right: 4px; }
table { border-collapse: collapse; } td, th { padding: 3px 10px; text-align: right; }
th { border-bottom: 1px solid #ccc; } tr.best td { background: #fff3cd; font-weight: 600; }
pre { background: #f6f6f6; padding: 10px; overflow-x: auto; }
.note { background: #fff3cd; padding: 8px 12px; border-radius: 6px; }
"""


def page(title: str, body: list[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        + "\n".join(body)
        + f'<p class="meta">made by poolrun {__version__} on '
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}</p></body></html>\n"
    )


def _cards(items: Sequence[tuple[str, str]]) -> str:
    cells = "".join(f'<div class="card">{escape(k)}<b>{escape(v)}</b></div>' for k, v in items)
    return f'<div class="cards">{cells}</div>'


def _mb(value: float) -> str:
    return f"{value / 1e6:,.0f} MB" if value < 1e9 else f"{value / 1e9:.2f} GB"


def _marks_legend(marks: Sequence[dict[str, Any]]) -> str:
    counts = {kind: 0 for kind in MARK_COLORS}
    for m in marks:
        counts[m["kind"]] += m["count"]
    spans = "".join(
        f'<span><i style="background:{color}"></i>{MARK_LABELS[kind]}: {counts[kind]}</span>'
        for kind, color in MARK_COLORS.items()
    )
    return f'<p class="legend-marks">Vertical lines mark faults: {spans}</p>'


def _time_charts(tl: dict[str, Any]) -> list[str]:
    t, marks = tl["t"], tl["marks"]
    limit = ("max_rss " + _mb(tl["max_rss"]), tl["max_rss"]) if tl.get("max_rss") else None
    rss = {name: [v / 1e6 if v else None for v in ys] for name, ys in tl["rss_bytes"].items()}
    mb_limit = (limit[0], limit[1] / 1e6) if limit else None
    return [
        time_chart(
            "throughput", "Throughput", t, {"items/s": tl["items_per_s"]}, marks,
            lambda v: f"{v:,.0f}", "items / s",
        ),
        time_chart(
            "batch-size", "Batch size (mean of the batches that finished)", t,
            {"items": tl["batch_size"]}, marks, lambda v: f"{v:,.0f}", "items per batch",
        ),
        time_chart(
            "busy", "Workers busy (share of the workers' time spent running batches)", t,
            {"busy %": tl["busy_pct"]}, marks, lambda v: f"{v:.0f} %", "busy %", y_top=100.0,
        ),
        time_chart(
            "rss", "Worker memory (RSS, highest reading per interval; a replaced worker's "
            "successor keeps its line)", t, rss, marks, lambda v: f"{v:,.0f}", "MB", mb_limit,
        ),
    ]  # fmt: skip


def _marks_table(marks: Sequence[dict[str, Any]]) -> str:
    if not marks:
        return "<p>No worker died, timed out, was killed for memory or was recycled.</p>"
    rows = "".join(
        f"<tr><td>{escape(clock_label(m['t']))}</td><td>{MARK_LABELS[m['kind']]}</td>"
        f"<td>{escape(m['worker'] or '-')}</td><td style='text-align:left'>"
        f"{escape(m['cause'])}</td><td>{m['count']}</td></tr>"
        for m in marks
    )
    return (
        '<table class="marks"><tr><th>time</th><th>fault</th><th>worker</th><th>cause</th>'
        f"<th>count</th></tr>{rows}</table>"
    )


def report_page(report: Report) -> str:
    """The whole report page for one run."""
    tl = report.timeline
    end = tl["t"][-1] + tl["bin_seconds"] if tl.get("t") else report.wall_s
    body = [
        "<h1>poolrun report</h1>",
        f'<p class="meta">{report.backend} backend, {report.workers} workers; time series in '
        f"{clock_label(tl.get('bin_seconds', 0))} steps</p>",
        _cards(
            [
                ("items", f"{report.items:,}"),
                ("failed", f"{report.failed:,}"),
                ("wall time", clock_label(round(report.wall_s, 2))),
                ("throughput", f"{report.items_per_s:,.0f}/s"),
                ("faults", f"{report.worker_deaths} deaths, {report.recycled} recycled"),
            ]
        ),
        *[f'<p class="note">{escape(n)}</p>' for n in report.notes],
        "<h2>Over time</h2>",
        _marks_legend(tl.get("marks", [])),
        *(_time_charts(tl) if tl else []),
        events_chart(end, tl.get("marks", [])),
        "<h2>Item time</h2>",
        histogram_chart(report.latency_histogram),
        "<h2>Faults</h2>",
        _marks_table(tl.get("marks", [])),
        "<h2>Summary</h2>",
        f"<pre>{escape(str(report))}</pre>",
    ]
    return page("poolrun report", body)


def bench_page(rows: Sequence[BenchRow], best: BenchRow, source: str = "") -> str:
    """The ``poolrun bench`` sweep: the recommendation, the table and two charts."""
    labels = list(dict.fromkeys(r.batch_size for r in rows))
    counts = sorted({r.workers for r in rows})

    def series(field: str) -> dict[str, list[float | None]]:
        out: dict[str, list[float | None]] = {}
        for w in counts:
            mine = {r.batch_size: getattr(r, field) for r in rows if r.workers == w}
            out[f"{w} worker{'' if w == 1 else 's'}"] = [mine.get(label) for label in labels]
        return out

    mark = (
        f"{best.workers} worker{'' if best.workers == 1 else 's'}",
        labels.index(best.batch_size),
    )
    table_rows = "".join(
        f"<tr{' class=best' if r is best else ''}><td>{r.workers}</td><td>{r.batch_size}</td>"
        f"<td>{r.items_per_s:,.0f}</td><td>{'-' if r.speedup is None else r.speedup}</td>"
        f"<td>{r.busy_pct:.1f}</td><td>{r.overhead_pct:.1f}</td><td>{r.peak_rss_mb:.1f}</td></tr>"
        for r in rows
    )
    body = [
        "<h1>poolrun bench</h1>",
        f'<p class="meta">{escape(source)}</p>' if source else "",
        f'<p class="note recommendation">recommended: <code>--workers {best.workers} '
        f"--batch-size {escape(best.batch_size)}</code> ({best.items_per_s:,.0f} items/s, "
        f"peak worker RSS {best.peak_rss_mb:.1f} MB)</p>",
        category_chart("bench-throughput", "Throughput by batch size", labels,
                       series("items_per_s"), "items / s", mark),
        category_chart("bench-rss", "Peak worker RSS by batch size", labels,
                       series("peak_rss_mb"), "MB", mark),
        '<table class="sweep"><tr><th>workers</th><th>batch</th><th>items/s</th>'
        "<th>speedup</th><th>busy %</th><th>overhead %</th><th>peak RSS MB</th></tr>"
        f"{table_rows}</table>",
    ]  # fmt: skip
    return page("poolrun bench", body)
