"""A real ``celery worker`` in a subprocess, started and stopped by tests."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from celery import Celery

from tests.support.process import kill_process, log_tail, stop_process

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """``celery -A <app> worker`` with the given options; ``logfile`` keeps its output."""

    def __init__(self, app_module: str, broker: str, *, queues: str | None = None,
                 name: str | None = None, events: bool = True, concurrency: int = 2,
                 pool: str = "threads", extra: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name or f"w{os.getpid()}-{int(time.time() * 1000) % 100000}@fp-test"
        self.broker = broker
        self.logfile = Path(tempfile.mkstemp(prefix="fp-worker-", suffix=".log")[1])
        # FP_TEST_WORKER_PYTHON: the monitored workers' own environment (.ci/floors runs the
        # exporter at the dependency floors against workers on a current Celery)
        python = os.environ.get("FP_TEST_WORKER_PYTHON") or sys.executable
        args = [python, "-m", "celery", "-A", app_module, "worker",
                "--loglevel=INFO", "-n", self.name, "-P", pool, "-c", str(concurrency),
                "--without-mingle", "--without-gossip"]
        if events:
            args.append("-E")
        if queues:
            args += ["-Q", queues]
        args += extra or []
        self.args = args
        self.env = {**os.environ, "FP_TEST_BROKER": broker, "PYTHONPATH": str(ROOT),
                    **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self, app: Celery, timeout: float = 30.0, *, ping: bool = True) -> WorkerProcess:
        """Start the worker and wait until it answers a ping (``ping=False``: do not wait,
        for workers that cannot answer: remote control off, or busy from the start)."""
        with open(self.logfile, "wb") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT,
                                         env=self.env, cwd=str(ROOT))
        if not ping:
            return self
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()}")
            replies = app.control.ping(destination=[self.name], timeout=0.5) or []
            if replies:
                return self
        self.stop()
        raise RuntimeError(f"worker did not answer ping within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return log_tail(self.logfile, 5000)

    def stop(self, timeout: float = 15.0) -> None:
        stop_process(self.proc, timeout)

    def kill(self) -> None:
        """SIGKILL: the worker dies without sending worker-offline or task results."""
        kill_process(self.proc)

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
