"""The practice catalogue: ids, titles, default severities, descriptions and runbook links.

The ids are a public contract (README, "The practices it polices"): dashboards, alert
rules and users' automation depend on them. Do not rename.
"""

from __future__ import annotations

from dataclasses import dataclass

SEVERITIES = ("critical", "warning", "info")

DEFAULT_RUNBOOK_BASE_URL = (
    "https://github.com/flower-practices/flower-practices/blob/main/flower_practices/runbooks/"
)


@dataclass(frozen=True, slots=True)
class Practice:
    """One row of the catalogue."""

    id: str
    title: str
    severity: str
    description: str
    best_practice: int | None

    def runbook_url(self, base_url: str = DEFAULT_RUNBOOK_BASE_URL) -> str:
        return f"{base_url.rstrip('/')}/{self.id}.md"


PRACTICES: tuple[Practice, ...] = (
    Practice(
        "database_broker",
        "Database used as the broker",
        "critical",
        "The broker transport is a database (SQLAlchemy, Django, MongoDB...). It is polled, "
        "loads the database and cannot carry events, so nothing can be monitored.",
        1,
    ),
    Practice(
        "result_backend_database",
        "Results kept in an SQL database",
        "info",
        "The result backend is an SQL database (db+*, django-db): every result is a row "
        "written to (often) the web app's own database.",
        6,
    ),
    Practice(
        "single_default_queue",
        "Every task in the one default queue",
        "warning",
        "Two or more distinct tasks are all routed to the default queue, so slow or bulk "
        "work delays everything else.",
        2,
    ),
    Practice(
        "queue_without_consumer",
        "Queue nobody consumes",
        "critical",
        "A queue holds (or keeps receiving) messages and no worker consumes it.",
        3,
    ),
    Practice(
        "queue_starvation",
        "Starved queue",
        "warning",
        "Tasks in a queue wait too long before they start; the evidence names the queues "
        "whose tasks occupy the shared consumers (priority inversion).",
        3,
    ),
    Practice(
        "retryless_failure",
        "Transient failure without retry",
        "warning",
        "A task failed with an exception that looks transient (network, timeout, broker, "
        "database operational error) and never retried.",
        4,
    ),
    Practice(
        "retry_storm",
        "Retry storm",
        "warning",
        "A task retries too often over a window (more than 3 retries per first attempt, "
        "above an absolute floor), or retries are scheduled with about zero delay (no "
        "back-off).",
        4,
    ),
    Practice(
        "events_disabled",
        "Task events disabled",
        "warning",
        "A worker processes tasks but sends no task events, or clients send no task-sent "
        "events, so monitoring is blind.",
        5,
    ),
    Practice(
        "unread_results",
        "Results stored but never read",
        "warning",
        "Results are written to the result backend and nobody reads them: set "
        "ignore_result=True on those tasks.",
        6,
    ),
    Practice(
        "orm_object_argument",
        "ORM object passed as a task argument",
        "warning",
        "Task messages carry model instances; pass primary keys and reload in the task.",
        7,
    ),
    Practice(
        "missing_time_limit",
        "Long task without a time limit",
        "warning",
        "A task ran longer than the threshold and has no time limit, so a hung call can "
        "hold a worker slot forever.",
        None,
    ),
    Practice(
        "lost_task",
        "Task lost with its worker",
        "critical",
        "A task started on a worker that went offline without reporting the task's outcome.",
        None,
    ),
    Practice(
        "prefetch_starvation",
        "Prefetch starvation",
        "info",
        "Tasks wait reserved on a busy worker while another worker consuming the same "
        "queue sits idle (prefetch multiplier too high, or no -O fair).",
        3,
    ),
    Practice(
        "missed_periodic_task",
        "Periodic task not sent on time",
        "critical",
        "A periodic task (from beat_schedule, or a period learned from its sends) was "
        "not sent within its period plus a grace: celery beat is down or stuck.",
        None,
    ),
    Practice(
        "duplicate_beat",
        "Periodic task sent twice",
        "warning",
        "A periodic task is sent more than once per period, or by more than one "
        "producer: two celery beat processes run at once, so every run happens twice.",
        None,
    ),
    Practice(
        "periodic_overlap",
        "Periodic runs pile up",
        "warning",
        "Runs of a periodic task last longer than its period, so a run starts while the "
        "previous one is still running and the backlog grows.",
        None,
    ),
    Practice(
        "stalled_consumer",
        "Stalled consumer",
        "critical",
        "A queue holds and gains messages, live workers list it in their active queues, "
        "yet none of them has received a task from it for a while: a zombie consumer "
        "(e.g. a half-open broker connection after a reconnect). Not saturation: the "
        "workers have free pool slots.",
        3,
    ),
    Practice(
        "duplicate_delivery",
        "Task delivered twice",
        "warning",
        "The same task message was received or started again with no retry in between: "
        "an ETA/countdown or an acks_late run longer than the broker's visibility timeout "
        "(Redis, SQS) or consumer timeout (RabbitMQ).",
        None,
    ),
    Practice(
        "worker_process_killed",
        "Worker pool process killed",
        "warning",
        "Tasks fail with WorkerLostError: a pool process was killed by a signal (typically "
        "the OOM killer) while the worker itself stayed up.",
        None,
    ),
)

BY_ID: dict[str, Practice] = {p.id: p for p in PRACTICES}


def practice(practice_id: str) -> Practice:
    """Return the catalogue entry for ``practice_id`` (KeyError if unknown)."""
    return BY_ID[practice_id]
