"""One module per practice; ``ALL_RULES`` lists the rule classes the engine runs."""

from __future__ import annotations

from .base import Rule

# queue and worker rules
# isort: split
from .database_broker import DatabaseBroker
from .events_disabled import EventsDisabled
from .prefetch_starvation import PrefetchStarvation
from .queue_starvation import QueueStarvation
from .queue_without_consumer import QueueWithoutConsumer
from .result_backend_database import ResultBackendDatabase
from .single_default_queue import SingleDefaultQueue
from .stalled_consumer import StalledConsumer

# end queue and worker rules
# isort: split
# task rules
from .duplicate_delivery import DuplicateDelivery
from .lost_task import LostTask
from .missing_time_limit import MissingTimeLimit
from .orm_object_argument import OrmObjectArgument
from .retry_storm import RetryStorm
from .retryless_failure import RetrylessFailure
from .unread_results import UnreadResults
from .worker_process_killed import WorkerProcessKilled

TASK_RULES: list[type[Rule]] = [
    RetrylessFailure, RetryStorm, UnreadResults, OrmObjectArgument, MissingTimeLimit, LostTask,
    WorkerProcessKilled,
    DuplicateDelivery,
]
# end task rules

# queue and worker rules
QUEUE_RULES: list[type[Rule]] = [
    DatabaseBroker, ResultBackendDatabase, SingleDefaultQueue, QueueWithoutConsumer,
    QueueStarvation, EventsDisabled, PrefetchStarvation,
    StalledConsumer,
]
# end queue and worker rules

ALL_RULES: list[type[Rule]] = [*QUEUE_RULES, *TASK_RULES]

# periodic rules
# isort: split
from .duplicate_beat import DuplicateBeat  # noqa: E402
from .missed_periodic_task import MissedPeriodicTask  # noqa: E402
from .periodic_overlap import PeriodicOverlap  # noqa: E402

PERIODIC_RULES: list[type[Rule]] = [MissedPeriodicTask, DuplicateBeat, PeriodicOverlap]
ALL_RULES.extend(PERIODIC_RULES)
# end periodic rules
