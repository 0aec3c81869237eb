"""Charts as inline SVG, drawn in plain Python for the HTML pages.

Why not a charting library or a bundled script: the pages must be one file that fetches
nothing and opens anywhere, years later, and the charts are simple (lines over time, bars).
A few hundred points per series (see :mod:`poolrun.timeline`) keep each chart a few KB.

Every chart is an ``<svg class="chart" data-chart="NAME">``; its lines are
``class="series" data-series="NAME"``, a limit is ``class="limit"``, and each fault mark is
``class="mark" data-mark="KIND"``, so tests (and users' own scripts) find them in the DOM.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape
from typing import Any

WIDTH, HEIGHT = 880, 210
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 14, 30
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
MARK_COLORS = {
    "crash": "#d62728",
    "timeout": "#ff7f0e",
    "memory-kill": "#9467bd",
    "recycle": "#2ca02c",
}
MARK_LABELS = {
    "crash": "worker died",
    "timeout": "timeout",
    "memory-kill": "memory kill",
    "recycle": "recycled",
}


def nice_ceiling(value: float) -> float:
    """The next round number (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten)
    at or above ``value``: an axis top."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if step * power >= value * 0.999:
            return step * power
    return 10 * power


def clock_label(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:g} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}:{secs:02d}"
    return f"{minutes // 60}:{minutes % 60:02d} h"


class Frame:
    """Plot area of one chart: maps data to pixels and draws axes, ticks and grid."""

    def __init__(self, x_max: float, y_max: float, x_min: float = 0.0) -> None:
        self.x_min, self.x_max, self.y_max = x_min, max(x_max, x_min + 1e-9), y_max
        self.w, self.h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(self, value: float) -> float:
        return round(LEFT + (value - self.x_min) / (self.x_max - self.x_min) * self.w, 1)

    def y(self, value: float) -> float:
        return round(TOP + self.h - min(value, self.y_max) / self.y_max * self.h, 1)

    def axes(self, y_format: Callable[[float], str], y_label: str) -> list[str]:
        parts = []
        for i in range(5):
            value = self.y_max * i / 4
            y = self.y(value)
            parts.append(f'<line class="grid" x1="{LEFT}" x2="{LEFT + self.w}" y1="{y}" y2="{y}"/>')
            parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 4}" text-anchor="end">')
            parts.append(f"{escape(y_format(value))}</text>")
        parts.append(
            f'<text class="axis-label" x="12" y="{TOP + self.h / 2}" '
            f'transform="rotate(-90 12 {TOP + self.h / 2})" text-anchor="middle">'
            f"{escape(y_label)}</text>"
        )
        return parts

    def x_ticks(self, labels: Sequence[tuple[float, str]]) -> list[str]:
        base = TOP + self.h
        parts = [f'<line class="axis" x1="{LEFT}" x2="{LEFT + self.w}" y1="{base}" y2="{base}"/>']
        for value, label in labels:
            x = self.x(value)
            parts.append(f'<line class="axis" x1="{x}" x2="{x}" y1="{base}" y2="{base + 4}"/>')
            parts.append(
                f'<text class="tick" x="{x}" y="{base + 17}" text-anchor="middle">'
                f"{escape(label)}</text>"
            )
        return parts


def svg(name: str, title: str, parts: list[str]) -> str:
    return (
        f'<figure><figcaption>{escape(title)}</figcaption><svg class="chart" data-chart="{name}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        + "".join(parts)
        + "</svg></figure>"
    )


def _path(frame: Frame, xs: Sequence[float], ys: Sequence[float | None]) -> str:
    """An SVG path through the points; a ``None`` value breaks the line."""
    out, pen_down = [], False
    for x, y in zip(xs, ys, strict=True):
        if y is None:
            pen_down = False
            continue
        out.append(f"{'L' if pen_down else 'M'}{frame.x(x)} {frame.y(y)}")
        pen_down = True
    return "".join(out)


def time_ticks(end: float) -> list[tuple[float, str]]:
    step = nice_ceiling(end / 6) if end > 0 else 1.0
    return [(i * step, clock_label(i * step)) for i in range(int(end / step) + 1)]


def time_chart(
    name: str,
    title: str,
    t: Sequence[float],
    series: dict[str, Sequence[float | None]],
    marks: Sequence[dict[str, Any]],
    y_format: Callable[[float], str],
    y_label: str,
    limit: tuple[str, float] | None = None,
    y_top: float | None = None,
) -> str:
    """Lines over the run's time (values at bin centres), with the fault marks as vertical
    lines and an optional horizontal limit (``max_rss``)."""
    step = (t[1] - t[0]) if len(t) > 1 else 1.0
    end = (t[-1] + step) if t else 1.0
    values = [v for ys in series.values() for v in ys if v is not None]
    top = y_top or nice_ceiling(max([*values, limit[1] if limit else 0.0, 0.0]) * 1.05)
    frame = Frame(end, top)
    parts = frame.axes(y_format, y_label) + frame.x_ticks(time_ticks(end))
    centres = [x + step / 2 for x in t]
    for i, (label, ys) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        parts.append(
            f'<path class="series" data-series="{escape(label)}" d="{_path(frame, centres, ys)}" '
            f'stroke="{color}" fill="none" stroke-width="1.6"/>'
        )
    if limit is not None:
        y = frame.y(limit[1])
        parts.append(
            f'<g class="limit"><line x1="{LEFT}" x2="{LEFT + frame.w}" y1="{y}" y2="{y}"/>'
            f'<text x="{LEFT + frame.w - 4}" y="{y - 4}" text-anchor="end">'
            f"{escape(limit[0])}</text></g>"
        )
    parts += [_mark_line(frame, m) for m in marks]
    if len(series) > 1:
        parts.append(_legend(list(series)))
    return svg(name, title, parts)


def _mark_line(frame: Frame, mark: dict[str, Any]) -> str:
    x = frame.x(mark["t"])
    color = MARK_COLORS[mark["kind"]]
    return (
        f'<line class="mark" data-mark="{mark["kind"]}" x1="{x}" x2="{x}" y1="{TOP}" '
        f'y2="{TOP + frame.h}" stroke="{color}"/>'
    )


def _legend(labels: list[str]) -> str:
    parts = []
    for i, label in enumerate(labels):
        x = LEFT + 10 + 70 * i
        color = PALETTE[i % len(PALETTE)]
        parts.append(
            f'<rect x="{x}" y="{TOP + 2}" width="10" height="10" fill="{color}"/>'
            f'<text class="tick" x="{x + 14}" y="{TOP + 11}">{escape(label)}</text>'
        )
    return '<g class="legend">' + "".join(parts) + "</g>"


def events_chart(end: float, marks: Sequence[dict[str, Any]]) -> str:
    """One lane per kind of fault, a tick for each mark, with its cause as a tooltip."""
    kinds = list(MARK_COLORS)
    lane = 30
    frame = Frame(end, 1.0)
    parts = frame.x_ticks(time_ticks(end))
    for i, kind in enumerate(kinds):
        y = TOP + i * lane + lane / 2
        parts.append(
            f'<text class="tick" x="{LEFT - 6}" y="{y + 4}" text-anchor="end">'
            f"{MARK_LABELS[kind]}</text>"
            f'<line class="grid" x1="{LEFT}" x2="{LEFT + frame.w}" y1="{y}" y2="{y}"/>'
        )
    for m in marks:
        y = TOP + kinds.index(m["kind"]) * lane + lane / 2
        x = frame.x(m["t"])
        who = f" on {m['worker']}" if m["worker"] else ""
        times = f" ({m['count']} times)" if m["count"] > 1 else ""
        parts.append(
            f'<g class="mark" data-mark="{m["kind"]}"><circle cx="{x}" cy="{y}" r="6" '
            f'fill="{MARK_COLORS[m["kind"]]}"/><title>{escape(clock_label(m["t"]))}: '
            f"{escape(m['cause'])}{escape(who)}{times}</title></g>"
        )
    return svg("events", "Faults over time (hover a mark for its cause)", parts)


def histogram_chart(buckets: Sequence[Sequence[float]]) -> str:
    """Item latencies: counts per log-spaced bin, on a log time axis."""
    if not buckets:
        return svg("latency", "Item time: no items timed", [])
    lo = math.floor(math.log10(buckets[0][0]))
    hi = math.ceil(math.log10(buckets[-1][1]))
    top = nice_ceiling(max(b[2] for b in buckets) * 1.05)
    frame = Frame(hi, top, x_min=lo)
    parts = frame.axes(lambda v: f"{v:,.0f}", "items")
    parts += frame.x_ticks([(e, duration_label(10.0**e)) for e in range(lo, hi + 1)])
    for low, high, n in buckets:
        x0, x1 = frame.x(math.log10(low)), frame.x(math.log10(high))
        y = frame.y(n)
        parts.append(
            f'<rect class="bar" x="{x0}" y="{y}" width="{max(x1 - x0, 1.0)}" '
            f'height="{round(TOP + frame.h - y, 1)}"><title>{duration_label(low)} to '
            f"{duration_label(high)}: {n:,.0f} items</title></rect>"
        )
    return svg("latency", "Item time (time inside your function, log scale)", parts)


def duration_label(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def category_chart(
    name: str,
    title: str,
    labels: Sequence[str],
    series: dict[str, Sequence[float | None]],
    y_label: str,
    highlight: tuple[str, int] | None = None,
) -> str:
    """Lines over categories (the bench's batch sizes), one per series; ``highlight`` rings
    one point (series name, category index): the recommendation."""
    values = [v for ys in series.values() for v in ys if v is not None]
    top = nice_ceiling(max([*values, 0.0]) * 1.05)
    frame = Frame(len(labels) - 0.5, top, x_min=-0.5)  # half a step of room at each end
    parts = frame.axes(lambda v: f"{v:,.0f}", y_label)
    parts += frame.x_ticks(list(enumerate(labels)))
    for i, (label, ys) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        xs = list(range(len(ys)))
        parts.append(
            f'<path class="series" data-series="{escape(label)}" d="{_path(frame, xs, ys)}" '
            f'stroke="{color}" fill="none" stroke-width="2"/>'
        )
        for x, y in zip(xs, ys, strict=True):
            if y is not None:
                parts.append(
                    f'<circle cx="{frame.x(x)}" cy="{frame.y(y)}" r="3.5" fill="{color}"/>'
                )
    if highlight is not None and highlight[0] in series:
        y = series[highlight[0]][highlight[1]]
        if y is not None:
            parts.append(
                f'<circle class="recommended" cx="{frame.x(highlight[1])}" cy="{frame.y(y)}" '
                'r="9" fill="none" stroke="#d62728" stroke-width="2.5"/>'
            )
    parts.append(_legend(list(series)))
    return svg(name, title, parts)
