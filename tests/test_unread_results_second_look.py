"""unread_results looks twice before it calls a result unread.

A caller that keeps the task id and fetches the result later (a report downloaded a
minute after it was asked for, a status page polled by id) reads it after the first
check. A result that looks unread at its first check (``grace_seconds`` after its
task-succeeded) is therefore looked up once more ``grace_seconds`` later, and counts as
unread only if it is still untouched then. Real Redis keys whose idle time is set with
``RESTORE ... IDLETIME``; the real-worker case is in ``test_unread_results_pubsub``.
"""

from __future__ import annotations

import time
import uuid

import redis

from flower_practices.probes.results import KEY_PREFIX
from tests.test_evaluation_off_lock import TASK, ids, make_engine, rule_of, store_unread, succeed

GRACE = 10.0


def unread_results(engine, client: redis.Redis, n: int, now: float) -> list[str]:
    """``n`` results written 30 s ago and never read, their tasks pending 10 s."""
    task_ids = [uuid.uuid4().hex for _ in range(n)]
    for task_id in task_ids:
        store_unread(client, task_id, 30)
        succeed(engine, task_id, now - 30)
    return task_ids


def test_results_read_late_are_read_and_untouched_ones_are_unread(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    engine = make_engine(redis_url, grace_seconds=GRACE, max_samples=100)
    rule = rule_of(engine)
    now = time.time()
    late = unread_results(engine, client, 8, now)
    engine.evaluate(now)  # the first check: all 8 look unread, none counts yet
    assert rule.verdict_counts(TASK, "q") == {"unread": 0, "read": 0, "missing": 0}
    assert len(rule.rechecks) == 8 and ids(engine) == []
    for task_id in late:  # the caller fetches them now, by id (AsyncResult(id).get())
        assert client.get(KEY_PREFIX + task_id) is not None
    engine.evaluate(now + GRACE - 1)  # not due for its second look yet
    assert len(rule.rechecks) == 8
    engine.evaluate(now + GRACE)
    assert rule.verdict_counts(TASK, "q") == {"unread": 0, "read": 8, "missing": 0}
    assert ids(engine) == [] and not rule.rechecks

    # the same task's next results, never fetched: unread at both looks, reported
    dropped = unread_results(engine, client, 8, now + 2 * GRACE)
    forgotten = dropped.pop()
    engine.evaluate(now + 2 * GRACE)
    assert ids(engine) == []
    client.delete(KEY_PREFIX + forgotten)  # read and forgotten (or expired): unknown
    engine.evaluate(now + 3 * GRACE)
    assert rule.verdict_counts(TASK, "q") == {"unread": 7, "read": 8, "missing": 1}
    assert ids(engine) == []  # 7 of 15 judged: under min_share
    unread_results(engine, client, 80, now + 4 * GRACE)
    engine.evaluate(now + 4 * GRACE)
    assert ids(engine) == []  # 80 more look unread: not counted before their second look
    engine.evaluate(now + 5 * GRACE)
    assert ids(engine) == [("unread_results", TASK)]  # 87 of 95: over min_share (0.9)
    [finding] = engine.practices_payload()["findings"]
    evidence = finding["evidence"]
    assert (evidence["unread_results"], evidence["read_by_key"]) == (87, 8)
    assert evidence["unread_confirmed_after_seconds"] == 2 * GRACE


def test_a_failed_second_look_is_kept_for_later(private_redis: dict) -> None:
    url = private_redis["url"]
    client = redis.Redis.from_url(url)
    engine = make_engine(url, grace_seconds=GRACE, error_backoff_seconds=0.1)
    rule = rule_of(engine)
    now = time.time()
    unread_results(engine, client, 6, now)
    engine.evaluate(now)
    assert len(rule.rechecks) == 6
    private_redis["kill"]()
    engine.evaluate(now + GRACE)
    assert engine.probe_errors == {"result_backend": 1}
    assert len(rule.rechecks) == 6  # kept, in order, for the next round
