"""The live view: drawn on a real pseudo-terminal, and its pieces on their own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from poolrun.live import sparkline
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


def test_off_a_terminal_progress_stays_plain():
    done = subprocess.run(_script("live", 50), capture_output=True, timeout=60)
    assert done.returncode == 0
    assert b"\x1b[" not in done.stderr and b"worker" not in done.stderr
    assert b"values 50" in done.stdout


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
