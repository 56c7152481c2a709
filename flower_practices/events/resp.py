"""A minimal RESP2 pub/sub connection: connect, AUTH, PSUBSCRIBE, then parse pushes.

The direct Redis event path reads one ``PSUBSCRIBE`` stream and nothing else, so it does
not need a general client on the hot path: :class:`PubSubSocket` reads whatever the
socket holds in one ``recv`` and splits every complete frame out of it with
``bytes.find`` — one system call per burst of messages instead of several per message.
Only what a subscribed connection can receive is parsed (arrays of bulk strings and
integers, simple strings, errors); an error reply or a closed socket raises
:class:`ConnectionError`.
"""

from __future__ import annotations

import contextlib
import select
import socket
from collections.abc import Iterator

RECV_BYTES = 262_144


class RespError(ConnectionError):
    """The server answered with an error (e.g. a failed AUTH) or broke the protocol."""


def command(*args: str | bytes) -> bytes:
    """One command encoded as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


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
        raise RespError(buf[pos + 1:end].decode("utf-8", "replace"))
    raise RespError(f"unexpected RESP type byte {kind!r}")


class ClosedByServer(ConnectionError):
    """The server closed the connection (EOF), as opposed to a timeout or a reset."""


class PubSubSocket:
    """A plain TCP connection to Redis used for pub/sub only."""

    def __init__(self, host: str, port: int, *, username: str | None = None,
                 password: str | None = None, connect_timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=connect_timeout)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)  # reads wait in select(); recv never blocks
        self._buf = b""
        if password:
            args = ("AUTH", username, password) if username else ("AUTH", password)
            self.send(*args)
            self.reply(connect_timeout)

    def send(self, *args: str | bytes) -> None:
        self.sock.settimeout(5.0)
        try:
            self.sock.sendall(command(*args))
        finally:
            self.sock.setblocking(False)

    def fill(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for data and buffer it; False when nothing came."""
        if timeout > 0:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return False
        try:
            chunk = self.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return False
        if not chunk:
            raise ClosedByServer("connection closed by the server")
        self._buf = self._buf + chunk if self._buf else chunk
        return True

    def frames(self) -> Iterator[object]:
        """Every complete frame buffered so far (an incomplete tail stays buffered)."""
        buf, pos = self._buf, 0
        size = len(buf)
        try:
            while pos < size:
                parsed = _parse(buf, pos)
                if parsed is None:
                    break
                frame, pos = parsed
                yield frame
        finally:
            self._buf = buf[pos:]

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
