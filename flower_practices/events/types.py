"""The Celery event types this package understands: one name for each, in one place.

Plain string constants (not an ``Enum``): events arrive as dicts whose ``type`` is a str,
and the handler tables are keyed by it, so a constant is exactly the wire value at no
per-event cost. Every module names event types through these constants.
"""

from __future__ import annotations

from typing import Final

TASK_SENT: Final = "task-sent"
TASK_RECEIVED: Final = "task-received"
TASK_STARTED: Final = "task-started"
TASK_SUCCEEDED: Final = "task-succeeded"
TASK_FAILED: Final = "task-failed"
TASK_RETRIED: Final = "task-retried"
TASK_REVOKED: Final = "task-revoked"
TASK_REJECTED: Final = "task-rejected"

WORKER_ONLINE: Final = "worker-online"
WORKER_HEARTBEAT: Final = "worker-heartbeat"
WORKER_OFFLINE: Final = "worker-offline"

#: every task event type, in the order a task lives them
TASK_EVENTS: Final = frozenset((
    TASK_SENT, TASK_RECEIVED, TASK_STARTED, TASK_SUCCEEDED, TASK_FAILED, TASK_RETRIED,
    TASK_REVOKED, TASK_REJECTED,
))
#: the events that end a task's life (it may still be retried or redelivered)
TERMINAL_EVENTS: Final = frozenset((TASK_SUCCEEDED, TASK_FAILED, TASK_REVOKED, TASK_REJECTED))
WORKER_EVENTS: Final = frozenset((WORKER_ONLINE, WORKER_HEARTBEAT, WORKER_OFFLINE))
KNOWN_EVENTS: Final = TASK_EVENTS | WORKER_EVENTS
