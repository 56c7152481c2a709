"""Test helpers: real brokers, real Celery workers in subprocesses, an in-process exporter."""
