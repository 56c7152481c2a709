"""Tasks whose pool process a test can kill, and tasks that fail by exception class.

``killable.hog`` / ``killable.sleepy`` publish their process id to the Redis key they are
given (on the broker's Redis, or on ``pid_store`` / ``FP_TEST_PID_REDIS`` when the broker
is RabbitMQ) and sleep, so a test can SIGKILL exactly the pool process
running them. ``killable.hog_retried`` does the same on its first run with ``retry_on_worker_lost``
(Celery >= 5.7: a killed pool process makes the worker retry it, at once here) and
returns at once when retried. ``killable.boom`` raises the built-in exception class it
is named.
``killable.gated`` runs until the test sets its gate key (on the same Redis), so a test
decides when a pool slot frees, whatever the machine's load.
``make_app(broker)`` builds a fresh copy for tests (broker from FP_TEST_BROKER).
"""

import builtins
import os
import time

from celery import Celery

from tests.apps import one_at_a_time_app

#: exception classes ``killable.boom`` may raise (built-ins only, by name)
BOOM = ("ValueError", "KeyError", "TypeError", "LookupError")


def publish_pid(redis_url: str, key: str) -> None:
    """Publish this (pool) process's pid at ``key`` on ``redis_url`` for the test."""
    import redis

    redis.Redis.from_url(redis_url).set(key, os.getpid(), ex=600)


def make_app(broker: str, pid_store: str | None = None) -> Celery:
    app = one_at_a_time_app("killable", broker)

    @app.task(name="killable.hog", shared=False)
    def hog(key, seconds):
        publish_pid(pid_store or broker, key)
        time.sleep(seconds)

    @app.task(name="killable.hog_retried", shared=False, bind=True,
              retry_on_worker_lost=True, default_retry_delay=0, max_retries=3)
    def hog_retried(self, key, seconds):
        if self.request.retries:
            return None
        publish_pid(pid_store or broker, key)
        time.sleep(seconds)

    @app.task(name="killable.sleepy", shared=False)
    def sleepy(key, seconds):
        publish_pid(pid_store or broker, key)
        time.sleep(seconds)

    @app.task(name="killable.gated", shared=False)
    def gated(gate, seconds):
        import redis

        store = redis.Redis.from_url(pid_store or broker)
        deadline = time.monotonic() + seconds
        while not store.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.05)

    @app.task(name="killable.boom", shared=False)
    def boom(kind):
        if kind not in BOOM:
            raise RuntimeError("unknown kind")
        raise getattr(builtins, kind)("secret-message-never-exported")

    @app.task(name="killable.quick", shared=False)
    def quick():
        return None

    return app


app = make_app(os.environ.get("FP_TEST_BROKER", "memory://"),
               os.environ.get("FP_TEST_PID_REDIS") or None)
