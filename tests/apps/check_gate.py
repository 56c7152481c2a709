"""An app for ``flower-practices check`` as a CI gate (tests/test_check_command.py).

Everything app-wide is well configured (routes, time limits, ignore_result, json, events
on), so the findings are task-level only:

- ``gate.fetch`` and ``gate.legacy_fetch``: no retry policy, fail with ConnectionError
  (retryless_failure, statically and at run time; ``gate.legacy_*`` is the one a config
  ignores);
- ``gate.forever``: ``autoretry_for`` with ``max_retries=None`` (unbounded retries);
- ``gate.forever_bound``: ``self.retry()`` with ``max_retries=None`` (unbounded retries);
- ``gate.capped``: ``autoretry_for`` with back-off capped at ``retry_backoff_max=0``
  (every automatic retry with no delay);
- ``gate.bounded_call``, ``gate.bounded_kwargs``, ``gate.default_limit``: the same
  without a static finding (a limit per call, in ``retry_kwargs``, Celery's default 3);
- ``gate.wrapped``: a ``functools.wraps`` decorator under ``@app.task`` (its location is
  the decorated function's, not the wrapper's);
- ``gate.sync``: a class-based task (location: its ``run``);
- ``gate.dynamic``: defined by ``exec`` (no source file: no location).
"""

import functools
import os

from celery import Celery, Task
from kombu import Queue


def logged(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)
    return wrapper


def make_app(broker: str) -> Celery:
    app = Celery("check_gate", broker=broker, set_as_current=False)
    app.conf.update(
        task_send_sent_event=True,
        worker_send_task_events=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_time_limit=60,
        task_default_queue="celery",
        task_queues=[Queue("celery"), Queue("io")],
        task_routes={"gate.forever": {"queue": "io"}},
    )

    @app.task(name="gate.fetch", shared=False)
    def fetch(n):
        raise ConnectionError("upstream refused the connection")

    @app.task(name="gate.legacy_fetch", shared=False)
    def legacy_fetch(n):
        raise ConnectionError("upstream refused the connection")

    @app.task(name="gate.forever", shared=False, autoretry_for=(ConnectionError,),
              retry_backoff=True, max_retries=None)
    def forever(n):
        return n

    @app.task(name="gate.forever_bound", shared=False, bind=True, max_retries=None)
    def forever_bound(self, n):
        try:
            return n
        except ConnectionError as exc:
            raise self.retry(exc=exc, countdown=5) from None

    @app.task(name="gate.bounded_call", shared=False, bind=True, max_retries=None)
    def bounded_call(self, n):
        try:
            return n
        except ConnectionError as exc:
            raise self.retry(exc=exc, countdown=5, max_retries=3) from None

    @app.task(name="gate.bounded_kwargs", shared=False, autoretry_for=(ConnectionError,),
              retry_backoff=True, max_retries=None, retry_kwargs={"max_retries": 4})
    def bounded_kwargs(n):
        return n

    @app.task(name="gate.capped", shared=False, autoretry_for=(ConnectionError,),
              retry_backoff=True, retry_backoff_max=0, max_retries=3)
    def capped(n):
        return n

    @app.task(name="gate.default_limit", shared=False, autoretry_for=(ConnectionError,),
              retry_backoff=True)
    def default_limit(n):
        return n

    @app.task(name="gate.wrapped", shared=False, autoretry_for=(ConnectionError,),
              retry_backoff=True, max_retries=2)
    @logged
    def wrapped(n):
        return n

    class Sync(Task):
        name = "gate.sync"
        autoretry_for = (ConnectionError,)
        retry_backoff = True
        max_retries = 2

        def run(self, n):
            return n

    app.register_task(Sync())

    namespace: dict = {"__name__": __name__}
    exec("def dynamic(n):\n    return n\n", namespace)  # noqa: S102 -- no source file
    app.task(name="gate.dynamic", shared=False)(namespace["dynamic"])
    return app


app = make_app(os.environ.get("FP_TEST_BROKER", "memory://"))
