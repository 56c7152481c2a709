"""``flower-practices demo``: broker, worker, traffic, engine and web UI in one process.

Nothing external: kombu's in-memory transport carries the tasks and the events between
threads, a Celery worker runs in a thread (threads pool, task events on), the traffic
generator commits the anti-patterns, and Flower with the practices plugin serves the
findings (``/practices``, ``/api/practices``) next to a ``/metrics`` endpoint.

Practices the demo cannot show in one process: ``database_broker`` and
``result_backend_database`` (no database), ``unread_results`` (no Redis result backend;
its coverage says so), ``lost_task`` and ``prefetch_starvation`` (one worker), and the
worker side of ``events_disabled`` (Celery's ``processed`` counter in heartbeats is
per process, so a second in-process worker without events would make every worker
look blind). The docker-compose stack shows ``unread_results`` too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
from typing import Any

from celery import Celery
from celery.worker import state as worker_state

from ..config import Settings
from .app import DEFAULT_QUEUE, STOPPING, make_app
from .traffic import TrafficGenerator

log = logging.getLogger("flower_practices.demo")

#: the in-process broker
DEMO_BROKER = "memory://"


def demo_settings() -> Settings:
    """Short thresholds so that every finding shows within a minute."""
    return Settings(
        evaluation_interval=2.0,
        probe_interval=3.0,
        clear_after_seconds=300.0,
        practices={
            "queue_without_consumer": {"grace_seconds": 10.0, "window_seconds": 8.0},
            "queue_starvation": {"max_wait_seconds": 3.0, "window_seconds": 60.0,
                                 "min_samples": 5},
            "missing_time_limit": {"max_runtime_seconds": 5.0, "window_seconds": 600.0},
            "retry_storm": {"window_seconds": 60.0, "min_zero_delay_retries": 5},
            "single_default_queue": {"window_seconds": 30.0},
            "missed_periodic_task": {"grace_seconds": 5.0},
            # the in-memory broker starts empty: no backlog to wait out
            "events_disabled": {"min_received": 5, "window_seconds": 120.0,
                                "warmup_seconds": 0.0},
        },
    )


def make_demo_app() -> Celery:
    app = make_app(DEMO_BROKER)
    # the memory transport polls its queues; poll often so the UI feels live
    app.conf.broker_transport_options = {"polling_interval": 0.1}
    # the threads pool resolves tasks through the default app (as a worker process would)
    app.set_default()
    return app


class WorkerThread(threading.Thread):
    """A real Celery worker (threads pool, task events on) running in a thread."""

    def __init__(self, app: Celery, hostname: str, *, concurrency: int = 2) -> None:
        super().__init__(name="flower-practices-demo-worker", daemon=True)
        self.worker = app.WorkController(
            hostname=hostname, pool="threads", concurrency=concurrency,
            queues=[DEFAULT_QUEUE], task_events=True, without_heartbeat=False,
            without_mingle=True, without_gossip=True, loglevel="WARNING",
        )

    def run(self) -> None:
        self.worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        worker_state.should_terminate = 0  # the consumer loop's warm-shutdown flag
        if self.is_alive():
            self.join(timeout)


def _quiet_celery_logs() -> None:
    # the demo fails tasks on purpose: keep their tracebacks out of the console
    for name in ("celery.app.trace", "celery.worker", "celery.worker.strategy",
                 "celery.worker.consumer", "celery.pool", "kombu"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _start_flower(app: Celery, host: str, port: int) -> Any:
    """Flower with the practices plugin, serving on the running IOLoop."""
    import flower.options  # noqa: F401 - defines Flower's tornado options
    from flower.app import Flower
    from flower.urls import settings as flower_settings
    from tornado.ioloop import IOLoop
    from tornado.options import options

    from ..flower_plugin.plugin import install

    options.port = port
    options.address = host
    # Flower's API needs authentication unless this is set; the demo has no auth and
    # listens on localhost by default (read at request time, so set for this process only)
    os.environ.setdefault("FLOWER_UNAUTHENTICATED_API", "true")
    flower_app = Flower(capp=app, options=options, io_loop=IOLoop.current(),
                        **flower_settings)
    install(flower_app, demo_settings())
    flower_app.start_http_server()
    flower_app.events.start()
    flower_app.started = True
    flower_app.update_workers()
    flower_app.flower_practices.start()
    return flower_app


def _stop_flower(flower_app: Any) -> None:
    flower_app.flower_practices.stop()
    flower_app.events.stop()
    flower_app.executor.shutdown(wait=False)
    flower_app.started = False


async def _serve(host: str, port: int, metrics_port: int) -> None:
    from ..exporter.handlers import make_application
    from ..exporter.server import make_registry

    app = make_demo_app()
    worker = WorkerThread(app, f"demo@{socket.gethostname()}")
    worker.start()
    flower_app = _start_flower(app, host, port)
    engine = flower_app.flower_practices.engine
    # /metrics, /api/practices and /healthz of the same engine, without Flower's auth
    metrics_server = make_application(engine, make_registry(engine)).listen(
        metrics_port, address=host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    traffic = TrafficGenerator(app)
    traffic.start()
    shown = host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    print(f"flower-practices demo running (in-memory broker, worker {worker.worker.hostname})",
          flush=True)
    print(f"  Flower:      http://{shown}:{port}/", flush=True)
    print(f"  Practices:   http://{shown}:{port}/practices", flush=True)
    print(f"  API:         http://{shown}:{port}/api/practices", flush=True)
    print(f"  Metrics:     http://{shown}:{metrics_port}/metrics "
          f"(also /api/practices, /healthz)", flush=True)
    print("Findings appear within a minute. Press Ctrl-C to stop.", flush=True)
    try:
        await stop.wait()
    finally:
        print("stopping the demo...", flush=True)
        metrics_server.stop()
        traffic.stop()
        STOPPING.set()
        _stop_flower(flower_app)
        worker.stop()
        print("demo stopped", flush=True)


def run_demo(host: str = "127.0.0.1", port: int = 5555, metrics_port: int = 9808) -> int:
    """Run the demo until SIGINT/SIGTERM; returns the exit code."""
    _quiet_celery_logs()
    try:
        asyncio.run(_serve(host, port, metrics_port))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        print("demo stopped", flush=True)
    return 0
