"""Event ingestion: validation of raw Celery events and the broker consumer thread."""
