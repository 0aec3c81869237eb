"""The private-memory gauge a worker reads around each batch (``poolrun.memory``)."""

from __future__ import annotations

import mmap
import types

import pytest

from poolrun import memory

pytestmark = pytest.mark.skipif(
    not memory.os.path.exists("/proc/self/smaps_rollup"), reason="reads /proc (Linux)"
)
MB = 1 << 20


def resident_block(size: int) -> mmap.mmap:
    """``size`` bytes newly in RSS: an anonymous mapping, every page written.

    Not a Python object from malloc: after earlier tests (or ``tuning``'s mallopt in this
    process) malloc may serve a block from freed heap pages already counted in RSS."""
    block = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        block[offset] = 1
    return block


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def full_readings(monkeypatch):
    """Counts the gauge's full (page-table walking) readings; the clock is ours to move."""
    calls = []
    real = memory._proc_uss_rss

    def counted(pid):
        calls.append(pid)
        return real(pid)

    clock = FakeClock()
    monkeypatch.setattr(memory, "_proc_uss_rss", counted)
    monkeypatch.setattr(memory, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    return calls, clock


def test_a_gauge_reads_in_full_first_then_adds_what_rss_grew_by(full_readings):
    calls, _ = full_readings
    gauge = memory.PrivateMemory()
    before = gauge.read()
    assert len(calls) == 1 and before > 0
    block = resident_block(32 * MB)
    after = gauge.read()
    assert len(calls) == 1  # within RECALIBRATE_SECONDS: the cheap reading
    assert after - before >= 30 * MB
    assert gauge.peak == after
    block.close()
    gauge.close()


def test_a_just_forked_gauge_waits_before_its_first_full_reading(full_readings):
    calls, clock = full_readings
    gauge = memory.PrivateMemory(just_forked=True)
    assert gauge.read() < 8 * MB and calls == []  # nothing of its own yet, and no walk
    block = resident_block(32 * MB)
    assert gauge.read() >= 30 * MB and calls == []  # what it allocates counts at once
    clock.now += memory.RECALIBRATE_SECONDS
    gauge.read()
    assert len(calls) == 1  # the first full reading, RECALIBRATE_SECONDS in
    block.close()
    gauge.close()


def test_a_run_with_max_rss_makes_the_next_reading_a_full_one(full_readings):
    calls, _ = full_readings
    gauge = memory.PrivateMemory(just_forked=True)
    gauge.stop_deferring()
    gauge.read()
    assert len(calls) == 1
    gauge.read()
    assert len(calls) == 1  # and then the usual spacing
    gauge.stop_deferring()  # a second max_rss call on the same worker: nothing to bring on
    gauge.read()
    assert len(calls) == 1
    gauge.close()
