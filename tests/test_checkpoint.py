"""The resume watermark and checkpoint file as plain objects: no processes, a fake clock."""

from __future__ import annotations

import random
import zlib

import pytest

from poolrun.checkpoint import (
    EMPTY_HASH,
    VERSION,
    Checkpoint,
    Mark,
    ResumeRefused,
    Watermark,
    check_prefix,
    check_resumable,
    crc32_combine,
    new_hash,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def base() -> Mark:
    return Mark(spec="m:f", errors="/out/e.jsonl", input_size=30)


def test_mark_round_trips_through_json() -> None:
    mark = Mark("m:f", "/e", 10, offset=7, line=2, output_size=5, errors_size=3, failed=1)
    assert Mark.from_json(mark.to_json()) == mark


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"spec": "m:f"}',
        base().to_json().replace(b"%d\n}" % VERSION, b"9\n}"),
    ],
)
def test_mark_rejects_what_it_did_not_write(data: bytes) -> None:
    with pytest.raises(ValueError):
        Mark.from_json(data)


def test_watermark_hashes_the_handled_prefix_and_snapshots_it() -> None:
    lines = [b'{"a": 1}\n', b"\n", b'{"a": 2}\n']
    mark = base()
    watermark = Watermark(mark, new_hash())
    watermark.advance(lines[:1])  # a batch of one line, then a batch of two
    watermark.advance(lines[1:])
    snap = watermark.snapshot(mark, (30, 3), failed=1, complete=True)
    assert (snap.line, snap.offset) == (3, sum(map(len, lines)))
    assert (snap.output_size, snap.errors_size) == (30, 3)
    assert snap.prefix_hash == f"{zlib.crc32(b''.join(lines)):08x}"
    assert (snap.failed, snap.complete, snap.spec) == (1, True, "m:f")


def test_a_resumed_watermark_goes_on_from_its_mark() -> None:
    first, second = b'{"a": 1}\n', b'{"a": 2}\n'
    hasher = new_hash()
    hasher.update(first)  # what --resume hashed while skipping the handled prefix
    mark = Mark("m:f", "/e", 18, offset=len(first), line=1, prefix_hash=hasher.hexdigest())
    watermark = Watermark(mark, hasher)
    watermark.advance([second])
    snap = watermark.snapshot(mark, (0, 0), failed=0, complete=False)
    assert (snap.line, snap.offset) == (2, len(first + second))
    assert snap.prefix_hash == f"{zlib.crc32(first + second):08x}"


@pytest.mark.parametrize("seed", range(5))
def test_crc32_combine_joins_checksums_of_pieces(seed) -> None:
    rng = random.Random(seed)
    a, b = rng.randbytes(rng.randint(0, 300)), rng.randbytes(rng.choice([0, 1, 7, 4096, 70_001]))
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_ranges_checksummed_apart_give_the_prefix_checksum_whatever_the_cuts() -> None:
    data = random.Random(1).randbytes(10_000)
    for cuts in ([3_000, 7_000], [1, 2, 9_999], [5_000]):
        mark = base()
        watermark = Watermark(mark, new_hash())
        for lo, hi in zip([0, *cuts], [*cuts, len(data)], strict=True):
            watermark.advance_range(hi - lo, 1, zlib.crc32(data[lo:hi]))
        snap = watermark.snapshot(mark, (0, 0), failed=0, complete=False)
        assert (snap.offset, snap.line) == (len(data), len(cuts) + 1)
        resumed = new_hash()
        resumed.update(data)  # what --resume computes while skipping the prefix
        assert snap.prefix_hash == resumed.hexdigest()


def test_a_fresh_watermark_is_the_empty_prefix() -> None:
    snap = Watermark(base(), new_hash()).snapshot(base(), (0, 0), failed=0, complete=False)
    assert (snap.offset, snap.line, snap.prefix_hash) == (0, 0, EMPTY_HASH)


def test_checkpoint_is_due_on_its_clock() -> None:
    clock = FakeClock()
    checkpoint = Checkpoint("unused", every=0.5, clock=clock)
    assert not checkpoint.due(clock.now + 0.49)
    assert checkpoint.due(clock.now + 0.5)


def test_save_replaces_atomically_and_restarts_the_clock(tmp_path) -> None:
    clock = FakeClock()
    checkpoint = Checkpoint(tmp_path / "c.json", every=1.0, clock=clock)
    checkpoint.save(base())
    second = Mark("m:f", "/out/e.jsonl", 30, offset=12, line=1)
    clock.now += 5
    checkpoint.save(second)
    assert checkpoint.load() == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]  # no temporary left
    assert not checkpoint.due(clock.now + 0.9)


def test_load_refuses_a_missing_or_foreign_checkpoint(tmp_path) -> None:
    with pytest.raises(ResumeRefused, match=r"no checkpoint at .*run without --resume"):
        Checkpoint(tmp_path / "none.json").load()
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ResumeRefused, match="not a checkpoint"):
        Checkpoint(tmp_path / "bad.json").load()


def test_resume_is_allowed_when_nothing_changed_and_outputs_grew() -> None:
    mark = Mark("m:f", "/e", 30, output_size=10, errors_size=0)
    check_resumable(mark, "m:f", "/e", 30, (25, 7))  # lines written after the last save


@pytest.mark.parametrize(
    ("spec", "errors", "size", "sizes", "reason"),
    [
        ("m:g", "/e", 30, (10, 0), "SPEC"),
        ("m:f", "/other", 30, (10, 0), "errors"),
        ("m:f", "/e", 31, (10, 0), "input changed"),
        ("m:f", "/e", 30, (9, 0), "output file is shorter"),
        ("m:f", "/e", 30, (10, 0), None),
    ],
)
def test_resume_is_refused_when_the_run_would_differ(spec, errors, size, sizes, reason) -> None:
    mark = Mark("m:f", "/e", 30, output_size=10)
    if reason is None:
        check_resumable(mark, spec, errors, size, sizes)
        return
    with pytest.raises(ResumeRefused, match=reason):
        check_resumable(mark, spec, errors, size, sizes)


def test_prefix_must_hash_the_same() -> None:
    mark = Mark("m:f", "/e", 30, offset=3, prefix_hash=f"{zlib.crc32(b'abc'):08x}")
    check_prefix(mark, f"{zlib.crc32(b'abc'):08x}")
    with pytest.raises(ResumeRefused, match="first 3 bytes differ"):
        check_prefix(mark, f"{zlib.crc32(b'abd'):08x}")
