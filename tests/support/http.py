"""A plain HTTP GET for tests that talk to a real server."""

from __future__ import annotations

import urllib.error
import urllib.request


def get(url: str, timeout: float = 5.0,
        headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """(status, body); an HTTP error gives its status and body, no connection gives 0."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                    timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def get_text(url: str, timeout: float = 5.0,
             headers: dict[str, str] | None = None) -> tuple[int, str]:
    """:func:`get` with the body as text: strict UTF-8 for a success, an error page's body
    with undecodable bytes replaced."""
    status, body = get(url, timeout, headers)
    return status, body.decode(errors="strict" if 0 < status < 400 else "replace")
