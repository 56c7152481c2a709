"""A real ``celery beat`` in a subprocess, started and stopped by tests."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.process import kill_process, log_tail, stop_process

ROOT = Path(__file__).resolve().parents[2]


class BeatProcess:
    """``celery -A <app> beat`` with its own schedule file (so two can run at once)."""

    def __init__(self, app_module: str, broker: str, env: dict[str, str] | None = None,
                 max_interval: int = 1) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fp-beat-"))
        self.logfile = self.dir / "beat.log"
        python = os.environ.get("FP_TEST_WORKER_PYTHON") or sys.executable
        self.args = [python, "-m", "celery", "-A", app_module, "beat", "--loglevel=INFO",
                     "--schedule", str(self.dir / "schedule"),
                     "--max-interval", str(max_interval)]
        self.env = {**os.environ, "FP_TEST_BROKER": broker, "PYTHONPATH": str(ROOT),
                    **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> BeatProcess:
        with open(self.logfile, "wb") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT,
                                         env=self.env, cwd=str(ROOT))
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return log_tail(self.logfile, 4000)

    def stop(self, timeout: float = 15.0) -> None:
        stop_process(self.proc, timeout)

    def kill(self) -> None:
        kill_process(self.proc)

    def __enter__(self) -> BeatProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
