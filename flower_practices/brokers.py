"""Classifying broker and result-backend URLs, and redacting their credentials."""

from __future__ import annotations

import re

#: kombu transports backed by a database: polled, and no fanout, so no events
DATABASE_BROKER_SCHEMES = frozenset((
    "sqla", "sqlalchemy", "django", "mongodb", "mongodb+srv", "couchdb", "zookeeper",
))
#: kombu transports that speak AMQP to RabbitMQ, which counts each queue's consumers
AMQP_SCHEMES = frozenset(("amqp", "amqps", "pyamqp", "librabbitmq"))
#: result backends that store results in an SQL database
DATABASE_BACKEND_SCHEMES = frozenset(("db", "django-db"))


def scheme(url: str | None) -> str:
    """The URL scheme, lower-cased; ``sqla+postgresql://`` gives ``sqla``."""
    if not url:
        return ""
    head = url.split("://", 1)[0] if "://" in url else url.split(":", 1)[0]
    return head.split("+", 1)[0].lower()


#: why no event stream runs on a database broker (the stream status says it)
NO_EVENTS_ON_DATABASE = "the broker is a database: Celery events cannot flow over it"


def is_database_broker(url: str | None) -> bool:
    return scheme(url) in DATABASE_BROKER_SCHEMES


def is_amqp_broker(url: str | None) -> bool:
    """The broker is RabbitMQ over AMQP (it reports consumer counts itself)."""
    return scheme(url) in AMQP_SCHEMES


def is_database_backend(url: str | None) -> bool:
    return scheme(url) in DATABASE_BACKEND_SCHEMES


_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][\w+.-]*://)(?P<user>[^:@/]*):(?P<pw>[^@/]*)@")


def redact(url: str | None) -> str:
    """``amqp://guest:secret@host//`` -> ``amqp://guest:***@host//``."""
    if not url:
        return ""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)


#: kombu transports whose URL path is a Redis database number
REDIS_TRANSPORTS = frozenset(("redis", "rediss", "sentinel"))


def broker_url_problem(url: str) -> str | None:
    """Why ``url`` can never work as a broker URL, or None.

    Checked once at start-up, so that a typo fails fast instead of being retried forever:
    an unknown scheme, a port that is not a number or out of 1-65535, a Redis database
    that is not a number, a transport whose package is not installed. An unreachable host
    is not such a problem (it may come up later: that is retried).
    """
    from kombu import Connection
    from kombu.transport import get_transport_cls

    for one in [part.strip() for part in url.split(";") if part.strip()]:
        shown = redact(one)
        try:
            conn = Connection(one)
            transport = conn.transport_cls
            if isinstance(transport, str):
                get_transport_cls(transport)
        except KeyError:
            return f"broker URL {shown!r}: unknown scheme {scheme(one)!r}"
        except ValueError as exc:
            return f"broker URL {shown!r}: {exc}"
        except ImportError as exc:
            if is_database_broker(one):
                continue  # no events there anyway: the exporter says so and keeps serving
            return (f"broker URL {shown!r}: its transport needs the package "
                    f"{exc.name or exc} (not installed)")
        if conn.port is not None and not 0 < int(conn.port) <= 65535:
            return f"broker URL {shown!r}: port {conn.port} is out of range 1-65535"
        vhost = conn.virtual_host
        if transport in REDIS_TRANSPORTS and isinstance(vhost, str) \
                and vhost not in ("", "/") and not vhost.lstrip("/").isdigit():
            return f"broker URL {shown!r}: Redis database {vhost!r} is not a number"
    return None
