"""Background poller: runs the broker probes every ``probe_interval`` seconds.

Probes never run on the scrape path or the event path. Results are written through the
engine's probe API (:meth:`~flower_practices.engine.Engine.apply_worker_probes`,
:meth:`~flower_practices.engine.Engine.apply_queue_probes`), which takes its lock;
failures are logged (once per streak) and counted in
``flower_practices_probe_errors_total{probe}``.
"""

from __future__ import annotations

import logging
import threading
import time

from celery import Celery

from ..engine import Engine
from .queues import QueueSample, probe_queues
from .workers import WorkerSample, probe_workers

log = logging.getLogger("flower_practices.probes")


def queues_to_probe(engine: Engine) -> list[str]:
    """Queues known from events, the app's configuration and workers' active_queues."""
    return engine.queues_to_probe()


def apply_worker_samples(engine: Engine, samples: dict[str, WorkerSample]) -> None:
    engine.apply_worker_probes(samples)


def apply_queue_samples(engine: Engine, samples: dict[str, QueueSample], now: float,
                        consumers_from_workers: bool) -> None:
    engine.apply_queue_probes(samples, now, consumers_from_workers=consumers_from_workers)


class ProbePoller(threading.Thread):
    """Polls queues and workers of ``app``'s broker for ``engine``."""

    def __init__(self, app: Celery, engine: Engine, *, inspect_timeout: float = 1.0) -> None:
        super().__init__(name="flower-practices-probes", daemon=True)
        self.app = app
        self.engine = engine
        self.inspect_timeout = inspect_timeout
        self._stop_event = threading.Event()
        self._failing: set[str] = set()
        self.cycles = 0

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.run_once()
            self._stop_event.wait(self.engine.settings.probe_interval)

    def _failed(self, probe: str, exc: BaseException) -> None:
        self.engine.count_probe_error(probe)
        if probe not in self._failing:
            self._failing.add(probe)
            log.warning("probe %s failed: %s: %s (counted in "
                        "flower_practices_probe_errors_total; logged once until it recovers)",
                        probe, type(exc).__name__, exc)

    def _ok(self, probe: str) -> None:
        if probe in self._failing:
            self._failing.discard(probe)
            log.info("probe %s recovered", probe)

    def run_once(self) -> None:
        """One probe cycle (also used by tests and by the Flower plugin's executor)."""
        try:
            samples = probe_workers(self.app, timeout=self.inspect_timeout)
        except Exception as exc:
            self._failed("workers", exc)
        else:
            self._ok("workers")
            apply_worker_samples(self.engine, samples)
        try:
            with self.app.connection_for_read() as conn:
                conn.ensure_connection(max_retries=1)
                queues = queues_to_probe(self.engine)
                samples_q = probe_queues(conn, queues)
                driver = conn.transport.driver_type
        except Exception as exc:
            self._failed("queues", exc)
        else:
            self._ok("queues")
            apply_queue_samples(self.engine, samples_q, time.time(),
                                consumers_from_workers=driver != "amqp")
        self.cycles += 1
