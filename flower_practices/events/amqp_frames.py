"""A minimal AMQP 0-9-1 frame reader for a consume-only, no-ack channel.

Once ``basic.consume`` is set up (by py-amqp), everything the broker sends is deliveries
(``basic.deliver`` method frame, content header frame, body frames), heartbeats, and
rarely a close or a cancel. :class:`DeliveryReader` reads the socket in large chunks and
cuts frames itself (the AMQP twin of :mod:`.resp`), instead of py-amqp's several reads,
objects and dispatch steps per frame; content headers are decoded with py-amqp's own
``decode_properties_basic``, once per distinct properties blob (a sender's events repeat
the same one). It hands each delivered message to ``deliver(body,
properties)``; a body announced larger than ``max_body`` is skipped unread (its frames
discarded as they come) and reported through ``refuse``.

Anything but a delivery or a heartbeat (``connection.close``, ``channel.close``,
``basic.cancel``...) ends the session with :class:`BrokerClosed`: the stream reconnects.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from struct import unpack_from
from time import monotonic
from typing import Any

from amqp.serialization import decode_properties_basic

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE
BASIC_DELIVER = (60, 60)
#: connection.blocked / unblocked: flow control of publishers, harmless to a consumer
_IGNORED_METHODS = frozenset(((10, 60), (10, 61)))
#: largest frame accepted (the frame_max we negotiate is far below)
MAX_FRAME = 1 << 22
RECV_BYTES = 1 << 18
#: distinct content-header properties remembered decoded (about one per sending host;
#: cleared when full, so hostile variety costs a decode each, as without the cache)
PROPERTIES_CACHED = 1024


class BrokerClosed(ConnectionError):
    """The broker closed the connection or the channel, or sent an unexpected frame."""


class DeliveryReader:
    """Frames off ``sock`` -> ``deliver(body, properties)`` per message (see module)."""

    def __init__(self, sock: socket.socket, deliver: Callable[[bytes, dict], None],
                 refuse: Callable[[], None], max_body: int, initial: bytes = b"") -> None:
        self.sock = sock
        self.deliver = deliver
        self.refuse = refuse
        self.max_body = max_body
        self.buf = bytearray(initial)
        #: monotonic time the last read returned data (the consumer's coalescing)
        self.woke = 0.0
        #: what each recv_into fills (no bytes object allocated per read)
        self._rbuf = bytearray(RECV_BYTES)
        self._rview = memoryview(self._rbuf)
        #: bytes received so far (for heartbeat bookkeeping)
        self.received = len(initial)
        self._props: dict | None = None
        #: properties bytes -> their decoded dict, shared by the messages that carry them
        #: (read only: :meth:`~.fast_amqp.AmqpBodyDecoder.feed` never changes it)
        self._decoded: dict[bytes, dict] = {}
        self._size = 0
        self._chunks: list[bytes] = []
        self._have = 0
        self._skip = False
        self._in_content = False

    def read(self) -> int:
        """Read what the socket has (waiting up to its timeout: Python's, or the kernel's
        ``SO_RCVTIMEO`` on a blocking socket) and handle every whole frame: the number of
        bytes read, 0 when the wait timed out with nothing read."""
        try:
            got = self.sock.recv_into(self._rbuf)
        except (TimeoutError, BlockingIOError):
            return 0
        if not got:
            raise BrokerClosed("the broker closed the connection")
        self.woke = monotonic()
        self.received += got
        buf = self.buf
        buf += self._rview[:got]
        n = len(buf)
        pos = 0
        while n - pos >= 8:
            ftype, _channel, size = unpack_from(">BHI", buf, pos)
            if size > MAX_FRAME:
                raise BrokerClosed(f"frame of {size} bytes")
            end = pos + 7 + size
            if end >= n:
                break
            if buf[end] != FRAME_END:
                raise BrokerClosed("bad frame end")
            start = pos + 7
            pos = end + 1
            if ftype == FRAME_BODY:
                self._body(buf, start, end)
            elif ftype == FRAME_HEADER:
                self._header(buf, start, end)
            elif ftype == FRAME_METHOD:
                self._method(buf, start, end)
            elif ftype != FRAME_HEARTBEAT:
                raise BrokerClosed(f"unexpected frame type {ftype}")
        del buf[:pos]
        return got

    def _method(self, buf: bytearray, start: int, end: int) -> None:
        sig = unpack_from(">HH", buf, start)
        if sig == BASIC_DELIVER:
            if self._in_content:
                raise BrokerClosed("basic.deliver inside a message")
            self._in_content = True
            self._props = None
            return
        if sig in _IGNORED_METHODS:
            return
        detail = ""
        if sig in ((10, 50), (20, 40)) and end - start > 7:  # connection/channel.close
            code, = unpack_from(">H", buf, start + 4)
            length = buf[start + 6]
            text = bytes(buf[start + 7:start + 7 + length]).decode("utf-8", "replace")
            detail = f": {code} {text[:200]}"
        raise BrokerClosed(f"broker sent method {sig[0]}.{sig[1]}{detail}")

    def _header(self, buf: bytearray, start: int, end: int) -> None:
        if not self._in_content or self._props is not None:
            raise BrokerClosed("content header out of place")
        size, = unpack_from(">Q", buf, start + 4)
        # the properties of one sender's events are the same bytes message after message
        # (content type, encoding, the hostname header): decoded once, then looked up
        raw = bytes(buf[start + 12:end])
        cache = self._decoded
        props = cache.get(raw)
        if props is None:
            props, _ = decode_properties_basic(raw, 0)
            if len(cache) >= PROPERTIES_CACHED:
                cache.clear()
            cache[raw] = props
        self._props = props
        self._size = size
        self._have = 0
        self._chunks = []
        self._skip = size > self.max_body
        if size == 0:
            self._done(b"")

    def _body(self, buf: bytearray, start: int, end: int) -> None:
        if self._props is None:
            raise BrokerClosed("content body out of place")
        self._have += end - start
        if self._have > self._size:
            raise BrokerClosed("content body longer than announced")
        if self._skip:
            if self._have == self._size:
                self._in_content = False
                self._props = None
                self.refuse()
            return
        if self._have == self._size and not self._chunks:
            self._done(bytes(buf[start:end]))  # the common case: one body frame
            return
        self._chunks.append(bytes(buf[start:end]))
        if self._have == self._size:
            self._done(b"".join(self._chunks))

    def _done(self, body: bytes) -> None:
        props: Any = self._props
        self._in_content = False
        self._props = None
        self._chunks = []
        self.deliver(body, props)
