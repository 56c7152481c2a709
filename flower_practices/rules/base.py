"""The rule interface every practice implements, and the context rules read.

A rule observes events cheaply through :meth:`Rule.hooks` (O(1), no I/O, no allocation
beyond bounded structures), and :meth:`Rule.evaluate` runs periodically off the hot path,
yielding :class:`~flower_practices.findings.Condition` objects for what holds now.

Each evaluation round has two phases. :meth:`Rule.prepare` runs first *without* the
engine lock: a rule that reads an external system (e.g. Redis) does that I/O there,
taking the lock it is given only for short moves of its own data. Then
:meth:`Rule.evaluate` runs *under* the lock and must not do I/O. Rules without I/O only
implement :meth:`Rule.evaluate`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

from ..findings import Condition, Finding
from ..ignores import TaskIgnore, task_ignore
from .queue_view import QueueFacts

if TYPE_CHECKING:
    from ..appinfo import AppInfo
    from ..config import Settings
    from ..metrics import BaseMetrics
    from ..probes.results import ResultStore
    from ..state import RuntimeState, TaskRecord

Hook = Callable[[dict, "TaskRecord | None"], None]

#: (queue, task, worker) keys counted per rule (further keys are only in the metric)
_MAX_TALLIES = 10_000


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
    #: why a Redis result backend could not be used (``results`` is None then)
    results_unusable: str = ""
    #: the ingestion path can see events at all (False on database brokers)
    events_supported: bool = True
    #: where ``broker_url`` came from (the exporter's option or the app's configuration)
    broker_source: str = "app configuration (broker_url)"
    #: facts about queues one rule establishes for others (see ``queue_view``)
    queue_facts: QueueFacts = field(default_factory=QueueFacts)


class ProbeFailed(Exception):
    """Raised by :meth:`Rule.prepare` when the external system it reads is unreachable.

    The engine counts it in ``flower_practices_probe_errors_total{probe=<probe>}`` (not as
    a rule error) and still runs the rule's :meth:`~Rule.evaluate`, whose earlier data
    stays valid. The rule logs and backs off on its own before raising.
    """

    def __init__(self, probe: str) -> None:
        super().__init__(probe)
        self.probe = probe


@dataclass(frozen=True, slots=True)
class NoOptions:
    """A rule without options of its own (only enabled/severity/clear_after_seconds)."""


def _typed(value: Any, default: Any) -> Any:
    """A validated option value as its default's type (TOML ints for float options)."""
    if isinstance(default, float) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, tuple):
        return tuple(value)
    return value


class Rule:
    """Base class: set ``id`` and an ``Options`` dataclass; override what you need."""

    id: ClassVar[str] = ""
    #: the rule's typed options: a frozen dataclass whose fields (with their ``#:``
    #: comments, the README's reference) are the documented defaults; each may be
    #: overridden in ``[practices.<id>]``. Read as ``self.opts.<name>``.
    Options: ClassVar[type] = NoOptions
    #: the same defaults as a mapping (derived from ``Options``: config validation and
    #: the README reference read it)
    defaults: ClassVar[dict[str, Any]] = {}
    #: the rule works from Celery events: ``unsupported`` where none can flow
    needs_events: ClassVar[bool] = True
    #: the rule concludes from events *not* heard (a silent worker, a send that did not
    #: come, a task that did not start or end): while the stream is down its conditions
    #: are unknown, so the engine does not evaluate it and keeps its findings as they
    #: were (each clears ``clear_after_seconds`` after it was last seen). After the
    #: stream is back, the rule itself judges silence against the blind window
    #: (``ctx.state.hearing``, :class:`~flower_practices.events.status.Hearing`).
    judges_silence: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Options" in cls.__dict__:
            cls.defaults = {f.name: f.default for f in fields(cls.Options)}

    def __init__(self, ctx: RuleContext, options: dict[str, Any]) -> None:
        self.ctx = ctx
        #: the resolved options (defaults merged with the configuration, validated), with
        #: the keys every practice has (enabled, severity, clear_after_seconds)
        self.options = options
        self.opts: Any = self.Options(**{
            f.name: _typed(options[f.name], f.default) for f in fields(self.Options)
            if f.name in options})
        #: (queue, task, worker) -> occurrences counted, the source of findings' count
        self.occurred: dict[tuple[str | None, str | None, str | None], int] = {}
        #: ``ignore_tasks``: occurrences of matching tasks are not counted (see count)
        self.task_ignore: TaskIgnore | None = task_ignore(options)

    @classmethod
    def static_check(cls, app: AppInfo) -> list[tuple[str | None, str]]:
        """What breaks this practice in the app's configuration and task definitions
        alone (``flower-practices check``, no broker, no events): (task or None, message)
        pairs. None by default (the practice can only be seen at run time)."""
        return []

    def hooks(self) -> dict[str, Hook]:
        """Map event type -> callable(event, task_record) run on the hot path."""
        return {}

    def prepare(self, now: float, lock: AbstractContextManager[Any]) -> None:
        """Do this round's I/O; runs before :meth:`evaluate`, without the engine lock.

        Hooks keep running meanwhile: hold ``lock`` (the engine lock) only to take or
        hand over data shared with them, never across I/O. Keep what was fetched on the
        rule for :meth:`evaluate` to apply. Raise :class:`ProbeFailed` when the external
        system is unreachable; any other exception counts as a rule error.
        """

    def evaluate(self, now: float) -> Iterable[Condition]:
        """Yield the conditions that hold now (periodic, off the hot path, under the
        engine lock: no I/O here, see :meth:`prepare`)."""
        return ()

    # -- persistence (see flower_practices.store) ---------------------------------------
    def memory(self) -> Any:
        """What this rule must remember across a restart to keep its findings (JSON-able:
        dicts, lists, strings, numbers); None when it needs nothing. Taken under the lock."""
        return None

    def restore_memory(self, data: Any, now: float) -> None:
        """Take back what :meth:`memory` returned before the restart (at start-up)."""

    def restore_hold(self, finding: Finding, now: float) -> float:
        """Until when a restored ``finding`` is kept (then ``clear_after_seconds`` more)
        unless this rule reports it again or :meth:`refutes` it.

        Default: the later of the restart and the end of the rule's evidence window
        (``window_seconds``) counted from when the finding was last seen -- the longest the
        rule could have kept reporting it on the evidence it had before the restart,
        which it lost. A rule that restores that evidence itself (:meth:`memory`)
        returns ``now``: its own evaluation then decides.
        """
        window = self.options.get("window_seconds")
        if isinstance(window, (int, float)) and not isinstance(window, bool):
            return max(now, finding.last_seen + float(window))
        return now

    def refutes(self, finding: Finding, now: float) -> bool:
        """Whether fresh data positively shows a restored ``finding`` no longer holds.

        Called under the lock for restored findings this rule has not reported again
        since the restart. Default False: the finding is kept until
        ``clear_after_seconds`` after the restart, long enough for the rule to rebuild
        what it needs (probes, windows) and report it again with the same ``first_seen``.
        """
        return False

    def coverage(self) -> str:
        """``"active"`` or ``"unsupported: <why>"`` for this deployment.

        Rules that override this call ``super().coverage()`` first."""
        if self.needs_events and not self.ctx.events_supported:
            return "unsupported: the broker is a database; no Celery events can flow"
        return "active"

    def count(self, queue: str | None, task: str | None, n: int = 1,
              worker: str | None = None) -> None:
        """Count ``n`` offending occurrences: ``celery_practice_violations_total`` (by
        queue and task) and the tally findings take their ``count`` from (see
        :meth:`occurrences`). Pass the same queue/task/worker shape as the conditions.
        A task matching the practice's ``ignore_tasks`` is not counted."""
        if task and self.task_ignore is not None and self.task_ignore.ignored(task):
            return
        key = (queue or None, task or None, worker or None)
        tallies = self.occurred
        if key in tallies or len(tallies) < _MAX_TALLIES:
            tallies[key] = tallies.get(key, 0) + n
        state = self.ctx.state
        self.ctx.metrics.count_violation(
            self.id,
            state.queue_label(queue) if queue else "",
            state.task_label(task) if task else "",
            n,
        )

    def occurrences(self, queue: str | None, task: str | None, worker: str | None) -> int:
        """Occurrences counted for a condition's (queue, task, worker); a field left
        unset (None) in the condition matches any value. Equals the sum of the matching
        ``celery_practice_violations_total`` series (which have no worker label)."""
        total = 0
        for (q, t, w), n in self.occurred.items():
            if (queue is None or q == queue) and (task is None or t == task) \
                    and (worker is None or w == worker):
                total += n
        return total
