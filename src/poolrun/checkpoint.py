"""The resume checkpoint: how far the outputs of ``poolrun run`` are known to be complete.

A :class:`Watermark` follows the run in the supervisor. Results are written in input order,
so after each input line is handled (its output or errors line written) one watermark says
everything: how many lines and bytes of the input are handled, and a checksum of those bytes;
with the sizes the output and errors files have at that moment, that is a checkpoint. Every
line before the watermark is in the outputs; none after it is.

The checksum is a CRC-32 of the handled prefix, because CRCs combine: each worker checksums
the byte range it read, and the supervisor chains the range checksums in input order
(:func:`crc32_combine`, a few dozen integer operations per range), so the checkpoint costs
the supervisor nothing per byte. On ``--resume`` the supervisor checksums the prefix once;
the result is the same whatever ranges the interrupted run cut. Together with the input's
size this catches an edited or replaced input; it is an identity check, not security.

A :class:`Checkpoint` stores snapshots of it (a :class:`Mark`). The outputs are flushed and
fsynced *before* the snapshot naming their sizes is written, and the snapshot replaces the
previous one atomically (temporary file, fsync, ``os.replace``, fsync of the folder). So after
any interruption, ``kill -9`` included, the outputs hold at least what the last snapshot says
(perhaps more, perhaps a torn last line); ``--resume`` truncates them to the recorded sizes
and reads on from the recorded input offset, which yields exactly what an uninterrupted run
writes.

Everything here is a plain object with no processes inside; the clock is injectable.
"""

from __future__ import annotations

import contextlib
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import orjson

VERSION = 2  # 1 hashed the prefix with sha1
SAVE_EVERY_SECONDS = 0.5
_CRC_POLY = 0xEDB88320  # zlib's CRC-32, reflected


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC polynomial (zlib's ``multmodp``)."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1


def _x2n_table() -> list[int]:
    table, p = [], 1 << 30  # x^1
    for _ in range(32):
        table.append(p)
        p = _multmodp(p, p)
    return table


_X2N = _x2n_table()  # x^(2^k) modulo the polynomial


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of A + B from crc32(A), crc32(B) and len(B) (zlib's ``crc32_combine``)."""
    p, k, n = 1 << 31, 3, len2  # x^(8 * len2): one byte is eight shifts
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return _multmodp(p, crc1) ^ crc2


class Crc32:
    """A running CRC-32 with the ``update``/``hexdigest`` face of a hashlib object."""

    __slots__ = ("value",)

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def update(self, data: bytes) -> None:
        self.value = zlib.crc32(data, self.value)

    def extend(self, crc: int, length: int) -> None:
        """Append ``length`` bytes known only by their CRC (a range a worker checksummed)."""
        self.value = crc32_combine(self.value, crc, length)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


def new_hash() -> Crc32:
    return Crc32()


EMPTY_HASH = new_hash().hexdigest()


class ResumeRefused(Exception):
    """``--resume`` cannot continue safely; the message is one line saying why."""


@dataclass(frozen=True)
class Mark:
    """One snapshot of the watermark, plus what must not change between the two runs.

    The input is identified by its size and the checksum of the consumed prefix, not by its
    mtime: a ``touch`` or a copy changes the mtime, not the bytes that decide the output.
    ``complete`` tells people and scripts that the run reached the end of its input
    (resuming a complete run changes nothing).
    """

    spec: str
    errors: str
    input_size: int | None
    offset: int = 0
    line: int = 0
    prefix_hash: str = EMPTY_HASH
    output_size: int = 0
    errors_size: int = 0
    failed: int = 0
    complete: bool = False
    version: int = VERSION

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)

    @classmethod
    def from_json(cls, data: bytes) -> Mark:
        """Parse a checkpoint; raises ``ValueError`` when it is not one this version wrote."""
        try:
            raw = orjson.loads(data)
            names = {f.name for f in fields(cls)}
            if not isinstance(raw, dict) or set(raw) != names or raw["version"] != VERSION:
                raise ValueError
            return cls(**raw)
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise ValueError(str(exc)) from None


class Watermark:
    """The input handled so far: advanced a batch of lines or a range at a time, in order."""

    __slots__ = ("hash", "line", "offset")

    def __init__(self, mark: Mark, prefix_hash: Crc32) -> None:
        self.line = mark.line
        self.offset = mark.offset
        self.hash = prefix_hash

    def advance(self, raws: list[bytes]) -> None:
        """The next input lines, whose bytes are ``raws``, are fully handled."""
        chunk = b"".join(raws)
        self.line += len(raws)
        self.offset += len(chunk)
        self.hash.update(chunk)

    def advance_range(self, length: int, lines: int, crc: int) -> None:
        """The next ``length`` bytes (``lines`` lines, CRC-32 ``crc``) are fully handled."""
        self.line += lines
        self.offset += length
        self.hash.extend(crc, length)

    def snapshot(self, base: Mark, sizes: tuple[int, int], failed: int, complete: bool) -> Mark:
        """A checkpoint: the watermark with the output and errors ``sizes`` it goes with."""
        return replace(
            base,
            offset=self.offset,
            line=self.line,
            prefix_hash=self.hash.hexdigest(),
            output_size=sizes[0],
            errors_size=sizes[1],
            failed=failed,
            complete=complete,
        )


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable; some filesystems cannot fsync a folder, which is fine."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Checkpoint:
    """The checkpoint file: when to save, atomic saves, and loading for ``--resume``."""

    def __init__(
        self,
        path: str | Path,
        every: float = SAVE_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.every = every
        self.clock = clock
        self.last_saved = clock()

    def due(self, now: float) -> bool:
        """Saving costs a few fsyncs, so it happens on a clock, not per line: after a crash
        at most ``every`` seconds of work is done again."""
        return now - self.last_saved >= self.every

    def save(self, mark: Mark) -> None:
        """Replace the checkpoint atomically; the outputs must already be synced."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(mark.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        self.last_saved = self.clock()

    def load(self) -> Mark:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise ResumeRefused(
                f"no checkpoint at {str(self.path)!r}: nothing to resume (run without --resume)"
            ) from None
        try:
            return Mark.from_json(data)
        except ValueError:
            raise ResumeRefused(
                f"{str(self.path)!r} is not a checkpoint this poolrun can read; "
                "run without --resume"
            ) from None


def check_resumable(
    mark: Mark, spec: str, errors: str, input_size: int | None, sizes: tuple[int, int]
) -> None:
    """Refuse to resume when the run would not continue the one that wrote ``mark``.

    ``sizes`` are the output and errors files' sizes now; they may exceed the mark (lines
    written after the last save) but never fall short of it.
    """
    if mark.spec != spec:
        raise ResumeRefused(f"the checkpoint is for SPEC {mark.spec!r}, not {spec!r}")
    if mark.errors != errors:
        raise ResumeRefused(f"the checkpoint wrote errors to {mark.errors!r}, not {errors!r}")
    if mark.input_size != input_size:
        raise ResumeRefused(
            f"the input changed since the checkpoint (size {mark.input_size} -> {input_size} "
            "bytes); run without --resume"
        )
    for name, now, want in zip(
        ("output", "errors"), sizes, (mark.output_size, mark.errors_size), strict=True
    ):
        if now < want:
            raise ResumeRefused(
                f"the {name} file is shorter than the checkpoint says ({now} < {want} bytes): "
                "it was changed; run without --resume"
            )


def check_prefix(mark: Mark, digest: str) -> None:
    """The consumed prefix of the input must hash as it did when the checkpoint was written."""
    if digest != mark.prefix_hash:
        raise ResumeRefused(
            f"the input changed since the checkpoint (its first {mark.offset} bytes differ); "
            "run without --resume"
        )
