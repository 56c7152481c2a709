"""Whether a task's code may raise ``Reject`` (``TaskInfo.raises_reject``), read from a
real Celery app: through its body, helpers of its project (functions, a class's
methods, a module's functions, several calls deep) and a module with ``Reject`` in scope
under another name -- and not for code that never can, nor through a library's
functions. The answer silences ``worker_process_killed`` for ``acks_late`` +
``reject_on_worker_lost`` requeues (tests/test_reject_on_worker_lost_workload.py runs a
helper-raised Reject on real workers)."""

from __future__ import annotations

import json

from celery import Celery

from flower_practices.appinfo import snapshot_app
from tests.apps import reject_helpers


def _later() -> None:
    from celery.exceptions import Reject

    raise Reject("later", requeue=True)


def _outer() -> None:
    _middle()


def _middle() -> None:
    _later()


def _harmless(value: int) -> str:
    return json.dumps({"value": value})


class _Unbound:
    """A proxy outside its context (Flask's ``current_app`` before an app is pushed):
    touching any attribute, ``__class__`` included, raises."""

    def __getattribute__(self, name: str) -> None:
        raise RuntimeError("Working outside of application context.")


_current_app = _Unbound()


class Gate:
    @staticmethod
    def check() -> None:
        _later()


def _app() -> Celery:
    app = Celery("reject-static", broker="memory://", set_as_current=False)

    @app.task(name="rs.body", shared=False)
    def body():
        from celery.exceptions import Reject

        raise Reject("no", requeue=True)

    @app.task(name="rs.helper", shared=False)
    def helper():
        _later()

    @app.task(name="rs.deep", shared=False)
    def deep():
        _outer()

    @app.task(name="rs.method", shared=False)
    def method():
        Gate.check()

    @app.task(name="rs.module_alias", shared=False)
    def module_alias():
        reject_helpers.plain()

    @app.task(name="rs.nested", shared=False)
    def nested():
        def inner():
            def innermost():
                _later()
            return innermost()
        return inner()

    @app.task(name="rs.clean", shared=False)
    def clean(n):
        return _harmless(n) + json.dumps(n)

    @app.task(name="rs.proxy", shared=False)
    def proxy():
        return _current_app.name

    @app.task(name="rs.bound", bind=True, shared=False)
    def bound(self, n):
        return _harmless(n)

    return app


def test_a_reject_the_task_can_reach_in_its_project_is_seen() -> None:
    info = snapshot_app(_app())
    for name in ("rs.body", "rs.helper", "rs.deep", "rs.method", "rs.module_alias",
                 "rs.nested"):
        assert info.tasks[name].raises_reject is True, name


def test_code_that_cannot_raise_reject_is_not_taken_for_it() -> None:
    info = snapshot_app(_app())
    # the helpers it calls, json's functions (a library: not followed) and nothing else
    assert info.tasks["rs.clean"].raises_reject is False
    assert info.tasks["rs.bound"].raises_reject is False
    # a proxy that raises when touched is no helper, and reading the app goes on
    assert info.tasks["rs.proxy"].raises_reject is False
