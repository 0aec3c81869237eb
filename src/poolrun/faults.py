"""The fault policy: after a worker died, which item is to blame, on how much evidence, and
how the rest of its batch runs again. A plain object: no processes, no clocks.

Why evidence: a worker that dies running an item may have been killed by that item (a
segfault, ``os._exit``, a memory blow-up) or by something outside it (the OOM killer picking
the biggest process, an operator, a chaos test). So the item runs again, alone, and is failed
only when it has killed enough workers: :data:`DEATHS_BEFORE_BLAME` for a death it could have
caused itself, :data:`EXTERNAL_DEATHS_BEFORE_BLAME` for a SIGKILL or SIGTERM, which may come
from outside (with a threshold of 2, a chaos run of 30 random kills failed 1-3 healthy items).
``retries`` adds to both.

A timeout is different: the supervisor killed the worker itself because the item overran,
so there is no doubt about which item it was. It is retried like an exception (with backoff,
up to ``retries`` times) and then fails with ``cause="timeout"``.

How a batch splits: the items before and after the culprit run again as batches of their
own, and the culprit runs alone, so a poison item can never take healthy neighbours down with
it twice. A worker that died between items (loading or sending a batch) has no culprit: the
batch is sent again as it was, and halved if that keeps happening, until one item stands
alone and can be judged.
"""

from __future__ import annotations

DEATHS_BEFORE_BLAME = 2
EXTERNAL_DEATHS_BEFORE_BLAME = 4
EXTERNAL_CAUSES = ("worker-died: SIGKILL", "worker-died: SIGTERM", "worker-died: dask worker lost")

# What happens to the item a worker died running:
RETRY = "retry"  # schedule it again after a backoff (a timeout with retries left)
FAIL = "fail"  # it fails now, with the cause
ALONE = "alone"  # run it again in a batch of its own


class FaultPolicy:
    """Decisions about one item or one batch, from counts the caller keeps per item."""

    def __init__(self, retries: int) -> None:
        self.retries = retries

    def deaths_needed(self, cause: str) -> int:
        base = EXTERNAL_DEATHS_BEFORE_BLAME if cause in EXTERNAL_CAUSES else DEATHS_BEFORE_BLAME
        return base + self.retries

    def judge(self, cause: str, attempts: int, deaths: int, alone: bool) -> str:
        """The verdict on the item that was running when its worker died.

        ``attempts`` counts its runs so far, ``deaths`` the workers it was running in when
        they died, this one included; ``alone`` says whether it ran in a batch of one.
        """
        if cause == "timeout":
            return RETRY if attempts <= self.retries else FAIL
        if alone and deaths >= self.deaths_needed(cause):
            return FAIL
        return ALONE

    @staticmethod
    def around(size: int, culprit: int) -> list[tuple[int, int]]:
        """The ranges of a batch of ``size`` that run again without their culprit."""
        return [(lo, hi) for lo, hi in ((0, culprit), (culprit + 1, size)) if lo < hi]

    @staticmethod
    def between_items(idle_deaths: int, size: int) -> list[tuple[int, int]] | None:
        """A batch whose worker died before or after running it, for the ``idle_deaths``-th
        time: the ranges to send again (the whole batch, then halves), or ``None`` when it
        is down to one item that keeps killing workers and must be judged."""
        if idle_deaths < DEATHS_BEFORE_BLAME:
            return [(0, size)]
        if size == 1:
            return None
        half = size // 2
        return [(0, half), (half, size)]

    @staticmethod
    def confirmed_cause(
        reported: str, target: tuple[int, int] | None, running: tuple[int, int] | None
    ) -> str:
        """A kill for a timeout or the memory limit blames the item seen when the supervisor
        decided to kill (``target``); if another item was running by the time the worker
        died, that one was merely unlucky, and the death counts as an outside SIGKILL."""
        if reported in ("timeout", "memory-limit") and target is not None and target != running:
            return "worker-died: SIGKILL"
        return reported
