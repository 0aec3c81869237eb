"""Run a small job with every kind of fault, draw its live view mid-run and its report at
the end, and photograph both with headless Chromium into docs/ (see scripts/screenshots)."""

from __future__ import annotations

import ctypes
import io
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path

from rich.console import Console

from poolrun.api import Streaming
from poolrun.live import render
from poolrun.status import Snapshotter

DOCS = Path(__file__).resolve().parent.parent / "docs"
CHROMIUM = "/usr/bin/chromium"
ITEMS = 5000
_HELD: list[bytes] = []


def work(x: int) -> int:
    """Uneven items that hold on to memory (so workers get recycled), one that crashes
    and one that hangs (a timeout)."""
    random.seed(x)
    time.sleep(random.choice((0.001, 0.002, 0.004, 0.012)))
    _HELD.append(os.urandom(300_000))
    if x == 1200:
        ctypes.string_at(0)
    if x == 2600:
        time.sleep(3600)
    return x


def run() -> tuple[str, Path]:
    """The live view at about two thirds of the run (HTML), and the report page."""
    stream = Streaming(work, range(ITEMS), workers=4, max_rss="250MB", timeout=2)
    snapshots = Snapshotter(lambda: stream.call)
    frame, next_snap = None, 0.0
    for segment in stream.segments():
        now = time.monotonic()
        if now >= next_snap:  # the history the sparkline draws, as the live view keeps it
            next_snap = now + 0.5
            snap = snapshots.take()
            if frame is None and snap and segment.start > 0.65 * ITEMS:
                frame = snap
    assert frame is not None
    console = Console(record=True, file=io.StringIO(), width=112, force_terminal=True)
    console.print(render(frame))
    live = console.export_html(inline_styles=True).replace(
        "<body>", '<body style="background:#1e1e1e;color:#ddd;margin:12px">'
    )
    report = DOCS / "report.html"
    stream.report().save(report)
    return live, report


def photograph(url: str, png: Path, width: int, height: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", f"--window-size={width},{height}",
             f"--screenshot={png}", url],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    print(f"wrote {png}")


def main() -> None:
    live, report = run()
    with tempfile.NamedTemporaryFile("w", suffix=".html", delete=False) as page:
        page.write(live)
    try:
        photograph(Path(page.name).as_uri(), DOCS / "live-view.png", 1000, 330)
    finally:
        os.unlink(page.name)
    photograph(report.as_uri(), DOCS / "report.png", 960, 1500)
    report.unlink()


if __name__ == "__main__":
    main()
