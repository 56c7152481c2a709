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
