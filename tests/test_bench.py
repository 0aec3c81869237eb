"""The batch-size sweep behind `poolrun bench`."""

from __future__ import annotations

import json

import pytest

from funcs import fail_on_three, square
from poolrun import bench


def test_sweep_measures_every_setting_and_recommends_one(tmp_path):
    rows = bench.sweep(square, list(range(3000)), [1, 64, "auto"], [1, 2], repeat=1)
    assert [(r.workers, r.batch_size) for r in rows] == [
        (1, "1"),
        (1, "64"),
        (1, "auto"),
        (2, "1"),
        (2, "64"),
        (2, "auto"),
    ]
    assert all(r.items == 3000 and r.items_per_s > 0 and r.failed == 0 for r in rows)
    assert all(r.speedup == 1.0 for r in rows if r.workers == 1)
    assert all(r.peak_rss_mb > 0 for r in rows)
    best = bench.recommend(rows)
    assert best in rows
    table = bench.render(rows, best)
    assert "recommended: --workers" in table and "<- recommended" in table
    bench.save(rows, best, tmp_path / "b.json")
    doc = json.loads((tmp_path / "b.json").read_text())
    assert len(doc["rows"]) == 6 and doc["recommended"]["workers"] == best.workers


def test_recommend_prefers_settings_without_failures():
    rows = bench.sweep(fail_on_three, list(range(50)), [8], [1], repeat=1)
    assert rows[0].failed == 1
    assert bench.recommend(rows) is rows[0]


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    rows = bench.sweep(square, list(range(500)), [1, 16], [1], repeat=1)
    bench.plot(rows, tmp_path / "b.png")
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("text", "match"), [("1,x", "'x' is not 'auto'"), ("", "at least one"), ("0", "'0'")]
)
def test_bad_sizes_are_named(text, match):
    with pytest.raises(ValueError, match=match):
        bench.parse_sizes(text)


def test_parse_workers():
    assert bench.parse_workers("1,2,4") == [1, 2, 4]
    with pytest.raises(ValueError, match="worker counts"):
        bench.parse_workers("0")
