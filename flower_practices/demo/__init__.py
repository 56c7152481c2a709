"""The demo: a Celery app that breaks the practices on purpose, its traffic, and the
one-command embedded run (``flower-practices demo``)."""
