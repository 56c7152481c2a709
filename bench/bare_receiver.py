"""Benchmark subject (a): Celery's own ``EventReceiver`` with an empty handler.

Usage: ``python bench/bare_receiver.py BROKER_URL`` (runs until killed).
"""

from __future__ import annotations

import sys

from celery import Celery


def main(broker: str) -> None:
    app = Celery("bench", broker=broker, set_as_current=False)
    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": lambda event: None})
        receiver.capture(limit=None, timeout=None, wakeup=False)


if __name__ == "__main__":
    main(sys.argv[1])
