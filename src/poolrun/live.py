"""The live terminal view of a run, drawn with ``rich`` from a status dict.

It draws only from the plain dict :mod:`poolrun.status` builds, never from the engine's
objects, so the same view serves a run in this process (``progress="live"``) and a CLI job
in another terminal (``poolrun watch``, which reads the dict from the job's status file).

What it shows, top to bottom: progress with the rate and an ETA when the input's length is
known; throughput over the last minute as a sparkline; the batch size now and the sizer's
reason; the fault counters; one row per worker (state, the batch it is running, items done,
busy %, RSS as a bar against ``max_rss``).
"""

from __future__ import annotations

import gc
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

SPARKS = "▁▂▃▄▅▆▇█"
BAR_WIDTH = 24
FAULTS = (
    ("worker_deaths", "deaths"),
    ("timeouts", "timeouts"),
    ("memory_kills", "memory kills"),
    ("recycled", "recycled"),
    ("retries", "retries"),
)


def sparkline(values: list[float]) -> str:
    """One block character per value, scaled to the largest."""
    top = max(values, default=0.0)
    if top <= 0:
        return SPARKS[0] * len(values)
    last = len(SPARKS) - 1
    return "".join(SPARKS[min(last, int(v / top * last + 0.5))] for v in values)


def bar(fraction: float, width: int = BAR_WIDTH, style: str | None = None) -> Text:
    """A filled bar; for memory green, yellow past 75 % (batches shrink), red past 90 %
    (the worker is recycled)."""
    fraction = min(max(fraction, 0.0), 1.0)
    filled = round(fraction * width)
    if style is None:
        style = "red" if fraction >= 0.9 else "yellow" if fraction >= 0.75 else "green"
    return Text.assemble(("█" * filled, style), ("░" * (width - filled), "grey50"))


def count(n: float) -> str:
    return f"{n:,.0f}"


def size(n: float | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _progress_line(snap: dict[str, Any]) -> Text:
    done, total = snap["done"], snap["total"]
    line = Text()
    if total:
        line += bar(done / total, 30, "cyan") + Text(f" {100 * done / total:5.1f} %  ")
    line += Text(f"{count(done)}" + (f" / {count(total)}" if total else "") + " items", "bold")
    failed = snap["failed"]
    return line + Text(f" · {count(failed)} failed", "red" if failed else "")


def _pace(snap: dict[str, Any]) -> Text:
    line = Text(f"{count(snap['items_per_s'])} items/s · {clock(snap['elapsed_s'])} elapsed")
    if snap["state"] == "running" and snap["eta_s"] is not None:
        line += Text(f" · ETA {clock(snap['eta_s'])}", "cyan")
    return line


def _summary(snap: dict[str, Any]) -> Text:
    """Labelled lines as one Text: a table here would double the cost of a frame."""
    rates = snap["rates"]
    peak = f"  peak {count(max(rates))}/s" if rates else ""
    faults = snap["faults"]
    shown = [
        Text(f"{faults.get(k, 0)} {name}", "red" if faults.get(k) else "") for k, name in FAULTS
    ]
    rows = [
        ("rate", _pace(snap)),
        ("throughput", Text(sparkline(rates), "cyan") + Text(f"  last minute{peak}")),
        ("batch size", Text(f"{count(snap['batch_size'])}  ({snap['reason']})")),
        ("faults", Text(" · ").join(shown)),
    ]
    return Text("\n").join(Text.assemble((f"{label:<11}", "bold"), value) for label, value in rows)


def _batch(w: dict[str, Any]) -> str:
    if w["batch"] is None:
        return "-"
    items = w["batch_items"]
    text = f"#{w['batch']} ({items} item{'' if items == 1 else 's'})"
    return text + (f" +{w['queued']} queued" if w["queued"] else "")


def _workers(snap: dict[str, Any]) -> Text:
    """One row per worker, columns padded by hand: a rich Table would measure every cell
    of every frame, most of a frame's cost."""
    limit = snap["max_rss"]
    cells = [
        (
            f"{w['name'] or 'new'} {w['label']}",
            w["state"],
            _batch(w),
            count(w["items"]),
            f"{w['busy_pct']:.0f} %",
            w["rss"],
        )
        for w in snap["workers"]
    ]
    heads = ("worker", "state", "batch", "items", "busy")
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]
    head = "  ".join(
        h.rjust(n) if i >= 3 else h.ljust(n)
        for i, (h, n) in enumerate(zip(heads, widths, strict=True))
    )
    lines = [Text(head + "  RSS", "bold")]
    styles = {"busy": "green", "idle": "grey50", "recycling": "yellow"}
    for name, state, batch, items, busy, rss in cells:
        line = Text(f"{name:<{widths[0]}}  ") + Text(f"{state:<{widths[1]}}", styles[state])
        line += Text(f"  {batch:<{widths[2]}}  {items:>{widths[3]}}  {busy:>{widths[4]}}  ")
        if limit:
            line += bar((rss or 0) / limit) + Text(f" {size(rss)} / {size(limit)}")
        else:
            line += Text(size(rss))
        lines.append(line)
    return Text("\n").join(lines)


def render(snap: dict[str, Any]) -> RenderableType:
    """The whole view for one status dict."""
    parts: list[RenderableType] = [_progress_line(snap), _summary(snap), _workers(snap)]
    if snap["state"] != "running":
        outcome = (
            f"{snap['state']} in {clock(snap['elapsed_s'])}: {count(snap['done'])} items, "
            f"{count(snap['failed'])} failed"
        )
        parts.append(Text(outcome, "bold"))
    return Group(*parts)


class LiveDisplay:
    """A ``rich`` Live region on ``stream``, redrawn only when :meth:`show` is called (the
    monitor calls it a few times a second); the last frame stays on screen."""

    def __init__(self, stream: TextIO) -> None:
        self.console = Console(file=stream)
        # Results may be going to stdout: never capture or redirect either stream.
        self.live = Live(
            console=self.console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False
        )
        self.started = False

    def show(self, snap: dict[str, Any]) -> None:
        if not self.started:
            self.live.start()
            self.started = True
        self._draw(snap)

    def close(self, snap: dict[str, Any] | None) -> None:
        if not self.started:
            return
        if snap is not None:
            self._draw(snap)
        self.live.stop()
        self.started = False

    def _draw(self, snap: dict[str, Any]) -> None:
        """One frame, with the cyclic garbage collector paused while it is drawn.

        A frame makes a few thousand short-lived objects (rich's segments), enough to
        trigger a collection, and the first collection of a run walks every result the
        supervisor holds so far: 30-80 ms at 8M results, which the view would take from the
        run while holding the GIL. Paused, the frame's objects are freed before the
        collector counts them, and the run pays for its one collection where it would have
        without a view. A program that turned the collector off keeps it off.

        The pause is process-wide, for as long as a frame takes (1-2 ms), or for as long as
        a stalled terminal (Ctrl-S) blocks the frame's write: cyclic garbage made meanwhile
        waits for the next collection. A thread that turns the collector off in the middle
        of a frame finds it on again after the frame."""
        paused = gc.isenabled()
        if paused:
            gc.disable()
        try:
            self.live.update(render(snap), refresh=True)
        finally:
            if paused:
                gc.enable()
