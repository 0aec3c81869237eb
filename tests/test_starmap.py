"""starmap: functions of several arguments, on one-shot calls, a Pool and a Task."""

from __future__ import annotations

import pytest

import poolrun
from dropin_funcs import add, scale


def test_starmap_calls_fn_with_each_tuple():
    run = poolrun.starmap(add, [(i, 10 * i) for i in range(50)], workers=2)
    assert run.values == [11 * i for i in range(50)]


def test_pool_and_task_starmap():
    with poolrun.Pool(workers=2) as pool:
        assert pool.starmap(scale, [(1, 2), (3, 4)]).values == [2, 12]
        assert pool.starmap(add, iter([("a", "b")]), batch_size=1).values == ["ab"]
    task = poolrun.task(add, workers=1)
    assert task.starmap([(1, 1), (2, 2)]).values == [2, 4]
    assert task(2, 3) == 5


def test_starmap_wrong_arity_fails_that_item_only():
    run = poolrun.starmap(add, [(1, 2), (1,), (3, 4)], workers=1)
    assert [r.ok for r in run] == [True, False, True]
    assert run.errors[0].error.type == "TypeError"
    with pytest.raises(poolrun.ItemsFailed):
        _ = run.values
