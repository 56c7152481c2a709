"""A module of a project with ``Reject`` in scope under another name, for the static
check in ``flower_practices.appinfo`` (tests/test_reject_static_check.py): anything a task
reaches here may raise it, even ``plain``, which a task of another module calls as
``module.plain()``.
"""

from celery.exceptions import Reject as Bounce  # noqa: F401  (in scope is the point)


def plain() -> int:
    return 1
