"""result_backend_database: results are stored in an SQL database (``db+*``, ``django-db``).

Found at start-up from the result backend URL (``ctx.result_backend``, the exporter's
``--result-backend`` or the app's ``result_backend``). Every task-succeeded of a task whose
result is stored (``ignore_result`` not set, known when the app is loaded; every task
otherwise) counts one row written, in ``celery_practice_violations_total``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..brokers import is_database_backend, scheme
from ..events.types import TASK_SUCCEEDED
from ..findings import Condition
from .base import Rule

if TYPE_CHECKING:
    from ..appinfo import AppInfo


class ResultBackendDatabase(Rule):
    id = "result_backend_database"
    defaults: dict[str, Any] = {}
    needs_events = False

    def __init__(self, ctx, options: dict[str, Any]) -> None:
        super().__init__(ctx, options)
        backend = ctx.result_backend
        app = ctx.app
        self.source = "result backend URL"
        if not is_database_backend(backend) and app is not None and is_database_backend(
                app.result_backend):
            backend, self.source = app.result_backend, "app config"
        self.backend = backend if is_database_backend(backend) else None
        self.rows_written = 0

    def hooks(self):
        return {TASK_SUCCEEDED: self._on_succeeded} if self.backend else {}

    def _on_succeeded(self, event: dict, rec: Any) -> None:
        if rec is None:
            return
        app = self.ctx.app
        if app is not None:
            info = app.tasks.get(rec.name)
            if info is not None and info.ignore_result:
                return
        self.rows_written += 1
        self.count(rec.queue or None, rec.name or None)

    def evaluate(self, now: float) -> Iterable[Condition]:
        if not self.backend:
            return
        evidence: dict[str, Any] = {"backend": scheme(self.backend), "source": self.source,
                                    "results_written_seen": self.rows_written}
        summary = (f"task results are stored in an SQL database ({scheme(self.backend)} "
                   "result backend): every result is a row written to it")
        app = self.ctx.app
        if app is not None:
            storing = sorted(n for n, t in app.tasks.items() if not t.ignore_result)
            evidence["tasks_storing_results"] = len(storing)
            evidence["tasks_storing_results_sample"] = storing[:10]
            evidence["source"] = "app config" if self.source == "app config" else [
                self.source, "app config"]
            if storing:
                summary += f"; {len(storing)} task(s) do not set ignore_result"
        if not self.ctx.events_supported:
            evidence["results_written_seen"] = None
        yield Condition(summary=summary, evidence=evidence)

    @classmethod
    def static_check(cls, app: AppInfo) -> list[tuple[str | None, str]]:
        if not is_database_backend(app.result_backend):
            return []
        return [(None, f"result backend '{scheme(app.result_backend)}' writes every result "
                       "as a row in an SQL database")]
