"""asyncio: amap/aimap (one-shot and on a Pool) never block the event loop."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

import poolrun
from funcs import fail_on_three, slow_square, square


async def _ticks_during(coro, every: float = 0.01):
    """Run ``coro`` while a task ticks every ``every`` seconds; (its result, tick times)."""
    ticks: list[float] = []

    async def ticker():
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(every)

    task = asyncio.create_task(ticker())
    try:
        result = await coro
    finally:
        task.cancel()
    return result, ticks


def _longest_gap(ticks: list[float]) -> float:
    return max(b - a for a, b in itertools.pairwise(ticks))


def test_loop_keeps_ticking_during_amap():
    # 100 items of 10 ms on 2 workers: about 0.5 s of work plus the workers' start
    run, ticks = asyncio.run(_ticks_during(poolrun.amap(slow_square, range(100), workers=2)))
    assert run.values == [i * i for i in range(100)]
    assert len(ticks) >= 20
    assert _longest_gap(ticks) < 0.25  # the loop was never held for long


def test_aimap_streams_item_results_and_pool_methods():
    async def main():
        seen = [r async for r in poolrun.aimap(fail_on_three, range(6), workers=2)]
        with poolrun.Pool(workers=2) as pool:
            run = await pool.amap(square, range(20))
            streamed = [r.value async for r in pool.aimap(square, range(20), ordered=True)]
        return seen, run, streamed

    seen, run, streamed = asyncio.run(main())
    assert [r.index for r in seen] == list(range(6))
    assert [r.ok for r in seen] == [True, True, True, False, True, True]
    assert seen[3].error.type == "ValueError"
    assert run.values == streamed == [i * i for i in range(20)]


def test_leaving_aimap_early_cancels_the_call():
    async def main():
        with poolrun.Pool(workers=1) as pool:
            async for r in pool.aimap(slow_square, range(10_000)):
                if r.index == 5:
                    break
            return await pool.amap(square, [3])  # the pool is free again

    started = time.monotonic()
    assert asyncio.run(main()).values == [9]
    assert time.monotonic() - started < 30  # not 100 s of slow_square


def test_amap_bad_option_and_closed_pool_fail_clearly():
    with pytest.raises(TypeError, match="unknown option"):
        poolrun.aimap(square, [1], colour="red")
    pool = poolrun.Pool(workers=1)
    pool.close()
    with pytest.raises(ValueError, match="closed"):
        asyncio.run(pool.amap(square, [1]))
