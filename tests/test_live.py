"""The live view: drawn on a real pseudo-terminal, and its pieces on their own."""

from __future__ import annotations

import gc
import io
import os
import subprocess
import sys
import textwrap

from poolrun.live import LiveDisplay, sparkline
from poolrun.monitor import AUTO_AFTER_SECONDS, due
from terminal import Terminal

TESTS = os.path.dirname(__file__)


def _script(progress: str, items: int) -> list[str]:
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {TESTS!r})
        import poolrun
        from funcs import slow_square
        if __name__ == "__main__":
            run = poolrun.map(slow_square, range({items}), workers=2, progress={progress!r})
            print("values", len(run.values))
            print("view cpu", run.report.live_view_cpu_s)
            print(run.report)
        """
    )
    return [sys.executable, "-c", code]


def test_live_view_on_a_terminal_shows_workers_and_final_counts():
    term = Terminal(_script("live", 300))
    assert term.read_until(lambda text: "finished in" in text), term.text[-3000:]
    assert term.finish() == 0
    text = term.text
    for expected in ("worker", "state", "busy", "RSS", "throughput", "batch size", "faults"):
        assert expected in text, expected
    assert "w1 pid" in text and "w2 pid" in text
    final = text[text.rindex("300 / 300 items") :]
    assert "0 failed" in final and "finished in" in final and "values 300" in final
    view_cpu = float(final.split("view cpu ")[1].split()[0])  # the view's own thread, timed
    assert 0 < view_cpu < 5, view_cpu
    assert "live view" in final and "% of the wall time" in final


def test_off_a_terminal_progress_stays_plain():
    done = subprocess.run(_script("live", 50), capture_output=True, timeout=60)
    assert done.returncode == 0
    assert b"\x1b[" not in done.stderr and b"worker" not in done.stderr
    assert b"values 50" in done.stdout
    assert b"view cpu None" in done.stdout and b"live view" not in done.stdout


def _frame() -> dict:
    worker = {"name": "w1", "label": "pid 1", "state": "busy", "batch": 3, "batch_items": 64}
    worker |= {"queued": 1, "items": 640, "busy_pct": 97.0, "rss": 50e6}
    snap = {"done": 700, "total": 10_000, "failed": 0, "items_per_s": 900.0, "elapsed_s": 1.0}
    snap |= {"state": "running", "eta_s": 10.0, "rates": [900.0] * 60, "faults": {}}
    return snap | {"batch_size": 64, "reason": "time", "max_rss": 0, "workers": [worker] * 8}


def test_frames_are_drawn_with_the_collector_paused_and_leave_it_as_they_found_it():
    """A frame's objects would trigger a collection that walks every result held so far."""
    display = LiveDisplay(io.StringIO())
    collections = []
    gc.callbacks.append(lambda phase, info: collections.append(phase))
    try:
        for _ in range(20):
            gc.collect()
            # a run's objects bring the collector near its threshold between frames
            kept = [[] for _ in range(gc.get_threshold()[0] - 50)]
            collections.clear()
            display.show(_frame())
            assert collections == [] and gc.isenabled()
            del kept
        gc.disable()  # a program that turned it off keeps it off
        display.show(_frame())
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.callbacks.pop()
        display.close(None)


def test_sparkline_scales_to_the_largest_value():
    assert sparkline([0, 5, 10]) == "▁▅█"
    assert sparkline([0, 0]) == "▁▁"
    assert sparkline([]) == ""


def _snap(elapsed: float, eta: float | None) -> dict:
    return {"elapsed_s": elapsed, "eta_s": eta}


def test_by_default_the_view_waits_for_a_run_that_lasts():
    assert not due(_snap(AUTO_AFTER_SECONDS / 2, None), defer=True)
    assert not due(_snap(AUTO_AFTER_SECONDS + 0.1, 0.5), defer=True)  # about to end
    assert due(_snap(AUTO_AFTER_SECONDS + 0.1, 30.0), defer=True)
    assert due(_snap(AUTO_AFTER_SECONDS + 0.1, None), defer=True)  # length unknown
    assert due(_snap(0.0, None), defer=False)
