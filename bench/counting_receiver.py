"""Benchmark subject (a) on RabbitMQ: Celery's own ``EventReceiver``, counting events.

Usage: ``python bench/counting_receiver.py BROKER_URL COUNT_FILE [APP]`` (runs until
killed; APP: a module whose ``app`` supplies the configuration, e.g. the event queue TTL);
on SIGUSR1 it writes the number of events received to COUNT_FILE, so the benchmark can
check that nothing was lost. The handler is one integer increment (negligible next to
the receiver's per-event work).
"""

from __future__ import annotations

import importlib
import signal
import sys
from pathlib import Path

from celery import Celery


def main(broker: str, count_file: str, app_module: str | None = None) -> None:
    app = Celery("bench", broker=broker, set_as_current=False)
    if app_module:
        conf = importlib.import_module(app_module).app.conf
        for key in ("event_queue_ttl", "event_queue_expires"):  # not its broker_url
            app.conf[key] = conf[key]
    seen = [0]

    def handler(event: dict) -> None:
        seen[0] += 1

    def dump(*_: object) -> None:
        Path(count_file).write_text(str(seen[0]))

    signal.signal(signal.SIGUSR1, dump)
    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": handler})
        receiver.capture(limit=None, timeout=None, wakeup=False)


if __name__ == "__main__":
    main(*sys.argv[1:4])
