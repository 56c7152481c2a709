"""The rule interface every practice implements, and the context rules read.

A rule observes events cheaply through :meth:`Rule.hooks` (O(1), no I/O, no allocation
beyond bounded structures), and :meth:`Rule.evaluate` runs periodically off the hot path,
yielding :class:`~flower_practices.findings.Condition` objects for what holds now.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..findings import Condition

if TYPE_CHECKING:
    from ..appinfo import AppInfo
    from ..config import Settings
    from ..metrics import BaseMetrics
    from ..probes.results import ResultStore
    from ..state import RuntimeState, TaskRecord

Hook = Callable[[dict, "TaskRecord | None"], None]


@dataclass(slots=True)
class RuleContext:
    """What every rule may read. ``app`` is None unless ``-A proj`` was given."""

    settings: Settings
    state: RuntimeState
    metrics: BaseMetrics
    broker_url: str
    result_backend: str | None = None
    app: AppInfo | None = None
    results: ResultStore | None = None
    #: the ingestion path can see events at all (False on database brokers)
    events_supported: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class Rule:
    """Base class: set ``id`` and ``defaults``; override what you need."""

    id: ClassVar[str] = ""
    #: documented default thresholds; every key may be overridden in [practices.<id>]
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, ctx: RuleContext, options: dict[str, Any]) -> None:
        self.ctx = ctx
        self.options = options

    def hooks(self) -> dict[str, Hook]:
        """Map event type -> callable(event, task_record) run on the hot path."""
        return {}

    def evaluate(self, now: float) -> Iterable[Condition]:
        """Yield the conditions that hold now (periodic, off the hot path)."""
        return ()

    def coverage(self) -> str:
        """``"active"`` or ``"unsupported: <why>"`` for this deployment."""
        return "active"

    def count(self, queue: str | None, task: str | None, n: int = 1) -> None:
        """Increment ``celery_practice_violations_total`` for this practice."""
        state = self.ctx.state
        self.ctx.metrics.count_violation(
            self.id,
            state.queue_label(queue) if queue else "",
            state.task_label(task) if task else "",
            n,
        )
