"""Hard caps on one event message, the same on every consumer path.

- :data:`MAX_MESSAGE_BYTES`: the body of one message (after base64, after inflating); a
  bigger one is dropped unread, decode-error kind ``oversized_message``.
- Compressed messages (kombu's ``compression`` header; Celery never compresses events
  itself) are inflated by :func:`inflate` in bounded steps, never past the cap: zlib and
  gzip, bzip2 and lzma/xz are supported; brotli, zstd and anything else are refused,
  kind ``unsupported_compression`` (their bounded decoders are optional packages).
- :data:`MAX_EVENTS_PER_MESSAGE`: a grouped message (a list of events; Celery's
  dispatcher groups at most ``buffer_limit``, 24 by default) is cut to that many, each
  event beyond counted as kind ``too_many_events``.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable

#: largest message body decoded (bytes, after base64 and after inflating)
MAX_MESSAGE_BYTES = 1 << 20
#: largest raw pub/sub envelope read on the direct Redis path (base64 adds a third)
MAX_ENVELOPE_BYTES = 2 * MAX_MESSAGE_BYTES
#: most events delivered from one grouped message
MAX_EVENTS_PER_MESSAGE = 1000


class MessageRefused(ValueError):
    """A message over a cap; ``kind`` is the decode-error kind to count."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def _zlib() -> object:
    return zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib or gzip header, detected


#: kombu's compression content types and aliases -> a new incremental decompressor.
#: kombu registers zlib.decompress under 'application/x-gzip', 'gzip' and 'zlib'.
_DECOMPRESSORS: dict[str, Callable[[], object]] = {
    "application/x-gzip": _zlib, "gzip": _zlib, "zlib": _zlib,
    "application/x-bz2": bz2.BZ2Decompressor, "bzip2": bz2.BZ2Decompressor,
    "bzip": bz2.BZ2Decompressor,
    "application/x-lzma": lzma.LZMADecompressor, "lzma": lzma.LZMADecompressor,
    "xz": lzma.LZMADecompressor,
}


def inflate(body: bytes, compression: str, cap: int = MAX_MESSAGE_BYTES) -> bytes:
    """``body`` decompressed, or :class:`MessageRefused` if the method is not supported or
    the result would exceed ``cap`` bytes (never more than ``cap + 1`` bytes produced)."""
    factory = _DECOMPRESSORS.get(str(compression).lower())
    if factory is None:
        raise MessageRefused("unsupported_compression",
                             f"compression {str(compression)[:40]!r} is not supported")
    if len(body) > cap:
        raise MessageRefused("oversized_message", "compressed body over the cap")
    try:
        decompressor = factory()
        out = decompressor.decompress(body, cap + 1)  # type: ignore[attr-defined]
        complete = decompressor.eof  # type: ignore[attr-defined]
    except Exception as exc:  # corrupt data
        raise MessageRefused("undecodable_body",
                             f"cannot inflate: {type(exc).__name__}") from None
    if len(out) > cap:
        raise MessageRefused("oversized_message", f"inflates past {cap} bytes")
    if not complete:
        raise MessageRefused("undecodable_body", "truncated compressed body")
    return out
