"""The report's latency histogram, as a plain object."""

from __future__ import annotations

import random
from array import array

import pytest

from poolrun.items import Uniform
from poolrun.report import LatencyHistogram


def test_percentiles_within_the_bin_width():
    rng = random.Random(3)
    values = [rng.lognormvariate(-9, 1.5) for _ in range(20_000)]
    hist = LatencyHistogram()
    hist.add(array("d", values[:7000]))
    hist.add(values[7000:])
    ordered = sorted(values)
    for q in (50, 95, 99):
        exact = ordered[int(q / 100 * len(ordered)) - 1]
        assert hist.percentile(q) == pytest.approx(exact, rel=0.05)
    assert hist.n == 20_000 and hist.total == pytest.approx(sum(values))


def test_batches_land_in_the_bins_one_duration_at_a_time_would():
    """The histogram bins a batch by sorting it; each duration must still land in the bin
    of its own log10, extremes included (0 s, sub-floor, days)."""
    from poolrun.stats import _bin

    rng = random.Random(11)
    for trial in range(40):
        centre = 3e-7 * 10 ** rng.uniform(-2, 6)
        n = rng.randint(1, 3000)
        durations = array(
            "d", (rng.lognormvariate(0, rng.uniform(0.01, 3)) * centre for _ in range(n))
        )
        if trial % 5 == 0:
            durations.extend([0.0, 1e-12, 9e5, 5e-6, 5e-6])
        hist = LatencyHistogram()
        hist.add(durations)
        wanted = [0] * len(hist.counts)
        for seconds in durations:
            wanted[_bin(seconds)] += 1
        assert hist.counts == wanted


def test_uniform_durations_count_as_n_equal_items():
    compact, spelled = LatencyHistogram(), LatencyHistogram()
    compact.add(Uniform(3e-7, 5000))
    spelled.add(array("d", [3e-7]) * 5000)
    assert compact.n == spelled.n == 5000
    assert compact.total == pytest.approx(spelled.total)
    assert compact.counts == spelled.counts
    durations = Uniform(0.5, 3)
    assert len(durations) == 3 and durations[2] == 0.5 and durations[-3] == 0.5
    assert list(durations) == [0.5] * 3 and durations[1:] == [0.5, 0.5]
    with pytest.raises(IndexError):
        durations[3]


def test_empty_histogram_has_no_percentiles():
    assert LatencyHistogram().percentile(50) is None
