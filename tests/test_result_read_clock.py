"""unread_results' sub-second read test against the real Redis LRU clock.

A result key read in a later second of Redis' clock than its write is taken for read (even
when the read came a few hundred milliseconds after the write); a key nobody read never
is, whatever the phase of the check. Real Redis, no workers.
"""

from __future__ import annotations

import math
import time
import uuid

import redis

from flower_practices.probes.results import KEY_PREFIX, ResultStore
from flower_practices.rules.unread_results import _read_in_later_second
from tests.support.brokers import fresh_redis_url, release_redis_dbs
from tests.support.exporter import wait_for


def redis_second(client: redis.Redis) -> int:
    seconds, _ = client.time()
    return int(seconds)


def test_a_read_in_a_later_second_is_seen_and_no_read_never_is() -> None:
    url = fresh_redis_url()
    try:
        client = redis.Redis.from_url(url)
        store = ResultStore(client)
        assert store.hz() >= 1
        unread, read = uuid.uuid4().hex, uuid.uuid4().hex
        # write both late in a second of Redis' clock, so the read comes in the next one
        wait_for(lambda: client.time()[1] > 700_000, timeout=5, interval=0.01,
                 message="the last 300 ms of a Redis second")
        written_in = redis_second(client)
        client.set(KEY_PREFIX + unread, b"{}")
        client.set(KEY_PREFIX + read, b"{}")
        written_by = time.time()  # a moment after the writes, on the local clock
        # past the next whole second, and past the cron tick that moves the LRU clock on
        wait_for(lambda: (lambda t: int(t[0]) > written_in and t[1] > 150_000)(
            client.time()), timeout=5, interval=0.01, message="the next Redis second")
        client.get(KEY_PREFIX + read)  # well under a second after the write
        for _ in range(6):  # checks at several phases of Redis' seconds
            idle, clock = store.idle_times_clocked([unread, read])
            assert clock is not None and clock.lru_lag > 0
            assert not _read_in_later_second(idle[unread], written_by, clock), (idle, clock)
            assert _read_in_later_second(idle[read], written_by, clock), (idle, clock)
            # the check waited until Redis' LRU clock is known to the second
            assert clock.redis_time % 1.0 >= clock.lru_lag or clock.lru_lag >= 0.9
            time.sleep(0.15)  # the next check at another phase (not a wait on Redis)
        idle, _ = store.idle_times_clocked([uuid.uuid4().hex])
        assert list(idle.values()) == [None]  # a missing key is no verdict of its own
    finally:
        release_redis_dbs(url)


def test_bounds_err_towards_not_read() -> None:
    from flower_practices.probes.results import Clock

    # last access: floor(1000.5 - 0.35) - 3 = 997; write by 996.9 (+ offset 0.05) -> 996
    clock = Clock(redis_time=1000.5, offset_max=0.05, lru_lag=0.35)
    assert _read_in_later_second(3, 996.9, clock)
    # the write may have been in second 997 (996.96 + 0.05): not taken for read
    assert not _read_in_later_second(3, 996.96, clock)
    # early in a second the LRU clock may still show the last one: one second lower
    early = Clock(redis_time=1000.2, offset_max=0.0, lru_lag=0.35)
    assert math.floor(early.redis_time - early.lru_lag) == 999
    assert not _read_in_later_second(3, 996.5, early)


def test_a_task_seen_read_within_the_second_of_its_write_is_not_reported() -> None:
    """A status endpoint polling ``AsyncResult(id).ready()`` reads results within the
    second of their write, which is seen only when the read falls in a later second of
    Redis' clock. Results of a task that look unread are reported; once one of its
    results is seen read that fast, they may be that poller's unseen reads, and the task
    is not reported for ``window_seconds``."""
    from flower_practices.config import Settings
    from flower_practices.engine import Engine
    from flower_practices.probes.results import Clock
    from flower_practices.rules.unread_results import UnreadResults

    url = "redis://h/0"
    # grace 0: a verdict is final at its first check (no second look: judged directly)
    engine = Engine(Settings(practices={"unread_results": {"min_samples": 5,
                                                           "grace_seconds": 0.0}}),
                    broker_url=url, result_backend=url)
    rule = next(r for r in engine.rules if isinstance(r, UnreadResults))
    now = 2000.0
    rule.snapshot_times = [now - 50.0]  # a complete snapshot while they were pending
    # 20 results nobody subscribed to, idle as long as they exist: unread
    due = [(f"u{i}", now - 30.0, "celery", "proj.status", now - 60.0, now - 40.0, None,
            now - 59.0) for i in range(20)]
    rule._judge(now, due, {f"u{i}": 30 for i in range(20)})
    [condition] = list(rule._conditions(now))
    assert condition.task == "proj.status"
    # one result read a few hundred milliseconds after its write, in a later Redis second
    clock = Clock(redis_time=1000.5, offset_max=0.05, lru_lag=0.35)
    fast = ("fast", now - 3.0, "celery", "proj.status", now - 60.0, now - 40.0, 996.9,
            now - 59.0)
    rule._judge(now, [fast], {"fast": 3}, clock)
    assert rule.verdict_counts("proj.status", "celery")["read"] == 1
    assert list(rule._conditions(now)) == []
    # another task's unread results are still reported
    other = [(f"o{i}", now - 30.0, "celery", "proj.dropped", now - 60.0, now - 40.0, None,
              now - 59.0) for i in range(20)]
    rule._judge(now, other, {f"o{i}": 30 for i in range(20)})
    assert [c.task for c in rule._conditions(now)] == ["proj.dropped"]
    # the poller stops being seen: after window_seconds the task is judged again
    later = now + rule.opts.window_seconds + 1.0
    rule._age(later)
    assert rule._fast_key(("celery", "proj.status"), later) is False
