"""Findings: what rules report, and how they activate and clear over time.

A rule's :meth:`evaluate` yields :class:`Condition` objects describing what holds *now*.
:class:`FindingTracker` turns them into :class:`Finding` objects that stay active while
their condition holds and clear once it has been false for ``clear_after_seconds``
(README, "How it works"). Evidence holds names, counts and percentiles only, never
argument values, results or exception messages.

A finding's ``count`` is the offending occurrences its rule counted through
:meth:`~flower_practices.rules.base.Rule.count` for the finding's (queue, task, worker)
(an unset field matches any value): the same numbers that feed
``celery_practice_violations_total``, so the two cannot diverge. How long a condition has
held is ``active_seconds``, never a count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .catalogue import SEVERITIES

#: most severe first (the one order: :data:`~flower_practices.catalogue.SEVERITIES`)
SEVERITY_ORDER = {severity: rank for rank, severity in enumerate(SEVERITIES)}


@dataclass(slots=True)
class Condition:
    """One violation that holds at evaluation time."""

    summary: str
    queue: str | None = None
    task: str | None = None
    worker: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Finding:
    practice: str
    severity: str
    queue: str | None
    task: str | None
    worker: str | None
    summary: str
    evidence: dict[str, Any]
    first_seen: float
    last_seen: float
    count: int
    queue_label: str = ""
    task_label: str = ""
    worker_label: str = ""
    #: restored from the state file and not reported again since: it is kept until
    #: ``clear_after`` after this time (0: found or confirmed in this process)
    restored_until: float = 0.0
    #: occurrences counted before a restart (restored); the rule's fresh tally adds to it,
    #: as Prometheus' increase() adds across the counter's reset
    count_base: int = 0

    @property
    def key(self) -> tuple[str, str | None, str | None, str | None]:
        return (self.practice, self.queue, self.task, self.worker)

    def as_dict(self) -> dict[str, Any]:
        return {
            "practice": self.practice,
            "severity": self.severity,
            "queue": self.queue,
            "task": self.task,
            "worker": self.worker,
            "summary": self.summary,
            "evidence": self.evidence,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "count": self.count,
            "active_seconds": round(self.last_seen - self.first_seen, 1),
        }


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


class FindingTracker:
    """Active findings keyed by (practice, queue, task, worker), bounded by ``limit``."""

    def __init__(self, limit: int = 5000) -> None:
        self.limit = limit
        self._findings: dict[tuple, Finding] = {}
        self.dropped = 0

    def update(
        self,
        practice: str,
        severity: str,
        conditions: Iterable[Condition],
        now: float,
        clear_after: float,
        labels: Any,
        occurrences: Callable[[str | None, str | None, str | None], int] | None = None,
    ) -> None:
        """Record the conditions a rule reported now; clear this practice's stale ones.

        ``occurrences(queue, task, worker)`` gives the offending occurrences the rule
        counted for a condition (its ``Rule.occurrences``); without it counts stay 0.
        """
        seen: set[tuple] = set()
        for cond in conditions:
            key = (practice, cond.queue, cond.task, cond.worker)
            seen.add(key)
            count = occurrences(cond.queue, cond.task, cond.worker) if occurrences else 0
            finding = self._findings.get(key)
            if finding is None:
                if len(self._findings) >= self.limit:
                    self.dropped += 1
                    continue
                self._findings[key] = Finding(
                    practice=practice, severity=severity, queue=cond.queue, task=cond.task,
                    worker=cond.worker, summary=cond.summary, evidence=cond.evidence,
                    first_seen=now, last_seen=now,
                    count=count,
                    queue_label=labels.queue_label(cond.queue) if cond.queue else "",
                    task_label=labels.task_label(cond.task) if cond.task else "",
                    worker_label=labels.worker_label(cond.worker) if cond.worker else "",
                )
            else:
                finding.last_seen = now
                finding.restored_until = 0.0
                finding.summary = cond.summary
                finding.evidence = cond.evidence
                finding.severity = severity
                finding.count = finding.count_base + count
        self.expire(practice, now, clear_after, keep=seen)

    def expire(self, practice: str, now: float, clear_after: float,
               keep: set[tuple] | frozenset[tuple] = frozenset()) -> None:
        """Clear ``practice``'s findings (except ``keep``) last seen ``clear_after`` ago.

        Called on its own when a rule's conditions are unknown (its evaluation raised):
        nothing is refreshed, but findings still clear on schedule.
        """
        for key in [k for k, f in self._findings.items()
                    if k[0] == practice and k not in keep
            and now - max(f.last_seen, f.restored_until) >= clear_after]:
            del self._findings[key]

    # -- persistence hooks (flower_practices.store keeps the file) -----------------------
    def snapshot(self) -> list[dict[str, Any]]:
        """The active findings as plain dicts, for the state file."""
        return [f.as_dict() for f in self._findings.values()]

    def restore(self, items: Iterable[dict[str, Any]], now: float, labels: Any,
                severities: dict[str, str]) -> int:
        """Bring back findings saved by :meth:`snapshot`; returns how many.

        Only practices in ``severities`` (the rules running now, with their current
        severity) come back. A restored finding keeps its ``first_seen``, ``last_seen``,
        ``count``, summary and evidence, and ``restored_until`` is ``now`` (the engine may
        push it later, see :meth:`~flower_practices.rules.base.Rule.restore_hold`): it
        clears ``clear_after`` after that, unless its rule reports it again (then it
        lives on as any other finding) or positively refutes it. Malformed items are
        skipped.
        """
        restored = 0
        for item in items:
            try:
                practice = str(item["practice"])
                if practice not in severities:
                    continue
                queue, task, worker = (_opt_str(item.get(k)) for k in ("queue", "task", "worker"))
                key = (practice, queue, task, worker)
                if key in self._findings or len(self._findings) >= self.limit:
                    continue
                evidence = item.get("evidence")
                self._findings[key] = Finding(
                    practice=practice, severity=severities[practice], queue=queue, task=task,
                    worker=worker, summary=str(item.get("summary", "")),
                    evidence=evidence if isinstance(evidence, dict) else {},
                    first_seen=float(item["first_seen"]), last_seen=float(item["last_seen"]),
                    count=int(item.get("count", 1)), count_base=int(item.get("count", 1)),
                    queue_label=labels.queue_label(queue) if queue else "",
                    task_label=labels.task_label(task) if task else "",
                    worker_label=labels.worker_label(worker) if worker else "",
                    restored_until=now,
                )
                restored += 1
            except (KeyError, TypeError, ValueError):
                continue
        return restored

    def restored(self, practice: str) -> list[Finding]:
        """``practice``'s restored findings its rule has not reported since the restore."""
        return [f for f in self._findings.values()
                if f.practice == practice and f.restored_until]

    def drop(self, key: tuple) -> None:
        self._findings.pop(key, None)

    def active(self) -> list[Finding]:
        return list(self._findings.values())

    def sorted(self) -> list[Finding]:
        return sorted(self._findings.values(),
                      key=lambda f: (SEVERITY_ORDER.get(f.severity, 9), f.practice,
                                     f.queue or "", f.task or "", f.worker or ""))
