"""Tasks that end with no outcome event of their own, as Celery intends.

``replaced.entry`` replaces itself with ``replaced.target`` (``Task.replace`` raises
``Ignore``); ``replaced.ignoring`` raises ``Ignore`` itself (it handed its message on, as
a task that stores its own state does). Celery then acknowledges the message and sends
no task-succeeded/failed for them: the run is over. ``make_app(broker)`` builds a fresh
copy for tests.
"""

import os

from celery import Celery
from celery.exceptions import Ignore

from tests.apps import one_at_a_time_app


def make_app(broker: str) -> Celery:
    app = one_at_a_time_app("replaced", broker)

    @app.task(name="replaced.entry", bind=True, shared=False)
    def entry(self, n):
        raise self.replace(target.si(n))

    @app.task(name="replaced.target", shared=False)
    def target(n):
        return n

    @app.task(name="replaced.ignoring", shared=False)
    def ignoring(n):
        raise Ignore()

    return app


app = make_app(os.environ.get("FP_TEST_BROKER", "memory://"))
