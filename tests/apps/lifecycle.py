"""Task-lifecycle workloads (prefork): recycled pool processes, revoke, expiry, time limits.

``lifecycle.sleepy`` publishes its pool process's pid to the Redis key it is given (the
broker's Redis, or ``pid_store`` / ``FP_TEST_PID_REDIS`` when the broker is RabbitMQ) and
sleeps: no time limit, so a test can revoke it with ``terminate=True``.
``lifecycle.limited`` has a per-task hard ``time_limit`` it overruns;
``lifecycle.bounded`` one it stays within; ``lifecycle.napper``
sleeps with no limit of its own (tests give it one per call); ``lifecycle.quick``
returns at once. ``make_app(broker)`` builds a fresh copy for tests.
"""

import os
import time

from celery import Celery

from tests.apps import one_at_a_time_app
from tests.apps.killable import publish_pid

#: lifecycle.limited's hard time limit (seconds)
LIMIT = 1.5
#: lifecycle.bounded's hard time limit (seconds): it sleeps within it
BOUNDED_LIMIT = 30


def make_app(broker: str, pid_store: str | None = None) -> Celery:
    app = one_at_a_time_app("lifecycle", broker)

    @app.task(name="lifecycle.sleepy", shared=False)
    def sleepy(key, seconds):
        publish_pid(pid_store or broker, key)
        time.sleep(seconds)

    @app.task(name="lifecycle.limited", shared=False, time_limit=LIMIT)
    def limited(seconds):
        time.sleep(seconds)

    @app.task(name="lifecycle.napper", shared=False)
    def napper(seconds):
        time.sleep(seconds)

    @app.task(name="lifecycle.bounded", shared=False, time_limit=BOUNDED_LIMIT)
    def bounded(seconds):
        time.sleep(seconds)

    @app.task(name="lifecycle.quick", shared=False)
    def quick():
        return None

    return app


app = make_app(os.environ.get("FP_TEST_BROKER", "memory://"),
               os.environ.get("FP_TEST_PID_REDIS") or None)
