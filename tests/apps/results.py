"""Stored results read three ways, for the unread_results tests; ``make_app(broker)``
builds a fresh copy (the broker's Redis is the result backend too).

The same small task under four names, one per way its caller treats the result:
``results.waited`` (``.delay(x).get()``), ``results.later`` (``.get()`` seconds after
the success, on the AsyncResult kept), ``results.dropped`` (fire-and-forget), and
``results.from_worker``, sent by ``results.fanout`` from a worker, read by nobody.

``key_prefix`` (the worker reads ``FP_TEST_KEY_PREFIX``): the app shares its Redis with
others, as ``global_keyprefix`` in both ``broker_transport_options`` and
``result_backend_transport_options`` sets it up -- every queue, result key and result
channel then carries the prefix.
"""

import os
import time

from celery import Celery


def make_app(broker: str, key_prefix: str = "") -> Celery:
    app = Celery("results", broker=broker, backend=broker, set_as_current=False)
    if key_prefix:
        app.conf.broker_transport_options = {"global_keyprefix": key_prefix}
        app.conf.result_backend_transport_options = {"global_keyprefix": key_prefix}
    app.conf.update(
        task_send_sent_event=True,
        worker_send_task_events=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
    )

    def add(x):
        time.sleep(0.1)  # a short piece of work the caller waits for
        return x + 1

    for name in ("results.waited", "results.later", "results.dropped",
                 "results.from_worker", "results.by_id"):
        app.task(name=name, shared=False)(add)

    @app.task(name="results.fanout", shared=False, ignore_result=True)
    def fanout(n):
        """Sends tasks from a worker: no client subscribes to their results."""
        for i in range(n):
            app.tasks["results.from_worker"].delay(i)

    return app


app = make_app(os.environ.get("FP_TEST_BROKER", "memory://"),
               os.environ.get("FP_TEST_KEY_PREFIX", ""))
