"""A plain HTTP GET for tests that talk to a real server."""

from __future__ import annotations

import urllib.error
import urllib.request


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body); an HTTP error gives its status and body, no connection gives 0."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""
