"""unread_results: a stray sighting of a fire-and-forget caller is not a caller that waits.

Celery's Redis backend subscribes to a result's channel when the task is sent and
unsubscribes when the caller drops the AsyncResult, so a caller that never reads holds the
channel for a few milliseconds, and a snapshot of the subscriptions can fall there. One
such sighting used to mark the task's callers as waiting for ``window_seconds`` and hide
every unread result of it (seen on real workers, about one run in four on a slow VM).
Callers now count as waiting unless their sightings are far fewer than waiting callers
would have shown. The rule's judgement is fed directly here (no Redis needed); the real
workers are in ``test_unread_results_pubsub``.
"""

from __future__ import annotations

import math

import pytest

from flower_practices.config import Settings
from flower_practices.engine import Engine
from flower_practices.rules.unread_results import UnreadResults, too_few_sightings

NOW = 5000.0
#: snapshots every 0.5 s over the last 20 s (complete ones)
SNAPSHOTS = [NOW - 20.0 + 0.5 * i for i in range(40)]
URL = "redis://h/0"


def rule_under_test() -> UnreadResults:
    # grace 0: a verdict is final at its first check (no second look: judged directly)
    engine = Engine(Settings(practices={"unread_results": {"min_samples": 5,
                                                           "grace_seconds": 0.0}}),
                    broker_url=URL, result_backend=URL)
    rule = next(r for r in engine.rules if isinstance(r, UnreadResults))
    rule.snapshot_times = list(SNAPSHOTS)
    return rule


def judge(rule: UnreadResults, task: str, n: int, *, pending: float, skew: float = 0.0,
          seen: int = 0) -> None:
    """``n`` results of ``task`` nobody read by key (idle since written), each received
    by its worker ``pending`` seconds before its success and sent ``skew`` seconds
    earlier than that on the client's clock; the first ``seen`` of them were in a
    snapshot of the subscriptions."""
    ids = [f"{task}-{i}" for i in range(n)]
    for task_id in ids[:seen]:
        rule.subscribed.put(task_id, True)
    until = NOW - 30.0
    due = [(task_id, until, "celery", task, until - pending - skew, until, None,
            until - pending) for task_id in ids]
    rule._judge(NOW, due, {task_id: 30 for task_id in ids})


def reported(rule: UnreadResults) -> list[str]:
    return [c.task for c in rule._conditions(NOW)]


def test_one_stray_sighting_among_fire_and_forget_results_does_not_hide_them() -> None:
    rule = rule_under_test()
    # 30 results 0.8 s from receipt to success: waiting callers would have been seen
    # about 30 times (one snapshot every 0.5 s); one sighting is a caller dropping its
    # AsyncResult just after the send
    judge(rule, "proj.dropped", 30, pending=0.8, seen=1)
    conditions = list(rule._conditions(NOW))
    assert [c.task for c in conditions] == ["proj.dropped"]
    ev = conditions[0].evidence
    assert ev["read_over_pubsub"] == 1 and ev["pubsub_readers_seen"] is True
    assert ev["unread_results"] == 29 and ev["expected_pubsub_sightings"] == 30.0


def test_callers_seen_waiting_as_often_as_expected_are_not_reported() -> None:
    rule = rule_under_test()
    # the same results, 12 of them seen held: about what waiting callers show when a
    # snapshot falls while they are pending half of the time (.get() on every one)
    judge(rule, "proj.waited", 30, pending=0.8, seen=12)
    assert reported(rule) == []


def test_a_fast_task_with_one_sighting_is_still_taken_as_waited_on() -> None:
    """The documented blind spot: 30 results 50 ms from receipt to success would have
    been seen about 3 times by waiting callers; one sighting is not too few."""
    rule = rule_under_test()
    judge(rule, "proj.fast", 30, pending=0.05, seen=1)
    assert reported(rule) == []


def test_clock_skew_cannot_make_waiting_callers_look_absent() -> None:
    """A client clock 10 s behind the worker's makes every result look pending for 10 s
    (send to success); the expected sightings are counted from the worker's receipt on,
    on the worker's clock, so fast results waited on are still taken as waited on."""
    rule = rule_under_test()
    judge(rule, "proj.skewed", 30, pending=0.05, skew=10.0, seen=1)
    assert reported(rule) == []


def test_no_sighting_still_needs_min_unread_evidence() -> None:
    """Unchanged: with nothing seen held, unobserved results count once waiting callers
    would have been caught ``min_unread_evidence`` (3) times."""
    rule = rule_under_test()
    judge(rule, "proj.rare", 5, pending=0.2)  # 5 x 0.4: too little evidence yet
    assert reported(rule) == []
    judge(rule, "proj.often", 20, pending=0.2)  # 20 x 0.4 = 8
    assert reported(rule) == ["proj.often"]


@pytest.mark.parametrize(("seen", "expected", "too_few"), [
    (0, 3.1, True), (0, 2.9, False),    # nothing seen: expected > min_unread_evidence
    (1, 4.8, True), (1, 4.6, False),    # e^-4.8 * 5.8 = 0.048 < e^-3 = 0.0498
    (2, 6.4, True), (2, 6.2, False),
    (10, 10.0, False), (12, 10.0, False),
    (1500, 2000.0, True), (1990, 2000.0, False),  # no underflow with large expectations
])
def test_too_few_sightings_is_a_poisson_tail(seen: int, expected: float,
                                              too_few: bool) -> None:
    assert too_few_sightings(seen, expected, 3.0) is too_few
    if expected < 100:
        tail = sum(math.exp(-expected) * expected ** k / math.factorial(k)
                   for k in range(seen + 1))
        assert (tail < math.exp(-3.0)) is too_few
