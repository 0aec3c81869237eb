"""The adaptive batch sizer: a pure policy object, no processes or clocks inside.

Why batches at all: every message between processes costs tens of microseconds, so items
worth less than that must travel together. Why adaptive: the right size depends on the
function, the data and the machine, and changes as a run goes on.

The policy, fed after each batch with how long its items took and the worker's RSS:

* **time**: aim for batches that run about ``target_seconds``, which makes the per-batch IPC
  cost negligible. The first :data:`WARMUP_BATCHES` measurements set the size straight from
  the fastest time per item seen (a ramp from 1 in 4x steps cost a short run most of its
  batches in round trips, and a fresh worker's first item is slow with one-time costs);
  after that, growth is capped at 4x per step so one fast batch cannot overshoot, and the
  time per item is averaged with each batch weighted by its item count;
* **balance**: when the number of items left is known, never hand one worker more than a
  fair share of what remains, so no worker idles while another finishes a big last batch
  (but never less than a hundredth of the time-based size: fine enough that a few costly
  items left for last spread over the workers, as their round trips are cheap next to the
  wait they save; and for items of a few µs, never less than 2 ms of work, where a round
  trip costs more than the batch; at the tail the supervisor sends batches to idle workers
  only, except batches of such tiny items); while items measure alike, the share counts
  the items every worker holds in flight: an idle worker takes half of what it lacks;
* **memory**: with ``max_rss`` set, keep the memory a batch adds (estimated per item) within
  half of the worker's remaining headroom, and halve the size when a worker's peak nears the
  limit; a worker whose memory stays high between batches is recycled.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .items import TIMED_ITEM_SECONDS

GROWTH_CAP = 4.0
TAIL_FRACTION = 100  # the balance rule never cuts a batch below size // TAIL_FRACTION
# ...nor, for items of a few µs or less, below this much work: there a round trip (and the
# supervisor placing the results) costs more than the batch, and the tail is all round trips
TAIL_MIN_SECONDS = 0.002
UNIFORM_SPREAD = 2.0  # batches' times per item within this ratio: the items look alike
ITEM_SPREAD = 10.0  # ...and no single item longer than this many times the mean
WARMUP_BATCHES = 8  # the first batches set the size straight from the time (no growth cap)
SOFT_RSS_FRACTION = 0.75  # batches are sized to keep a worker's peak RSS below this share
RECYCLE_PEAK_FRACTION = 0.9  # a worker that peaked above this share is replaced


class BatchSizer:
    """Decides how many items the next batch carries.

    ``fixed`` pins the size (``batch_size=<int>``); otherwise the size starts at 1 and follows
    the measurements.
    """

    def __init__(
        self,
        *,
        workers: int,
        fixed: int | None = None,
        target_seconds: float = 0.02,
        max_size: int = 65536,
        max_rss: int | None = None,
        initial: int = 1,
    ) -> None:
        self.workers = workers
        self.fixed = fixed
        self.target_seconds = target_seconds
        self.max_size = max(1, fixed or max_size)
        self.max_rss = max_rss
        self.size = fixed or max(1, min(initial, self.max_size))
        self.per_item_seconds: float | None = None
        self.per_item_bytes = 0.0
        self.last_rss = 0
        self.last_n = 0
        self.observed = 0  # batches seen
        self._fastest, self._slowest = math.inf, 0.0  # time per item, by batch
        self._slowest_item = 0.0
        # Why the size is what it is, for the live view; set where each rule decides, from
        # strings made once here so that deciding costs one store and no formatting.
        self._why = {
            "fixed": f"fixed: batch_size={fixed}",
            "start": "start: 1 item, then measure",
            "time": f"time: aiming at {target_seconds * 1e3:g} ms a batch",
            "first": "time: sized from the first measured item",
            "growth": f"growth: at most {GROWTH_CAP:g}x a step",
            "largest": f"largest: max_batch_size={self.max_size}",
            "memory": "memory: within half the RSS headroom",
            "near-limit": "memory: peak near max_rss, halved",
            "balance": "balance: a fair share of the items left",
        }
        self.reason = self._why["fixed" if fixed else "start"]

    def next_size(
        self, remaining: int | None = None, in_flight: Callable[[], tuple[int, int]] | None = None
    ) -> int:
        """Size for the next batch; ``remaining`` is the count of items not yet dispatched,
        and ``in_flight()`` gives (items in flight on the worker this batch goes to, items
        in flight on all workers), asked only when the balance rule cuts the batch."""
        size = self.size
        if remaining is not None:
            size = min(size, remaining)
            if self.fixed is None:
                # not below a hundredth of the time-based size: a tail of ever smaller
                # batches costs a round trip each (a tenth left the last cluster of heavy
                # items of a skewed run in one batch, running alone for a fifth of the run)
                floor = max(1, self.size // TAIL_FRACTION, self._tiny_items_in(TAIL_MIN_SECONDS))
                fair_share = max(math.ceil(remaining / (2 * self.workers)), floor)
                if fair_share < size and in_flight is not None and self.items_look_alike:
                    fair_share = max(self._share_with(remaining, *in_flight()), floor)
                if fair_share < size:
                    size = fair_share
                    self.reason = self._why["balance"]
        return max(1, size)

    def _share_with(self, remaining: int, own: int, everywhere: int) -> int:
        """Half of what this worker still lacks to finish with the others: each worker's
        part of the work left is ``(remaining + everywhere) / workers`` items, of which it
        holds ``own`` already. Without the items in flight, an idle worker at the tail took
        a quarter of what was left each time while another still held two long batches:
        20 round trips in a row, where half of them do (2,000 matmuls: 34 -> 22 batches,
        2.5 % faster). Counting items as equal is only right when they are: with 1 % of
        items 100x dearer in clusters, the fewer, larger batches were 2.3 % slower, so the
        rule holds only while :attr:`items_look_alike`."""
        lacks = (remaining + everywhere) / self.workers - own
        return math.ceil(lacks / 2)

    def observe(
        self,
        n: int,
        busy_seconds: float,
        rss_start: int = 0,
        rss_peak: int = 0,
        slowest_item: float = 0.0,
    ) -> None:
        """Learn from a finished batch of ``n`` items that ran ``busy_seconds`` in the worker
        (``slowest_item``: its longest item, when its items were timed one by one)."""
        if n <= 0:
            return
        warming = self._learn_time(n, max(busy_seconds, 0.0) / n, slowest_item)
        if self.fixed is not None:  # the time per item is still known (the dispatcher uses it)
            return
        wanted = self._first_size() if warming else self._time_size(n)
        if self.max_rss:
            by_memory = self._memory_size(n, rss_start, rss_peak)
            if by_memory < wanted:
                wanted = by_memory
                near = rss_peak >= SOFT_RSS_FRACTION * self.max_rss
                self.reason = self._why["near-limit" if near else "memory"]
        if wanted > self.max_size:
            wanted = self.max_size
            self.reason = self._why["largest"]
        self.size = max(1, wanted)

    @property
    def items_look_alike(self) -> bool:
        """Have batches (the first ones aside: a fresh worker's first items pay one-time
        costs) measured times per item within :data:`UNIFORM_SPREAD` of each other, and no
        item taken more than :data:`ITEM_SPREAD` times the mean? (A batch's mean hides a few
        dear items among hundreds of cheap ones; one item's time, a preempted one included,
        is noisier, hence the wider bound.)"""
        alike = self._fastest <= self._slowest <= UNIFORM_SPREAD * self._fastest
        per_item = self.per_item_seconds
        return alike and per_item is not None and self._slowest_item <= ITEM_SPREAD * per_item

    @property
    def items_are_tiny(self) -> bool:
        """Are items measured so short that a worker times them in bulk, not one by one?"""
        per_item = self.per_item_seconds
        return per_item is not None and per_item <= TIMED_ITEM_SECONDS

    def _tiny_items_in(self, seconds: float) -> int:
        """How many items fill ``seconds``, if items are tiny (else 0: no floor by time)."""
        if not self.items_are_tiny or not self.per_item_seconds:
            return 0
        return int(seconds / self.per_item_seconds)

    def _learn_time(self, n: int, per_item: float, slowest_item: float) -> bool:
        """Update the time per item; True while still warming up."""
        self.observed += 1
        if self.observed > 2 * self.workers:  # past the first batches of every worker
            self._fastest = min(self._fastest, per_item)
            self._slowest = max(self._slowest, per_item)
            self._slowest_item = max(self._slowest_item, slowest_item)
        warming = self.observed <= WARMUP_BATCHES
        if self.per_item_seconds is None or (warming and per_item < self.per_item_seconds):
            # a fresh worker's first items pay one-time costs (imports, caches, page
            # faults): while warming up, the fastest time seen is the one to size by
            self.per_item_seconds = per_item
        elif not warming:
            weight = max(0.5, n / (n + self.last_n))
            self.per_item_seconds += weight * (per_item - self.per_item_seconds)
        self.last_n = n
        return warming

    def must_recycle(self, rss_start: int, rss_peak: int) -> bool:
        """True when a worker's memory says it should be replaced before its next batch."""
        if not self.max_rss:
            return False
        return (
            rss_peak >= RECYCLE_PEAK_FRACTION * self.max_rss
            or rss_start >= SOFT_RSS_FRACTION * self.max_rss
        )

    def _first_size(self) -> int:
        self.reason = self._why["first"]
        if not self.per_item_seconds or self.per_item_seconds < 1e-12:
            return self.max_size
        return max(1, min(self.max_size, round(self.target_seconds / self.per_item_seconds)))

    def _time_size(self, n: int) -> int:
        grown = max(1, int(max(self.size, n) * GROWTH_CAP))
        if not self.per_item_seconds or self.per_item_seconds < 1e-12:
            self.reason = self._why["growth"]
            return grown
        by_time = max(1, int(self.target_seconds / self.per_item_seconds))
        self.reason = self._why["growth" if grown < by_time else "time"]
        return min(grown, by_time)

    def _memory_size(self, n: int, rss_start: int, rss_peak: int) -> int:
        assert self.max_rss
        self.last_rss = max(rss_start, rss_peak)
        if rss_start and rss_peak:
            added = max(0, rss_peak - rss_start) / n
            self.per_item_bytes = max(added, 0.5 * self.per_item_bytes)
        soft = SOFT_RSS_FRACTION * self.max_rss
        if rss_peak >= soft:
            return max(1, self.size // 2)
        if self.per_item_bytes <= 0:
            return self.max_size
        headroom = soft - max(rss_start, 0)
        return max(1, int(headroom / (2 * self.per_item_bytes)))
