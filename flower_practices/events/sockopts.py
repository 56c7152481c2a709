"""Blocking sockets whose waits the kernel bounds: what both lean consumers read with.

A read that waits in ``select``/``poll`` first and then reads costs two system calls per
wake-up, and draining with a non-blocking read that fails costs a third plus an
exception; at one small event message per wake-up those cost more than the message.
:func:`bound_waits` puts a socket in blocking mode with ``SO_RCVTIMEO`` (and
``SO_SNDTIMEO``) instead: a read is one ``recv_into`` that returns data, or raises
``BlockingIOError`` when the timeout expired (the consumers' idle tick).

:data:`MIN_READ_INTERVAL`: a consumer that woke up, read and handled what had arrived
sleeps out the rest of this interval before reading again, so it wakes at most 20 times
a second and each wake-up handles every message of the last 50 ms at once (interrupt
coalescing): at 2,000 messages/s that is 100 messages per system call and per warm-up
of the decoder's and the engine's code instead of one. Measured (exporter alone, workers'
grouped bodies published one message at a time at 2,000 events/s): 26.3 µs/event
reading eagerly, 18.8 at 10 ms, 16.3 at 20 ms, 14.5 at 50 ms. Events reach the engine
up to 50 ms later (evaluations run every few seconds; Flower's tap batches 100 ms);
nothing waits when handling takes longer than the interval, so the sustainable rate is
not lowered; 50 ms of events at 60,000/s (~1.5 MB) is far below Redis' pub/sub
output-buffer limits (8 MB soft, 32 MB hard by default).
"""

from __future__ import annotations

import socket
import struct

#: seconds: a consumer reads at most once per interval (see the module docstring)
MIN_READ_INTERVAL = 0.05


def timeval(seconds: float) -> bytes:
    """``seconds`` as the ``struct timeval`` SO_RCVTIMEO / SO_SNDTIMEO take."""
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1e6))


def bound_waits(sock: socket.socket, read_timeout: float,
                write_timeout: float | None = None) -> None:
    """Make ``sock`` blocking, each read waiting at most ``read_timeout`` seconds (and
    each write ``write_timeout``, if given) in the kernel."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(read_timeout))
    if write_timeout is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval(write_timeout))
    sock.settimeout(None)
