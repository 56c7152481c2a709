"""Stopping a test's server or worker subprocess, the one way every test does it."""

from __future__ import annotations

import subprocess
from pathlib import Path


def stop_process(proc: subprocess.Popen | None, timeout: float = 15.0) -> int | None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds. Returns the
    exit code of a process that stopped by itself (or had already), None if killed."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            return None
    return proc.returncode


def kill_process(proc: subprocess.Popen | None) -> None:
    """SIGKILL (an abrupt crash: no clean-up, nothing sent on the way out)."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(10)


def log_tail(path: Path, chars: int = 4000) -> str:
    """The end of a process's log file, for an assertion message."""
    return path.read_text(errors="replace")[-chars:]
