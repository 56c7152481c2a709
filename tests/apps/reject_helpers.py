"""Helpers a task may raise ``Reject`` through, for the static check in
``flower_practices.appinfo`` (tests/test_reject_static_check.py).

This module has ``Reject`` in scope under another name, so anything a task reaches here
may raise it; ``plain`` is what a task of another module calls as ``module.plain()``.
"""

from celery.exceptions import Reject as Bounce


def bounce() -> None:
    raise Bounce("not now", requeue=True)


def plain() -> int:
    return 1
