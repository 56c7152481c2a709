"""A minimal RESP2 pub/sub connection: connect, AUTH, PSUBSCRIBE, then parse pushes.

The direct Redis event path reads one ``PSUBSCRIBE`` stream and nothing else, so it does
not need a general client on the hot path: :class:`PubSubSocket` reads whatever the
socket holds (up to :data:`RECV_BYTES`) into one preallocated buffer with ``recv_into``,
and the caller hands it, in slices of :data:`FEED_BYTES`, to a RESP reader: hiredis' C
parser (``hiredis.Reader``), or, only when hiredis cannot be imported, :class:`PyReader`,
a pure-Python parser with the same ``feed``/``gets`` interface. One system call per burst
of messages, no per-read allocation: while subscribed (:meth:`PubSubSocket.recv`) the
socket blocks in ``recv_into`` itself, bounded by the kernel's ``SO_RCVTIMEO``, instead
of a ``select`` before each read and a failing read after it (at one message per wake-up
those two cost more than the message). An error reply raises :class:`RespError`, a closed
socket :class:`ClosedByServer` (both :class:`ConnectionError`).
"""

from __future__ import annotations

import contextlib
import select
import socket
from collections.abc import Iterator

from .sockopts import bound_waits

#: bytes read per ``recv_into`` (one system call per burst of messages)
RECV_BYTES = 1 << 20
#: bytes handed to the reader at a time: hiredis moves its unread bytes to the front of its
#: buffer each time a frame has consumed 1 KiB, so feeding it a megabyte at once costs a
#: megabyte of memmove per message (6 µs), 16 KiB slices 0.35 µs (bench, 2026-11-28)
FEED_BYTES = 16_384


class RespError(ConnectionError):
    """The server answered with an error (e.g. a failed AUTH) or broke the protocol."""


class ClosedByServer(ConnectionError):
    """The server closed the connection (EOF), as opposed to a timeout or a reset."""


def command(*args: str | bytes) -> bytes:
    """One command encoded as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


class _ErrorReply(Exception):
    """What :class:`PyReader` returns for an error reply (as hiredis returns ReplyError)."""


def _parse(buf: bytes, pos: int) -> tuple[object, int] | None:
    """One frame starting at ``pos``: (value, next position), or None if incomplete."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind = buf[pos]
    if kind == 36:  # $ bulk string
        n = int(buf[pos + 1:end])
        if n < 0:
            return None, end + 2
        stop = end + 2 + n
        if len(buf) < stop + 2:
            return None
        return buf[end + 2:stop], stop + 2
    if kind == 42:  # * array
        n = int(buf[pos + 1:end])
        items = []
        pos = end + 2
        for _ in range(n):
            parsed = _parse(buf, pos)
            if parsed is None:
                return None
            item, pos = parsed
            items.append(item)
        return items, pos
    if kind == 58:  # : integer
        return int(buf[pos + 1:end]), end + 2
    if kind == 43:  # + simple string
        return buf[pos + 1:end], end + 2
    if kind == 45:  # - error
        return _ErrorReply(buf[pos + 1:end].decode("utf-8", "replace")), end + 2
    raise RespError(f"unexpected RESP type byte {kind!r}")


class PyReader:
    """Pure-Python RESP2 reader with hiredis.Reader's ``feed``/``gets`` interface: the
    fallback when hiredis is not installed. Parses only what a subscribed connection
    receives (arrays of bulk strings and integers, simple strings, errors)."""

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def feed(self, data: bytes | bytearray | memoryview, offset: int = 0,
             length: int | None = None) -> None:
        end = len(data) if length is None else offset + length
        chunk = bytes(data[offset:end])
        rest = self._buf[self._pos:]
        self._buf = rest + chunk if rest else chunk
        self._pos = 0

    def gets(self) -> object:
        """The next complete frame, or False when none is buffered."""
        if self._pos >= len(self._buf):
            return False
        parsed = _parse(self._buf, self._pos)
        if parsed is None:
            return False
        frame, self._pos = parsed
        return frame


try:
    from hiredis import ProtocolError as _ProtocolError
    from hiredis import Reader as _HiredisReader
    from hiredis import ReplyError as _HiredisReplyError
except ImportError:  # pragma: no cover - hiredis is a dependency; this is the fallback
    _HiredisReader = None
    _HiredisReplyError = _ErrorReply
    _ProtocolError = RespError

#: reply objects that stand for an error reply from the server
ERROR_REPLIES: tuple[type, ...] = (_HiredisReplyError, _ErrorReply)
#: what a reader raises on bytes that are not RESP
PROTOCOL_ERRORS: tuple[type, ...] = (_ProtocolError, RespError)


def new_reader(pure_python: bool = False) -> object:
    """A RESP reader: hiredis' when available (and not ``pure_python``), else PyReader."""
    if _HiredisReader is None or pure_python:
        return PyReader()
    return _HiredisReader()


def frames(reader: object) -> Iterator[object]:
    """Every complete frame ``reader`` holds; an error reply raises :class:`RespError`."""
    gets = reader.gets  # type: ignore[attr-defined]
    while True:
        try:
            frame = gets()
        except PROTOCOL_ERRORS as exc:
            raise RespError(f"RESP protocol error: {exc}") from None
        if frame is False:
            return
        if isinstance(frame, ERROR_REPLIES):
            raise RespError(str(frame))
        yield frame


class PubSubSocket:
    """A plain TCP connection to Redis used for pub/sub only."""

    def __init__(self, host: str, port: int, *, username: str | None = None,
                 password: str | None = None, connect_timeout: float = 5.0) -> None:
        self.reader = new_reader()
        self.buffer = bytearray(RECV_BYTES)
        self.sock = socket.create_connection((host, port), timeout=connect_timeout)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)  # reads wait in select(); recv never blocks
        if password:
            args = ("AUTH", username, password) if username else ("AUTH", password)
            self.send(*args)
            self.reply(connect_timeout)

    def send(self, *args: str | bytes) -> None:
        previous = self.sock.gettimeout()  # 0.0: non-blocking; None: blocking reads
        self.sock.settimeout(5.0)
        try:
            self.sock.sendall(command(*args))
        finally:
            self.sock.settimeout(previous)

    def blocking_reads(self, timeout: float) -> None:
        """From now on :meth:`recv` blocks in the kernel for at most ``timeout`` seconds
        (``SO_RCVTIMEO``): one system call per wake-up."""
        bound_waits(self.sock, timeout)

    def recv(self) -> int:
        """After :meth:`blocking_reads`: wait for data (at most its timeout) and read it
        into :attr:`buffer`; the number of bytes read, 0 when nothing came."""
        try:
            n = self.sock.recv_into(self.buffer)
        except (BlockingIOError, TimeoutError):  # SO_RCVTIMEO expired
            return 0
        if not n:
            raise ClosedByServer("connection closed by the server")
        return n

    def read(self, timeout: float) -> int:
        """Wait up to ``timeout`` for data and read it into :attr:`buffer`: the number of
        bytes read (0 when nothing came). The caller feeds them to :attr:`reader`."""
        if timeout > 0:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return 0
        try:
            n = self.sock.recv_into(self.buffer)
        except BlockingIOError:
            return 0
        if not n:
            raise ClosedByServer("connection closed by the server")
        return n

    def fill(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for data and hand it all to the reader (for replies
        outside the pub/sub loop); False when nothing came."""
        n = self.read(timeout)
        if n:
            self.reader.feed(self.buffer, 0, n)  # type: ignore[attr-defined]
        return n > 0

    def frames(self) -> Iterator[object]:
        """Every complete frame read so far (an incomplete tail stays in the reader)."""
        return frames(self.reader)

    def reply(self, timeout: float) -> object:
        """The next frame, waiting up to ``timeout`` seconds for it."""
        while True:
            for frame in self.frames():
                return frame
            if not self.fill(timeout):
                raise TimeoutError("no reply from Redis")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
