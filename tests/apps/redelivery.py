"""A Celery app for ``duplicate_delivery``: a Redis broker with a short visibility timeout.

``FP_TEST_BROKER`` broker URL; ``FP_VISIBILITY_TIMEOUT`` seconds (default 3); the periodic
restore of unacknowledged messages runs every second (``unacked_restore_interval=1``,
``unacked_restore_throttle=1``; kombu's default is a scan every ~100 s), so a message
reserved longer than the visibility timeout goes back to its queue within a second or two.
``make_app`` builds the same app for the test process (the producer side).
"""

import os
import time

from celery import Celery


def make_app(broker: str, *, visibility_timeout: float = 3.0) -> Celery:
    app = Celery("redelivery", broker=broker, set_as_current=False)
    app.conf.update(
        broker_transport_options={"visibility_timeout": visibility_timeout,
                                  "unacked_restore_interval": 1,
                                  "unacked_restore_throttle": 1},
        task_default_queue="celery",
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
        task_send_sent_event=True,
    )

    @app.task(name="redelivery.later", shared=False, ignore_result=True, time_limit=30)
    def later(n):
        return None

    @app.task(name="redelivery.sleepy", shared=False, ignore_result=True, time_limit=60)
    def sleepy(seconds):
        time.sleep(seconds)
        return None

    @app.task(name="redelivery.acks_late", shared=False, ignore_result=True, acks_late=True,
              time_limit=60)
    def acks_late(seconds):
        time.sleep(seconds)
        return None

    @app.task(name="redelivery.flaky", shared=False, bind=True, ignore_result=True,
              max_retries=2, time_limit=30)
    def flaky(self, countdown):
        if self.request.retries < 2:
            raise self.retry(countdown=countdown)
        return None

    return app


app = make_app(os.environ.get("FP_TEST_BROKER", "memory://"),
               visibility_timeout=float(os.environ.get("FP_VISIBILITY_TIMEOUT", "3")))
