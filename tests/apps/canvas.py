"""Canvas workloads (chain, group, chord, starmap, chunks) and autoretry policies, for the
real-worker false-positive tests; ``make_app(broker, backend)`` builds a fresh copy.

``canvas.add_ignored`` is ``canvas.add`` with ``ignore_result=True``, for chord headers that
do not store their results; ``canvas.flaky``/``canvas.doomed`` retry transient errors
with jittered back-off (the first succeeds eventually, the second exhausts
``max_retries``); ``canvas.noretry`` has no retry policy. ``canvas.route_a/b/c`` are routed
to queues ``a``/``b``/``c`` for the multi-queue and scaling workloads.
"""

import os
import time

from celery import Celery
from kombu import Queue

QUEUES = ("default", "a", "b", "c")
#: the retry tasks (routed to queue ``b``)
RETRY_TASKS = ("canvas.flaky", "canvas.doomed", "canvas.noretry")
#: the canvas tasks (routed to queue ``a``)
CANVAS_TASKS = ("canvas.add", "canvas.mul", "canvas.tsum", "canvas.add_ignored",
                "canvas.polled", "canvas.dropped", "canvas.tail", "canvas.start_chord",
                "canvas.part", "canvas.merge", "canvas.part_ignored",
                "canvas.merge_ignored")
#: how long each canvas task works (the worker's FP_CANVAS_SECONDS, default 0.2 s)
SECONDS = float(os.environ.get("FP_CANVAS_SECONDS", "0.2"))


def make_app(broker: str, backend: str | None) -> Celery:
    app = Celery("canvas", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(
        task_send_sent_event=True,
        worker_send_task_events=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue="default",
        task_queues=[Queue(q) for q in QUEUES],
        task_routes={"canvas.route_a": {"queue": "a"}, "canvas.route_b": {"queue": "b"},
                     "canvas.route_c": {"queue": "c"},
                     **{name: {"queue": "a"} for name in CANVAS_TASKS},
                     **{name: {"queue": "b"} for name in RETRY_TASKS}},
        task_time_limit=60,
        task_soft_time_limit=50,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        result_expires=3600,
    )

    @app.task(name="canvas.add", shared=False)
    def add(x, y=0):
        time.sleep(SECONDS)
        return x + y

    @app.task(name="canvas.mul", shared=False)
    def mul(x, y=2):
        time.sleep(SECONDS)
        return x * y

    @app.task(name="canvas.tsum", shared=False)
    def tsum(values):
        time.sleep(SECONDS)
        return sum(values)

    @app.task(name="canvas.add_ignored", shared=False, ignore_result=True)
    def add_ignored(x, y=0):
        time.sleep(SECONDS)
        return x + y

    # the same work under names of their own, one per way the caller treats the result:
    # polled by id (AsyncResult(id).ready()), never read, the last link of a chain nobody
    # waits for
    app.task(name="canvas.polled", shared=False)(add.run)
    app.task(name="canvas.dropped", shared=False)(add.run)
    app.task(name="canvas.tail", shared=False)(mul.run)

    # a chord started from a task, which nobody waits for; its header and callback store
    # their results (part, merge) or not (part_ignored, merge_ignored)
    app.task(name="canvas.part", shared=False)(add.run)
    app.task(name="canvas.merge", shared=False)(tsum.run)
    app.task(name="canvas.part_ignored", shared=False, ignore_result=True)(add.run)
    app.task(name="canvas.merge_ignored", shared=False, ignore_result=True)(tsum.run)

    @app.task(name="canvas.start_chord", shared=False, ignore_result=True)
    def start_chord(n, fixed=False):
        """Starts a chord of ``n`` header tasks and returns at once."""
        from celery import chord

        suffix = "_ignored" if fixed else ""
        part, merge = app.tasks["canvas.part" + suffix], app.tasks["canvas.merge" + suffix]
        chord(part.s(i) for i in range(n))(merge.s())

    for name in ("canvas.route_a", "canvas.route_b", "canvas.route_c"):
        app.task(name=name, shared=False, ignore_result=True)(_work)

    @app.task(name="canvas.flaky", shared=False, bind=True, ignore_result=True,
              autoretry_for=(ConnectionError,), retry_backoff=0.5, retry_backoff_max=4,
              retry_jitter=True, max_retries=5)
    def flaky(self, key, failures=2):
        """Fails ``failures`` times with a transient error, then succeeds."""
        if self.request.retries < failures:
            raise ConnectionError("transient")
        return None

    @app.task(name="canvas.doomed", shared=False, bind=True, ignore_result=True,
              autoretry_for=(ConnectionError,), retry_backoff=0.5, retry_backoff_max=2,
              retry_jitter=True, max_retries=2)
    def doomed(self, key):
        """Always fails with a transient error: retried until max_retries, then fails."""
        raise ConnectionError("down")

    @app.task(name="canvas.noretry", shared=False, ignore_result=True)
    def noretry(key):
        """Fails with a transient error and has no retry policy (the must-fire case)."""
        raise ConnectionError("down")

    return app


def _work(seconds=0.0):
    """A routed task: sleeps ``seconds`` (0: returns at once)."""
    if seconds:
        time.sleep(seconds)
    return None


_broker = os.environ.get("FP_TEST_BROKER", "memory://")
_backend = os.environ.get("FP_TEST_BACKEND") or (_broker if _broker.startswith("redis") else None)
app = make_app(_broker, _backend)
