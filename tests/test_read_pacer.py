"""The consumers' read pacing (events/sockopts.py): pauses only while a stream is calm,
never long enough for more than a quarter of the socket's buffer to arrive."""

from __future__ import annotations

import socket

from flower_practices.events.sockopts import MIN_READ_INTERVAL, ReadPacer


def pacer() -> tuple[ReadPacer, socket.socket, socket.socket]:
    a, b = socket.socketpair()
    p = ReadPacer(a, 1 << 20)
    return p, a, b


def test_a_calm_stream_waits_out_the_interval() -> None:
    p, a, b = pacer()
    try:
        p.previous = 100.0
        # 700 bytes a second after the previous read, handled in 1 ms
        assert abs(p.pause(700, 101.0, 101.001) - (MIN_READ_INTERVAL - 0.001)) < 1e-9
    finally:
        a.close()
        b.close()


def test_a_busy_stream_is_read_again_at_once() -> None:
    p, a, b = pacer()
    try:
        p.previous = 100.0
        assert p.pause(p.budget, 100.01, 100.011) == 0.0  # a read that filled the budget
        assert p.pause(1000, 100.2, 100.3) == 0.0  # handling took longer than the interval
    finally:
        a.close()
        b.close()


def test_the_pause_never_lets_more_than_the_budget_arrive() -> None:
    p, a, b = pacer()
    try:
        for elapsed, nbytes in ((0.001, 500), (0.01, 2000), (0.05, 100), (1.0, 30_000)):
            p.previous = 200.0
            wait = p.pause(nbytes, 200.0 + elapsed, 200.0 + elapsed)
            assert 0.0 <= wait <= MIN_READ_INTERVAL
            rate = nbytes / elapsed
            assert rate * wait <= p.budget * 1.0001, (elapsed, nbytes, wait)
    finally:
        a.close()
        b.close()
