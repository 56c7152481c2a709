"""Periodic tasks for the beat practices' tests; ``make_app(broker, entries)`` builds a
fresh copy whose ``beat_schedule`` holds the named entries (``FP_TEST_BEAT_ENTRIES``,
comma separated, for the ``celery beat`` and ``celery worker`` subprocesses):

- ``tick``: ``periodic.tick`` every 2 s, runs 0.3 s (runs of a backlog drained by two
  worker threads start together: not an overlap);
- ``slow``: ``periodic.slow`` every 2 s, sleeps 3.5 s (longer than its period);
- ``flaky``: ``periodic.flaky`` every 3 s, fails with ConnectionError on its first
  attempt and retries with a 1 s back-off;
- ``pausing``: ``periodic.pausing`` every 2 s until the file named by
  ``FP_TEST_PAUSE_FILE`` exists, then never (a crontab's hours ending: the schedule
  pauses while beat runs on).

``periodic.later`` is never scheduled: the tests send it with a countdown.
"""

import os
import time

from celery import Celery
from celery.schedules import schedstate, schedule


class Pausing(schedule):
    """Due every ``run_every`` until ``FP_TEST_PAUSE_FILE`` exists, then paused."""

    def is_due(self, last_run_at):  # noqa: ANN001, ANN201 - Celery's signature
        path = os.environ.get("FP_TEST_PAUSE_FILE")
        if path and os.path.exists(path):
            return schedstate(False, 0.5)
        return super().is_due(last_run_at)


ENTRIES = {
    "tick": {"task": "periodic.tick", "schedule": 2.0},
    "slow": {"task": "periodic.slow", "schedule": 2.0},
    "flaky": {"task": "periodic.flaky", "schedule": 3.0},
    "pausing": {"task": "periodic.pausing", "schedule": Pausing(2.0)},
}


def make_app(broker: str, entries: str = "") -> Celery:
    app = Celery("periodic", broker=broker, set_as_current=False)
    app.conf.update(
        task_send_sent_event=True,
        worker_send_task_events=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_ignore_result=True,
        beat_max_loop_interval=0.5,
        beat_schedule={k: dict(ENTRIES[k]) for k in entries.split(",") if k in ENTRIES},
    )

    @app.task(name="periodic.tick", shared=False)
    def tick() -> None:
        time.sleep(0.3)

    @app.task(name="periodic.slow", shared=False)
    def slow() -> None:
        time.sleep(3.5)

    @app.task(name="periodic.flaky", shared=False, bind=True, max_retries=3,
              autoretry_for=(ConnectionError,), retry_backoff=1, retry_jitter=False)
    def flaky(self) -> None:
        if self.request.retries < 1:
            raise ConnectionError("transient")

    @app.task(name="periodic.pausing", shared=False)
    def pausing() -> None:
        return None

    @app.task(name="periodic.later", shared=False)
    def later() -> None:
        return None

    return app


app = make_app(os.environ.get("FP_TEST_BROKER", "memory://"),
               os.environ.get("FP_TEST_BEAT_ENTRIES", ""))
