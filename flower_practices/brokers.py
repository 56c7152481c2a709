"""Classifying broker and result-backend URLs, and redacting their credentials."""

from __future__ import annotations

import re

#: kombu transports backed by a database: polled, and no fanout, so no events
DATABASE_BROKER_SCHEMES = frozenset((
    "sqla", "sqlalchemy", "django", "mongodb", "mongodb+srv", "couchdb", "zookeeper",
))
#: result backends that store results in an SQL database
DATABASE_BACKEND_SCHEMES = frozenset(("db", "django-db"))


def scheme(url: str | None) -> str:
    """The URL scheme, lower-cased; ``sqla+postgresql://`` gives ``sqla``."""
    if not url:
        return ""
    head = url.split("://", 1)[0] if "://" in url else url.split(":", 1)[0]
    return head.split("+", 1)[0].lower()


def is_database_broker(url: str | None) -> bool:
    return scheme(url) in DATABASE_BROKER_SCHEMES


def is_database_backend(url: str | None) -> bool:
    return scheme(url) in DATABASE_BACKEND_SCHEMES


_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^:@/]*):(?P<pw>[^@/]*)@")


def redact(url: str | None) -> str:
    """``amqp://guest:secret@host//`` -> ``amqp://guest:***@host//``."""
    if not url:
        return ""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)
