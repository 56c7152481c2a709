"""Benchmark subject (floor): the least any consumer of the Redis event stream must do.

Reads the same pub/sub stream as every other subject (``PSUBSCRIBE /{db}.celeryev/*`` on
one plain socket, ``recv_into`` a preallocated buffer, hiredis' RESP reader fed in 16 KiB
slices) and does the two JSON decodes each message needs (the envelope, then the base64
body) with orjson — nothing else: no clock, no timestamps, no handler. What any consumer
does beyond this is its own per-event cost.

Usage: ``python bench/floor.py REDIS_URL`` (runs until killed).
"""

from __future__ import annotations

import socket
import sys
from binascii import a2b_base64
from urllib.parse import urlparse

import hiredis
import orjson


def main(url: str) -> None:
    parsed = urlparse(url)
    db = int((parsed.path or "/0").lstrip("/") or 0)
    sock = socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379))
    pattern = f"/{db}.celeryev/*".encode()
    sock.sendall(b"*2\r\n$10\r\nPSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(pattern), pattern))
    reader = hiredis.Reader()
    buffer = bytearray(1 << 20)
    loads = orjson.loads
    while True:
        n = sock.recv_into(buffer)
        if not n:
            return
        for offset in range(0, n, 16_384):
            reader.feed(buffer, offset, min(16_384, n - offset))
            frame = reader.gets()
            while frame is not False:
                if frame[0] == b"pmessage":
                    loads(a2b_base64(loads(frame[3])["body"]))
                frame = reader.gets()


if __name__ == "__main__":
    main(sys.argv[1])
