"""The fault policy as a plain object: which item is blamed, on how much evidence, and how a
dead worker's batch runs again. No processes: counts in, decisions out."""

from __future__ import annotations

import pytest

from poolrun.faults import (
    ALONE,
    DEATHS_BEFORE_BLAME,
    EXTERNAL_DEATHS_BEFORE_BLAME,
    FAIL,
    RETRY,
    FaultPolicy,
)


@pytest.mark.parametrize(
    ("cause", "needed"),
    [
        ("worker-died: SIGSEGV", DEATHS_BEFORE_BLAME),
        ("worker-died: exit 3", DEATHS_BEFORE_BLAME),
        ("memory-limit", DEATHS_BEFORE_BLAME),
        ("worker-died: SIGKILL", EXTERNAL_DEATHS_BEFORE_BLAME),
        ("worker-died: SIGTERM", EXTERNAL_DEATHS_BEFORE_BLAME),
    ],
)
def test_an_item_fails_only_alone_and_on_enough_evidence(cause, needed):
    policy = FaultPolicy(retries=0)
    verdicts = [policy.judge(cause, attempts=d, deaths=d, alone=True) for d in range(1, needed + 1)]
    assert verdicts == [ALONE] * (needed - 1) + [FAIL]
    # in a batch with others it is never failed: it runs again alone first
    assert policy.judge(cause, attempts=9, deaths=9, alone=False) == ALONE


def test_retries_raise_the_evidence_needed():
    assert FaultPolicy(retries=2).deaths_needed("worker-died: SIGSEGV") == DEATHS_BEFORE_BLAME + 2
    assert FaultPolicy(retries=2).judge("worker-died: SIGSEGV", 3, 3, True) == ALONE


def test_a_timeout_is_retried_then_failed_at_once():
    policy = FaultPolicy(retries=1)
    assert policy.judge("timeout", attempts=1, deaths=0, alone=False) == RETRY
    assert policy.judge("timeout", attempts=2, deaths=0, alone=False) == FAIL
    assert FaultPolicy(retries=0).judge("timeout", attempts=1, deaths=0, alone=False) == FAIL


def test_a_batch_splits_around_its_culprit():
    assert FaultPolicy.around(10, 0) == [(1, 10)]
    assert FaultPolicy.around(10, 4) == [(0, 4), (5, 10)]
    assert FaultPolicy.around(10, 9) == [(0, 9)]
    assert FaultPolicy.around(1, 0) == []


def test_a_batch_whose_worker_died_between_items_is_resent_then_halved():
    assert FaultPolicy.between_items(1, 10) == [(0, 10)]
    assert FaultPolicy.between_items(DEATHS_BEFORE_BLAME, 10) == [(0, 5), (5, 10)]
    assert FaultPolicy.between_items(DEATHS_BEFORE_BLAME, 1) is None  # judge the lone item


def test_a_kill_meant_for_one_item_does_not_blame_the_next():
    confirmed = FaultPolicy.confirmed_cause
    assert confirmed("timeout", (3, 1), (3, 1)) == "timeout"
    assert confirmed("timeout", (3, 1), (3, 2)) == "worker-died: SIGKILL"
    assert confirmed("memory-limit", None, (3, 2)) == "memory-limit"
    assert confirmed("worker-died: SIGSEGV", (3, 1), (3, 2)) == "worker-died: SIGSEGV"
