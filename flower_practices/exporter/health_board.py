"""What the exporter's main process and its ``/healthz`` process share (standard library only).

- :class:`StatusBoard`: a small shared-memory block (a ``memfd`` both processes map) holding
  the event stream's status as the main process last published it, a heartbeat (the
  main process's event loop stamps ``time.monotonic()`` every :data:`HEARTBEAT_SECONDS`;
  ``CLOCK_MONOTONIC`` is the same clock in every process of the host) and the open
  connections of each process (for the one connection cap over both);
- :func:`health_response`: the ``/healthz`` document built from a snapshot, the same
  JSON and status as :func:`flower_practices.api.health_document`, the reason computed
  as of now (:func:`~flower_practices.events.status.disconnected_reason`);
- the handover message (connections the health process passes to the main process) and
  the 503 answered past ``max_connections``.

Consistency: the status fields are written under a sequence counter (odd while being
written) and a CRC-32 of the fields; a reader retries until both agree, so it never acts
on a half-written status. The two connection counters are single aligned 32-bit words,
each written by one process only.
"""

from __future__ import annotations

import errno
import json
import math
import mmap
import os
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass

from ..events.status import CONNECTED, disconnected_reason, health_answer

#: how often the main process's event loop stamps the heartbeat
HEARTBEAT_SECONDS = 1.0
#: heartbeat age past which the health process stops trusting the published status and
#: answers 503 itself: the main process is stopped, hung or starved (a loop iteration
#: under 1000 scrapers takes well under a second, bench/)
STALE_SECONDS = 10.0
#: longest ``last_error`` kept on the board (bytes of UTF-8)
MAX_ERROR_BYTES = 1024

# layout: [seq Q][crc I][main_conns I][health_conns I][pad I] then the fields
_HEAD = struct.Struct("<QIIII")
_FIELDS = struct.Struct("<dBddddH")  # heartbeat, connected, connected_since,
#                                      disconnected_since, down_since (NaN: None),
#                                      last_attempt_at, error length; then the error bytes
_SEQ, _CRC, _MAIN, _HEALTH = 0, 8, 12, 16
_BODY = _HEAD.size
SIZE = 4096


@dataclass(frozen=True)
class Snapshot:
    """The stream status as published, plus when the main process last stamped it."""

    heartbeat: float
    connected: bool
    connected_since: float
    disconnected_since: float
    down_since: float | None
    last_attempt_at: float
    last_error: str


class StatusBoard:
    """The shared block; ``fd`` is passed to the health process, which maps it too."""

    def __init__(self, fd: int | None = None) -> None:
        if fd is None:
            fd = os.memfd_create("flower-practices-health", os.MFD_CLOEXEC)
            os.ftruncate(fd, SIZE)
        self.fd = fd
        self._map = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._lock = threading.Lock()
        self._heartbeat = time.monotonic()
        #: after :meth:`close` every write is a no-op (a connection closing during
        #: shutdown still reports its count) and :meth:`read` says None
        self.closed = False

    def close(self) -> None:
        """Unmap the block (idempotent; under the lock, so no write is half done)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._map.close()
            os.close(self.fd)

    # -- main process -----------------------------------------------------------------
    def publish(self, status: object, *, heartbeat: bool = False) -> None:
        """Write ``status`` (a :class:`~flower_practices.events.status.StreamStatus`);
        ``heartbeat``: also stamp now as the main loop's last sign of life."""
        error = (getattr(status, "last_error", "") or "").encode("utf-8", "replace")
        error = error[:MAX_ERROR_BYTES].decode("utf-8", "ignore").encode()
        down = status.down_since  # type: ignore[attr-defined]
        with self._lock:
            if self.closed:
                return
            if heartbeat:
                self._heartbeat = time.monotonic()
            fields = _FIELDS.pack(
                self._heartbeat, bool(status.connected), status.connected_since,  # type: ignore[attr-defined]
                status.disconnected_since, math.nan if down is None else down,  # type: ignore[attr-defined]
                status.last_attempt_at, len(error)) + error  # type: ignore[attr-defined]
            seq = struct.unpack_from("<Q", self._map, _SEQ)[0]
            struct.pack_into("<Q", self._map, _SEQ, seq + 1)  # odd: being written
            self._map[_BODY:_BODY + len(fields)] = fields
            struct.pack_into("<I", self._map, _CRC, zlib.crc32(fields))
            struct.pack_into("<Q", self._map, _SEQ, seq + 2)

    def set_main_connections(self, n: int) -> None:
        self._put(_MAIN, n)

    def health_connections(self) -> int:
        return self._get(_HEALTH)

    # -- health process ---------------------------------------------------------------
    def set_health_connections(self, n: int) -> None:
        self._put(_HEALTH, n)

    def main_connections(self) -> int:
        return self._get(_MAIN)

    def _put(self, offset: int, n: int) -> None:
        with self._lock:
            if not self.closed:
                struct.pack_into("<I", self._map, offset, n)

    def _get(self, offset: int) -> int:
        with self._lock:
            return 0 if self.closed else struct.unpack_from("<I", self._map, offset)[0]

    def read(self) -> Snapshot | None:
        """The last status published whole (None: none yet, or closed)."""
        if self.closed:
            return None
        for _ in range(1000):
            seq = struct.unpack_from("<Q", self._map, _SEQ)[0]
            if seq == 0:
                return None
            if seq % 2:
                time.sleep(0)  # being written: let the writer finish
                continue
            crc = struct.unpack_from("<I", self._map, _CRC)[0]
            values = _FIELDS.unpack_from(self._map, _BODY)
            n = min(values[-1], MAX_ERROR_BYTES)
            start = _BODY + _FIELDS.size
            fields = self._map[_BODY:start + n]
            if struct.unpack_from("<Q", self._map, _SEQ)[0] != seq or zlib.crc32(fields) != crc:
                continue
            heartbeat, connected, c_since, d_since, down, attempt, _ = values
            return Snapshot(heartbeat, bool(connected), c_since, d_since,
                            None if math.isnan(down) else down, attempt,
                            fields[_FIELDS.size:].decode("utf-8", "replace"))
        return None


def health_response(snapshot: Snapshot | None, *, now: float | None = None,
                    stale_after: float = STALE_SECONDS) -> tuple[int, bytes]:
    """``/healthz`` (status code, JSON body) from ``snapshot``, as of ``now`` (monotonic).

    As :func:`flower_practices.api.health_document` answers in the main process, unless
    the heartbeat is older than ``stale_after``: then 503, the reason saying the main
    process stopped updating its status (how long), ``since`` when it last did.
    """
    now = time.monotonic() if now is None else now
    if snapshot is None:
        doc = {"status": "unavailable", "reason": "exporter starting: no status published yet",
               "since": None}
        return 503, json.dumps(doc).encode()
    age = now - snapshot.heartbeat
    if age > stale_after:
        doc = {"status": "unavailable",
               "reason": f"exporter not responding: its main process has not updated "
                         f"its status for {age:.0f}s (stopped, hung or starved of CPU)",
               "since": time.time() - age}
        return 503, json.dumps(doc).encode()
    if snapshot.connected:
        code, doc = health_answer(True, CONNECTED, snapshot.connected_since)
    else:
        code, doc = health_answer(False, disconnected_reason(
            snapshot.last_error, snapshot.down_since, snapshot.last_attempt_at),
            snapshot.disconnected_since)
    return code, json.dumps(doc).encode()


#: accept errors that last until descriptors or memory are freed, and the pause an accept
#: loop takes after one instead of spinning (the /healthz process and the thread lane)
OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
ACCEPT_RETRY_SECONDS = 0.1


def is_health_request(head: bytes) -> bool:
    """Whether the request line that starts ``head`` asks for ``/healthz``."""
    parts = head.split(b"\n", 1)[0].split()
    return len(parts) >= 2 and parts[1].split(b"?", 1)[0] == b"/healthz"


#: connections per handover message at most (SCM_RIGHTS carries up to 253)
HANDOVER_BATCH = 64
#: bytes per handover message at most (heads are rarely more than a few hundred bytes)
HANDOVER_BYTES = 128 * 1024


#: per connection handed over: family, port, flowinfo, scope id, host length, head length
_ENTRY = struct.Struct("<BHIIHI")
#: the largest handover message (a batch's heads are cut at HANDOVER_BYTES, but its
#: first head always goes, and a head is at most two 16 KiB reads)
HANDOVER_MESSAGE_MAX = 4 + HANDOVER_BATCH * (_ENTRY.size + 64) + HANDOVER_BYTES + 32 * 1024

Handover = tuple[int, tuple, bytes]  # (address family, peer address, the bytes read)


def pack_handover(entries: list[Handover]) -> bytes:
    """One handover message: the count, then per connection its family and peer address
    (so the main process needs no system call to learn them) and the bytes read of it.
    The connections' descriptors travel with it, in the same order."""
    parts = [struct.pack("<I", len(entries))]
    for family, address, head in entries:
        host = address[0].encode()
        flow, scope = (address[2], address[3]) if len(address) >= 4 else (0, 0)
        parts += (_ENTRY.pack(family, address[1], flow, scope, len(host), len(head)),
                  host, head)
    return b"".join(parts)


def unpack_handover(data: bytes) -> list[Handover]:
    (n,) = struct.unpack_from("<I", data)
    out: list[Handover] = []
    at = 4
    for _ in range(n):
        family, port, flow, scope, host_len, head_len = _ENTRY.unpack_from(data, at)
        at += _ENTRY.size
        host = data[at:at + host_len].decode()
        at += host_len
        address = (host, port, flow, scope) if family == socket.AF_INET6 else (host, port)
        out.append((family, address, data[at:at + head_len]))
        at += head_len
    return out


BUSY_BODY = b"503: too many open connections\n"
#: the answer past ``max_connections``
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
        b"Retry-After: 1\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(BUSY_BODY), BUSY_BODY))
