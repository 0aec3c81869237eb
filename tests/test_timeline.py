"""The run's time series as a pure object: a fake clock, no processes."""

from __future__ import annotations

from poolrun.html_report import report_page
from poolrun.report import Report
from poolrun.timeline import MAX_BINS, MAX_MARKS, Timeline


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bins_merge_and_keep_every_item():
    clock = FakeClock()
    tl = Timeline(0.0, workers=2, clock=clock)
    for step in range(10_000):
        clock.now = (step + 1) * 0.05
        tl.batch(worker=1, n=3, busy=0.04)
    series = tl.to_dict(clock.now)
    assert len(series["t"]) <= MAX_BINS
    assert tl.width > 0.1  # merged at least once
    assert sum(tl.items) == 30_000
    assert abs(sum(tl.busy) - 400.0) < 1e-6


def test_a_long_batch_spreads_its_busy_time_over_the_bins_it_ran_in():
    clock = FakeClock()
    tl = Timeline(0.0, workers=1, clock=clock)
    clock.now = 5.0
    tl.batch(worker=1, n=1, busy=4.0)
    busy = tl.to_dict(5.0)["busy_pct"]
    assert max(busy) <= 100.0
    assert busy[-2] == 100.0 and busy[0] == 0.0  # 1.0..5.0 busy, 0..1.0 idle
    assert abs(sum(tl.busy) - 4.0) < 1e-9


def test_a_replacement_worker_takes_the_slot_its_predecessor_left():
    clock = FakeClock()
    tl = Timeline(0.0, workers=2, clock=clock)
    tl.rss(101, 50_000_000)
    tl.rss(102, 60_000_000)
    tl.mark(101, "worker-died: SIGSEGV", at=0.05)
    tl.rss(103, 40_000_000)
    assert tl.slot_name(103) == "w1"
    data = tl.to_dict(0.1)
    assert sorted(data["rss_bytes"]) == ["w1", "w2"]
    assert data["marks"] == [
        {"t": 0.05, "kind": "crash", "worker": "w1", "cause": "worker-died: SIGSEGV", "count": 1}
    ]


def test_marks_merge_past_the_bound_and_keep_their_count():
    clock = FakeClock()
    tl = Timeline(0.0, workers=1, clock=clock)
    for i in range(5 * MAX_MARKS):
        tl.mark(i, "timeout" if i % 2 else "recycled (memory)", at=i * 0.5)
    assert len(tl.marks) <= MAX_MARKS
    assert sum(m[4] for m in tl.marks) == 5 * MAX_MARKS


def test_a_day_long_run_makes_a_report_page_under_1_mb():
    """A day of batches every second on 8 workers, a crash every minute: the page stays
    the size of a short run's."""
    clock = FakeClock()
    tl = Timeline(0.0, workers=8, max_rss=2_000_000_000, clock=clock)
    for second in range(86_400):
        clock.now = float(second)
        worker = 1000 + second % 8
        tl.batch(worker, n=4000, busy=0.9)
        tl.rss(worker, 500_000_000 + (second % 3600) * 100_000)
        if second % 60 == 59:
            tl.mark(worker, "worker-died: SIGSEGV", at=clock.now)
    report = Report(items=86_400 * 4000, wall_s=86_400.0, workers=8, timeline=tl.to_dict(86_400))
    size = len(report_page(report).encode())
    assert size < 1_000_000, size
