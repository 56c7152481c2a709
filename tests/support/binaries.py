"""External programs the tests run (promtool, prometheus, amtool): found, or skip/fail."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.brokers import in_ci


def require_binary(name: str, package: str) -> str:
    """The path of ``name``; outside CI a missing program skips, under ``CI=true`` fails."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists()
                                  else None)
    if path is None:
        message = f"{name} not found (Debian package {package})"
        if in_ci():
            pytest.fail(f"{message}; CI=true: install it")
        pytest.skip(message)
    return path
