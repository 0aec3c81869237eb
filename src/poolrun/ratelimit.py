"""``rate="N/s"``: a cap on how many items start per second, across all of a call's workers.

Functions that call an outside service (enrich a record through an API, say) must respect
that service's limit, whatever the number of workers. A :class:`TokenBucket` in the
supervisor holds the call's starts back: every item sent to a worker takes a token, tokens
come back at ``rate`` per second, and the bucket holds at most a tenth of a second's worth
(at least one). A batch is never larger than the tokens available when it is sent, so in
any one-second window at most ``rate`` items plus one bucketful start. The supervisor's
loop does not sleep for tokens: the time the next one arrives is one more deadline it
wakes for (see ``Deadlines.wait_seconds``).

A plain object with no clock of its own (callers pass ``now``), so it is tested with
made-up times.
"""

from __future__ import annotations

import math

_RATE_PATTERN = r"(?i)^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute)\s*$"
_PER = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0}
BURST_SECONDS = 0.1


def parse_rate(value: float | int | str | None) -> float | None:
    """Items per second from ``"50/s"``, ``"300/min"`` or a number (per second)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("rate must be like '50/s' or '300/min', or items per second, not a bool")
    if isinstance(value, int | float):
        per_second = float(value)
    elif isinstance(value, str):
        import re  # only a rate given as text needs it (it costs the first call ~3 ms)

        match = re.match(_RATE_PATTERN, value)
        if not match:
            raise ValueError(
                f"rate={value!r} is not a rate: use items per time, e.g. '50/s' or '300/min'"
            )
        per_second = float(match.group(1)) / _PER[match.group(2).lower()]
    else:
        raise TypeError(f"rate must be like '50/s' or '300/min', not {value!r}")
    if not per_second > 0 or math.isinf(per_second):
        raise ValueError(f"rate must be a positive, finite number of items per time, got {value!r}")
    return per_second


def describe_rate(per_second: float) -> str:
    """``50/s``, or ``30/min`` below one a second (what the report shows)."""
    if per_second < 1:
        return f"{per_second * 60:g}/min"
    return f"{per_second:g}/s"


class TokenBucket:
    """Tokens for item starts: ``rate`` a second, at most ``capacity`` saved up."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(1, math.floor(rate * BURST_SECONDS))
        self.tokens = float(self.capacity)
        self.updated = now
        self.taken = 0
        self.first: tuple[float, int] | None = None  # (time, items) of the first take
        self.last = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def available(self, now: float) -> int:
        """Whole tokens there are now: the most items a batch sent now may hold."""
        self._refill(now)
        return int(self.tokens + 1e-9)

    def take(self, n: int, now: float) -> None:
        self._refill(now)
        self.tokens -= n
        self.taken += n
        if self.first is None:
            self.first = (now, n)
        self.last = now

    def ready_at(self, n: int, now: float) -> float:
        """When ``n`` tokens (at most a bucketful) will be there."""
        self._refill(now)
        missing = min(n, self.capacity) - self.tokens
        return now if missing <= 0 else now + missing / self.rate

    def held(self) -> float | None:
        """The rate items actually started at, after the first batch (which the saved-up
        bucket let through at once): what the report shows beside the limit."""
        if self.first is None or self.last <= self.first[0]:
            return None
        return (self.taken - self.first[1]) / (self.last - self.first[0])
