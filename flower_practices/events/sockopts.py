"""Blocking sockets whose waits the kernel bounds: what both lean consumers read with.

A read that waits in ``select``/``poll`` first and then reads costs two system calls per
wake-up, and draining with a non-blocking read that fails costs a third plus an
exception; at one small event message per wake-up those cost more than the message.
:func:`bound_waits` puts a socket in blocking mode with ``SO_RCVTIMEO`` (and
``SO_SNDTIMEO``) instead: a read is one ``recv_into`` that returns data, or raises
``BlockingIOError`` when the timeout expired (the consumers' idle tick).

:class:`ReadPacer`: a consumer that woke up, read and handled what had arrived sleeps
before reading again, so each wake-up handles many messages at once (interrupt
coalescing): at most :data:`MIN_READ_INTERVAL` (50 ms), and never longer than the
socket's receive buffer takes to fill a quarter at the rate data arrived lately -- so a
busy stream is read at once and nothing piles up in the kernel or in Redis' output
buffer, while a calm one (2,000 events/s) is read 20 times a second instead of once
per message. Measured (exporter alone, workers' grouped bodies published one message at
a time at 2,000 events/s): 26.3 µs/event reading eagerly, 18.8 at 10 ms, 16.3 at 20 ms,
14.5 at 50 ms. Events reach the engine up to 50 ms later (evaluations run every few
seconds; Flower's tap batches 100 ms).
"""

from __future__ import annotations

import socket
import struct
import time

#: seconds: the longest a consumer pauses between reads (see the module docstring)
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


class ReadPacer:
    """How long a consumer pauses after handling a read (see the module docstring)."""

    __slots__ = ("sock", "largest_read", "budget", "previous", "checked")

    def __init__(self, sock: socket.socket, largest_read: int) -> None:
        self.sock = sock
        self.largest_read = largest_read
        self.previous = self.checked = time.monotonic()
        #: bytes that may arrive during a pause: a quarter of what the socket can hold
        #: (the kernel grows a busy socket's buffer: read again once a second)
        self.budget = self._budget()

    def _budget(self) -> int:
        try:
            rcvbuf = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        except OSError:  # closed meanwhile: the next read says so
            rcvbuf = 65_536
        return max(4096, min(rcvbuf, self.largest_read) // 4)

    def pause(self, nbytes: int, woke: float, done: float) -> float:
        """Seconds to sleep after a read of ``nbytes`` that returned at ``woke`` and was
        handled by ``done`` (monotonic times): 0 when busy."""
        elapsed, self.previous = woke - self.previous, woke
        if woke - self.checked > 1.0:
            self.checked = woke
            self.budget = self._budget()
        spent = done - woke
        rest = MIN_READ_INTERVAL - spent
        if rest <= 0.0 or nbytes >= self.budget:
            return 0.0
        if elapsed > 0.0:  # don't let more than the budget arrive at the recent rate
            rest = min(rest, self.budget * elapsed / nbytes - spent)
        return rest if rest > 0.0 else 0.0
