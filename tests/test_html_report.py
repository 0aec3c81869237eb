"""The HTML pages, loaded in a real browser (headless Chromium from the system's packages,
driven by Playwright): the charts are found through the DOM, the page logs no error and
asks the network for nothing.

Without /usr/bin/chromium these tests are skipped, unless POOLRUN_REQUIRE_BROWSER is set
(CI sets it, after installing the browser in .ci/run).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import poolrun
from funcs import identity, slow_square, troubled
from poolrun import bench
from poolrun.html_report import bench_page

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser(tmp_path):
    """A fresh browser per test, closed before the test's check for stray processes."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("POOLRUN_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing (apt-get install -y chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            args=ARGS,
            headless=True,
        )
        yield context
        context.close()


class Loaded:
    """A page opened from a file, with every console error and request it made."""

    def __init__(self, context, path: Path) -> None:
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page = context.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.url = path.resolve().as_uri()
        self.page.goto(self.url)
        self.page.wait_for_load_state("load")

    def count(self, selector: str) -> int:
        return self.page.locator(selector).count()

    def check_clean(self) -> None:
        assert self.errors == []
        assert self.requests == [self.url]  # nothing fetched beyond the file itself
        areas = self.page.locator("svg.chart").evaluate_all(
            "els => els.map(e => e.getBoundingClientRect()).map(r => r.width * r.height)"
        )
        assert areas and min(areas) > 10_000  # drawn, and drawn visibly

    def close(self) -> None:
        self.page.close()


def test_report_page_marks_a_crash_a_timeout_and_a_recycle(browser, tmp_path):
    fn = troubled(crash_at=40, hang_at=90)
    run = poolrun.map(fn, range(240), workers=2, batch_size=4, timeout=1, max_rss="200MB")
    report = run.report
    assert report.worker_deaths and report.timeouts and report.recycled
    path = tmp_path / "report.html"
    report.save(path)
    page = Loaded(browser, path)
    try:
        page.check_clean()
        for chart in ("throughput", "batch-size", "busy", "rss", "events", "latency"):
            assert page.count(f'svg.chart[data-chart="{chart}"]') == 1, chart
        for kind in ("crash", "timeout", "recycle"):
            assert page.count(f'svg[data-chart="events"] .mark[data-mark="{kind}"]') >= 1, kind
            assert page.count(f'svg[data-chart="rss"] .mark[data-mark="{kind}"]') >= 1, kind
        assert page.count('svg[data-chart="rss"] .limit') == 1  # the max_rss line
        assert page.count('svg[data-chart="rss"] .series') >= 2  # one line per worker
        assert page.count('svg[data-chart="latency"] .bar') >= 1
        assert "poolrun report" in page.page.locator("pre").inner_text()
    finally:
        page.close()


def test_bench_page_shows_the_sweep_and_the_recommendation(browser, tmp_path):
    rows = bench.sweep(slow_square, list(range(40)), [1, 8, "auto"], [1, 2], repeat=1)
    best = bench.recommend(rows)
    path = tmp_path / "bench.html"
    path.write_text(bench_page(rows, best, "slow_square over 40 items"))
    page = Loaded(browser, path)
    try:
        page.check_clean()
        assert page.count('svg.chart[data-chart="bench-throughput"] .series') == 2
        assert page.count('svg.chart[data-chart="bench-rss"] .series') == 2
        assert page.count("svg .recommended") == 2
        assert page.count("table.sweep tr") == len(rows) + 1
        text = page.page.locator(".recommendation").inner_text()
        assert f"--batch-size {best.batch_size}" in text
    finally:
        page.close()


@pytest.mark.slow
def test_report_of_a_million_items_at_batch_size_4_is_under_1_mb(tmp_path):
    run = poolrun.map(identity, range(1_000_000), workers=2, batch_size=4)
    assert run.report.batches == 250_000
    path = tmp_path / "report.html"
    run.report.save(path)
    assert path.stat().st_size < 1_000_000, path.stat().st_size
