"""``acks_late`` + ``task_reject_on_worker_lost``: a task whose pool process a test kills
(what the OOM killer does) is handed back to the broker and runs again.

``rejecting.hog`` publishes its pool process's pid at the Redis key it is given and
sleeps on its first delivery (under a hard ``time_limit`` far past the sleep); on any
later delivery it returns at once.
``rejecting.overrun`` sleeps past its hard ``time_limit`` of 2 s.
``rejecting.bouncer`` hands its message back itself (``raise Reject(requeue=True)``) on
its first delivery and returns at once on the next; ``rejecting.deferring`` does the same
through a helper function (``_defer_first``), its body never naming ``Reject``.
``make_app(broker, pid_store)`` builds a fresh copy (pids on ``pid_store``, the broker's
Redis by default; FP_TEST_PID_REDIS for the worker).
"""

import os
import time

from celery import Celery

from tests.apps import one_at_a_time_app


def _defer_first(store: str, key: str) -> None:
    """Hand the message back on its first delivery (``Reject``, imported here only)."""
    import redis
    from celery.exceptions import Reject

    if redis.Redis.from_url(store).incr(f"{key}:runs") == 1:
        raise Reject("not now", requeue=True)


def make_app(broker: str, pid_store: str | None = None) -> Celery:
    app = one_at_a_time_app("rejecting", broker, task_acks_late=True,
                            task_reject_on_worker_lost=True)

    # a hard time limit well past its sleep: a well-behaved task, so that its run before
    # the kill (seconds on a busy machine) is no missing_time_limit either
    @app.task(name="rejecting.hog", shared=False, time_limit=600)
    def hog(key, seconds):
        import redis

        store = redis.Redis.from_url(pid_store or broker)
        if store.incr(f"{key}:runs") == 1:
            store.set(key, os.getpid(), ex=600)
            time.sleep(seconds)

    @app.task(name="rejecting.overrun", shared=False, time_limit=2)
    def overrun(seconds):
        """Killed by its hard time limit (Celery replaces the pool process)."""
        time.sleep(seconds)

    @app.task(name="rejecting.bouncer", shared=False, time_limit=600)
    def bouncer(key):
        import redis
        from celery.exceptions import Reject

        if redis.Redis.from_url(pid_store or broker).incr(f"{key}:runs") == 1:
            raise Reject("not now", requeue=True)

    @app.task(name="rejecting.deferring", shared=False, time_limit=600)
    def deferring(key):
        _defer_first(pid_store or broker, key)

    @app.task(name="rejecting.quick", shared=False)
    def quick():
        return None

    return app


app = make_app(os.environ.get("FP_TEST_BROKER", "memory://"),
               os.environ.get("FP_TEST_PID_REDIS") or None)
