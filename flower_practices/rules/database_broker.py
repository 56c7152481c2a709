"""database_broker: the broker transport is a database (``sqla+*``, ``django``, ``mongodb``...).

Reported at start-up from the broker URL in use (``ctx.broker_url``; the evidence
names where it came from, ``ctx.broker_source``: the exporter's ``--broker`` option or
the app's configuration) and,
when the app is loaded, from the app's own ``broker_url``. Database transports are polled
and have no fanout exchange, so Celery events cannot flow over them: the exporter keeps
running (``/healthz`` answers 503 saying why) and this finding is all it can report.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..brokers import is_database_broker, scheme
from ..findings import Condition
from .base import Rule

if TYPE_CHECKING:
    from ..appinfo import AppInfo


class DatabaseBroker(Rule):
    id = "database_broker"
    defaults: dict[str, Any] = {}
    needs_events = False

    def __init__(self, ctx, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        self._counted = False

    def _sources(self) -> list[tuple[str, str]]:
        """(source, transport) for every database broker URL we know of."""
        out = []
        if is_database_broker(self.ctx.broker_url):
            out.append((self.ctx.broker_source, scheme(self.ctx.broker_url)))
        app = self.ctx.app
        if app is not None and is_database_broker(app.broker_url) and (
                not out or app.broker_url != self.ctx.broker_url):
            out.append(("app config", scheme(app.broker_url)))
        return out

    def evaluate(self, now: float) -> Iterable[Condition]:
        sources = self._sources()
        if not sources:
            return
        if not self._counted:  # one occurrence: the deployment, found at start-up
            self._counted = True
            self.count(None, None)
        transports = sorted({t for _, t in sources})
        evidence: dict[str, Any] = {
            "transport": transports[0] if len(transports) == 1 else transports,
            "source": sources[0][0] if len(sources) == 1 else [s for s, _ in sources],
            "events_can_flow": False,
            "exporter_receives_events": self.ctx.events_supported,
        }
        summary = (f"the broker is a database ({', '.join(transports)} transport): it is "
                   "polled, loads the database and cannot carry Celery events, so tasks "
                   "cannot be monitored; use Redis or RabbitMQ")
        yield Condition(summary=summary, evidence=evidence)

    @classmethod
    def static_check(cls, app: AppInfo) -> list[tuple[str | None, str]]:
        if not is_database_broker(app.broker_url):
            return []
        return [(None, f"broker transport '{scheme(app.broker_url)}' is a database: it is "
                       "polled, loads the database and cannot carry monitoring events")]
