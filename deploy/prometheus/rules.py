"""The alert rules, as data: one alert per practice, the exporter's own health, and the
standard operational alerts (failure ratio, backlog, queue wait, worker down).

Practice alerts fire from ``celery_practice_violation{practice="<id>"}`` (1 per active
finding) and keep the finding's labels, so the alert's ``severity`` is the one the exporter
reports (the catalogue default unless overridden in ``[practices.<id>] severity``). They
carry ``keep_firing_for``: a restarting exporter (whose findings come back from its state
file) or a missed scrape does not resolve them. Every threshold is in :data:`CONFIG`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flower_practices.catalogue import DEFAULT_RUNBOOK_BASE_URL, PRACTICES, Practice

#: Every threshold and duration of the generated rules, in one place (mixin style).
#: ``python -m deploy.prometheus.generate --set key=value`` overrides any of them; tests
#: build :class:`Options` with short durations.
CONFIG: dict[str, Any] = {
    #: Prometheus scrape job of the exporter
    "job": "flower-practices",
    # -- scale-out (mixin style): labels the rules keep or aggregate away
    #: labels told apart by Prometheus per cluster / namespace (kept by every alert and
    #: dashboard variable; "" when the deployment has no such label)
    "cluster_label": "cluster",
    "namespace_label": "namespace",
    #: labels that differ between replicas of one exporter (comma-separated): the alerts
    #: aggregate them away with ``max without (...)``, so two replicas watching one broker
    #: give one alert, and one replica dying resolves nothing
    "replica_labels": "instance,pod",
    "runbook_base_url": DEFAULT_RUNBOOK_BASE_URL,
    #: Grafana base URL of the ``dashboard_url`` annotations
    "dashboard_base_url": "http://localhost:3000",
    # -- practice alerts
    #: ``for`` of a practice alert, by the practice's catalogue severity
    "for_critical": "1m",
    "for_warning": "5m",
    "for_info": "15m",
    #: a practice alert keeps firing this long after its series vanished: an exporter
    #: restart (findings come back from the state file) or a missed scrape never resolves it
    "keep_firing_for": "15m",
    # -- the exporter's own health
    "exporter_down_for": "2m",
    "exporter_down_severity": "critical",
    "disconnected_for": "5m",
    #: no event (not even a worker heartbeat) for this long while connected = stalled,
    #: counted from the exporter's start until the first event
    "stall_seconds": 300,
    "stall_for": "1m",
    #: this many losses of the event stream within ``gaps_window`` = a flapping, blind
    #: exporter (events published during a gap are lost for good)
    "gaps_threshold": 3,
    "gaps_window": "30m",
    #: share of the events received within ``refused_window`` that the exporter could not
    #: read (undecodable bodies, over a size cap, malformed) = partly blind, once at least
    #: ``refused_min_events`` were refused
    "refused_share": 0.1,
    "refused_window": "15m",
    "refused_min_events": 50,
    "refused_for": "5m",
    "exporter_severity": "warning",
    # -- standard operational alerts
    #: failed / (succeeded + failed) per task over ``failure_ratio_window``
    "failure_ratio": 0.1,
    "failure_ratio_window": "10m",
    #: ... once at least this many tasks finished in the window (no page for 1 of 2)
    "failure_ratio_min_tasks": 20,
    "failure_ratio_for": "10m",
    #: messages waiting in a queue (all priorities)
    "queue_length": 1000,
    "queue_length_for": "10m",
    #: 95th percentile of the queue wait (task-sent to task-started) over the window
    "queue_wait_p95_seconds": 300,
    "queue_wait_window": "10m",
    "queue_wait_for": "10m",
    #: a worker whose heartbeats stopped (celery_worker_up == 0)
    "worker_down_for": "2m",
    "operations_severity": "warning",
}

#: the defaults under their former names (the rules themselves read :class:`Options`)
DEFAULT_JOB = CONFIG["job"]
FOR_BY_SEVERITY = {s: CONFIG[f"for_{s}"] for s in ("critical", "warning", "info")}
EXPORTER_DOWN_FOR = CONFIG["exporter_down_for"]
DISCONNECTED_FOR = CONFIG["disconnected_for"]
STALL_SECONDS = CONFIG["stall_seconds"]
STALL_FOR = CONFIG["stall_for"]
GAPS_THRESHOLD = CONFIG["gaps_threshold"]
GAPS_WINDOW = CONFIG["gaps_window"]
EXPORTER_SEVERITY = CONFIG["exporter_severity"]

PRACTICE_GROUP = "flower-practices.practices"
EXPORTER_GROUP = "flower-practices.exporter"
OPERATIONS_GROUP = "flower-practices.operations"

#: Grafana dashboards the alerts link to (uids of dashboards/*.py)
PRACTICES_DASHBOARD = "d/celery-practices/celery-practices"
WORKERS_DASHBOARD = "d/celery-workers-exporter/celery-workers-and-exporter-health"
QUEUES_DASHBOARD = "d/celery-queues/celery-queues"
TASKS_DASHBOARD = "d/celery-tasks/celery-tasks"


@dataclass(frozen=True, slots=True)
class Options:
    """What a deployment may change when regenerating; defaults from :data:`CONFIG`."""

    job: str = CONFIG["job"]
    cluster_label: str = CONFIG["cluster_label"]
    namespace_label: str = CONFIG["namespace_label"]
    replica_labels: str = CONFIG["replica_labels"]
    runbook_base_url: str = CONFIG["runbook_base_url"]
    dashboard_base_url: str = CONFIG["dashboard_base_url"]
    for_critical: str = CONFIG["for_critical"]
    for_warning: str = CONFIG["for_warning"]
    for_info: str = CONFIG["for_info"]
    keep_firing_for: str = CONFIG["keep_firing_for"]
    exporter_down_for: str = CONFIG["exporter_down_for"]
    exporter_down_severity: str = CONFIG["exporter_down_severity"]
    disconnected_for: str = CONFIG["disconnected_for"]
    stall_seconds: int = CONFIG["stall_seconds"]
    stall_for: str = CONFIG["stall_for"]
    gaps_threshold: int = CONFIG["gaps_threshold"]
    gaps_window: str = CONFIG["gaps_window"]
    refused_share: float = CONFIG["refused_share"]
    refused_window: str = CONFIG["refused_window"]
    refused_min_events: int = CONFIG["refused_min_events"]
    refused_for: str = CONFIG["refused_for"]
    exporter_severity: str = CONFIG["exporter_severity"]
    failure_ratio: float = CONFIG["failure_ratio"]
    failure_ratio_window: str = CONFIG["failure_ratio_window"]
    failure_ratio_min_tasks: int = CONFIG["failure_ratio_min_tasks"]
    failure_ratio_for: str = CONFIG["failure_ratio_for"]
    queue_length: int = CONFIG["queue_length"]
    queue_length_for: str = CONFIG["queue_length_for"]
    queue_wait_p95_seconds: float = CONFIG["queue_wait_p95_seconds"]
    queue_wait_window: str = CONFIG["queue_wait_window"]
    queue_wait_for: str = CONFIG["queue_wait_for"]
    worker_down_for: str = CONFIG["worker_down_for"]
    operations_severity: str = CONFIG["operations_severity"]

    def runbook(self, name: str) -> str:
        return f"{self.runbook_base_url.rstrip('/')}/{name}.md"

    def dashboard(self, path: str, query: str = "") -> str:
        url = f"{self.dashboard_base_url.rstrip('/')}/{path}?var-job={self.job}"
        return url + (f"&{query}" if query else "")

    def for_severity(self, severity: str) -> str:
        return getattr(self, f"for_{severity}")

    @property
    def replicas(self) -> list[str]:
        return [label.strip() for label in self.replica_labels.split(",") if label.strip()]

    def scope(self, *labels: str) -> str:
        """``cluster, namespace, job, <labels>``: what an aggregation keeps."""
        kept = [self.cluster_label, self.namespace_label, "job", *labels]
        return ", ".join(label for label in kept if label)

    def dedup(self, expr: str) -> str:
        """``max without (instance, pod) (expr)``: one series for all replicas."""
        return f"max without ({', '.join(self.replicas)}) ({expr})"


def alert_name(practice_id: str) -> str:
    """``queue_without_consumer`` -> ``CeleryPracticeQueueWithoutConsumer``."""
    return "CeleryPractice" + "".join(part.capitalize() for part in practice_id.split("_"))


SUMMARY_WHERE = ("{{ if $labels.queue }} on queue {{ $labels.queue }}{{ end }}"
                 "{{ if $labels.task }}, task {{ $labels.task }}{{ end }}"
                 "{{ if $labels.worker }}, worker {{ $labels.worker }}{{ end }}")


#: occurrences behind a finding, from its counter (a template query: the finding's gauge
#: itself is 1): "<n> offending occurrence(s) counted in the last hour"
def occurrences(options: Options) -> str:
    """The template query: the largest count any replica has (they count the same
    events), in the alert's cluster/namespace (``=""`` also matches an absent label)."""
    labels = [label for label in (options.cluster_label, options.namespace_label) if label]
    labels += ["job", "practice", "queue", "task"]
    matchers = ", ".join(f'{label}=\\"%s\\"' for label in labels)
    args = " ".join(f"$labels.{label}" for label in labels)
    return (f'{{{{ with printf "max(sum by ({", ".join(options.replicas)}) '
            f'(increase(celery_practice_violations_total{{{matchers}}}[1h])))" {args} '
            '| query }}{{ . | first | value | printf "%.0f" }}{{ else }}0{{ end }}')


def practice_rule(p: Practice, options: Options) -> dict[str, Any]:
    return {
        "alert": alert_name(p.id),
        "expr": options.dedup(f'celery_practice_violation{{practice="{p.id}"}}') + " > 0",
        "for": options.for_severity(p.severity),
        "keep_firing_for": options.keep_firing_for,
        "labels": {"severity": "{{ $labels.severity }}"},
        "annotations": {
            "summary": f"{p.title}{SUMMARY_WHERE}",
            "description": (f"{p.description} {occurrences(options)} offending "
                            "occurrence(s) counted in the last hour. Reported by the "
                            "flower-practices exporter (job {{ $labels.job }}); the "
                            "evidence (summary, counts, first seen) is on its "
                            "/api/practices (or Flower's Practices page)."),
            "runbook_url": options.runbook(p.id),
            "dashboard_url": options.dashboard(
                PRACTICES_DASHBOARD, f"var-practice={p.id}"
                "{{ if $labels.queue }}&var-queue={{ $labels.queue }}{{ end }}"),
        },
    }


def exporter_rules(options: Options) -> list[dict[str, Any]]:
    up = f'up{{job="{options.job}"}}'
    # per cluster/namespace/job: every replica down pages; one of several is a warning
    scope = options.scope()
    return [
        {
            "alert": "FlowerPracticesExporterDown",
            "expr": f"max by ({scope}) ({up}) == 0 or absent({up})",
            "for": options.exporter_down_for,
            "labels": {"severity": options.exporter_down_severity},
            "annotations": {
                "summary": "flower-practices exporter is down or not scraped (job "
                           "{{ $labels.job }}: no replica answers)",
                "description": (f'Prometheus has not scraped any replica of job '
                                f'"{options.job}" for {options.exporter_down_for} (or the '
                                "target vanished from service discovery): no new practice "
                                "alert can fire while the exporter is down. Firing practice "
                                f"alerts keep firing for {options.keep_firing_for}; a "
                                "restarted exporter restores its findings from its state "
                                "file."),
                "runbook_url": options.runbook("exporter_down"),
                "dashboard_url": options.dashboard(WORKERS_DASHBOARD),
            },
        },
        {
            "alert": "FlowerPracticesExporterReplicaDown",
            "expr": f"{up} == 0 and on ({scope}) (max by ({scope}) ({up}) == 1)",
            "for": options.exporter_down_for,
            "labels": {"severity": options.exporter_severity},
            "annotations": {
                "summary": "flower-practices exporter replica {{ $labels.instance }} is down "
                           "(another replica still serves)",
                "description": (f"Prometheus has not scraped this replica of job "
                                f'"{options.job}" for {options.exporter_down_for}, while '
                                "another replica answers: findings and alerts still flow "
                                "from the survivor, but the deployment has lost its "
                                "redundancy."),
                "runbook_url": options.runbook("exporter_down"),
                "dashboard_url": options.dashboard(WORKERS_DASHBOARD),
            },
        },
        {
            "alert": "FlowerPracticesEventStreamStalled",
            "expr": "flower_practices_event_stream_connected == 0",
            "for": options.disconnected_for,
            "labels": {"severity": options.exporter_severity, "reason": "disconnected"},
            "annotations": {
                "summary": "flower-practices exporter {{ $labels.instance }} lost the broker",
                "description": (f"The exporter's event stream has been disconnected from the "
                                f"broker for {options.disconnected_for}; findings and task "
                                "metrics are frozen until it reconnects."),
                "runbook_url": options.runbook("event_stream_stalled"),
                "dashboard_url": options.dashboard(WORKERS_DASHBOARD),
            },
        },
        {
            "alert": "FlowerPracticesEventStreamStalled",
            # before the first event the timestamp is 0: count from the exporter's start
            "expr": ("(time() - (flower_practices_last_event_timestamp_seconds > 0 or "
                     "flower_practices_start_time_seconds)) > "
                     f"{options.stall_seconds} and flower_practices_event_stream_connected "
                     "== 1"),
            "for": options.stall_for,
            "labels": {"severity": options.exporter_severity, "reason": "no_events"},
            "annotations": {
                "summary": "flower-practices exporter {{ $labels.instance }} receives no "
                           "events",
                "description": ("The exporter is connected to the broker but has received "
                                "no event (not even a worker heartbeat) for "
                                "{{ $value | humanizeDuration }} (limit "
                                f"{options.stall_seconds}s, counted from its start until the "
                                "first event): no worker is running, or the workers use "
                                "another broker/vhost, or their events go elsewhere."),
                "runbook_url": options.runbook("event_stream_stalled"),
                "dashboard_url": options.dashboard(WORKERS_DASHBOARD),
            },
        },
    ]


def operations_rules(options: Options) -> list[dict[str, Any]]:
    """Standard Celery alerts from the exporter's task, queue and worker metrics.

    There is no "age of the oldest waiting message" series (neither Redis nor RabbitMQ
    tell it without reading the queue), so the backlog is judged by its length and,
    separately, by the 95th percentile of the queue wait of the tasks that did start.
    """
    job = f'job="{options.job}"'
    sev = {"severity": options.operations_severity}
    w = options.failure_ratio_window
    # per replica first, then the replicas' max: they count the same events
    per_replica = options.scope(*options.replicas, "task")
    finished = options.dedup(
        f"sum by ({per_replica}) (increase(celery_task_events_total{{{job}, "
        f'type=~"succeeded|failed"}}[{w}]))')
    failed = options.dedup(
        f"sum by ({per_replica}) (increase(celery_task_events_total{{{job}, "
        f'type="failed"}}[{w}]))')
    return [
        {
            "alert": "CeleryTaskFailureRatioHigh",
            "expr": (f"({failed} / {finished}) > {options.failure_ratio} "
                     f"and {finished} >= {options.failure_ratio_min_tasks}"),
            "for": options.failure_ratio_for,
            "labels": dict(sev),
            "annotations": {
                "summary": "Celery task {{ $labels.task }} fails often",
                "description": ("{{ $value | humanizePercentage }} of the finished "
                                "{{ $labels.task }} tasks failed over the last "
                                f"{w} (limit {options.failure_ratio:.0%}, from at least "
                                f"{options.failure_ratio_min_tasks} finished tasks)."),
                "runbook_url": options.runbook("task_failure_ratio"),
                "dashboard_url": options.dashboard(
                    TASKS_DASHBOARD, "var-task={{ $labels.task }}"),
            },
        },
        {
            "alert": "CeleryQueueBacklog",
            "expr": (options.dedup(
                f"sum by ({options.scope(*options.replicas, 'queue')}) "
                f"(celery_queue_length{{{job}}})") + f" > {options.queue_length}"),
            "for": options.queue_length_for,
            "labels": dict(sev),
            "annotations": {
                "summary": "Celery queue {{ $labels.queue }} has a backlog",
                "description": ("{{ $value | humanize }} messages wait in queue "
                                f"{{{{ $labels.queue }}}} (limit {options.queue_length}, "
                                f"for {options.queue_length_for})."),
                "runbook_url": options.runbook("queue_backlog"),
                "dashboard_url": options.dashboard(
                    QUEUES_DASHBOARD, "var-queue={{ $labels.queue }}"),
            },
        },
        {
            "alert": "CeleryQueueWaitHigh",
            "expr": ("histogram_quantile(0.95, " + options.dedup(
                f"sum by ({options.scope(*options.replicas, 'queue', 'le')}) "
                f"(rate(celery_task_queue_wait_seconds_bucket{{{job}}}"
                f"[{options.queue_wait_window}]))") + f") > {options.queue_wait_p95_seconds}"),
            "for": options.queue_wait_for,
            "labels": dict(sev),
            "annotations": {
                "summary": "Tasks wait long in Celery queue {{ $labels.queue }}",
                "description": ("95 % of the tasks that started from queue "
                                "{{ $labels.queue }} over the last "
                                f"{options.queue_wait_window} waited up to "
                                "{{ $value | humanizeDuration }} "
                                f"(target {options.queue_wait_p95_seconds}s)."),
                "runbook_url": options.runbook("queue_wait_high"),
                "dashboard_url": options.dashboard(
                    QUEUES_DASHBOARD, "var-queue={{ $labels.queue }}"),
            },
        },
        {
            "alert": "CeleryWorkerDown",
            "expr": options.dedup(f"celery_worker_up{{{job}}}") + " == 0",
            "for": options.worker_down_for,
            "labels": dict(sev),
            "annotations": {
                "summary": "Celery worker {{ $labels.worker }} is down",
                "description": ("Worker {{ $labels.worker }} sent no heartbeat for "
                                f"{options.worker_down_for} and never said goodbye (killed, "
                                "OOM, lost the broker); its queues are consumed by fewer "
                                "workers, and tasks it was "
                                "running may be lost."),
                "runbook_url": options.runbook("worker_down"),
                "dashboard_url": options.dashboard(
                    WORKERS_DASHBOARD, "var-worker={{ $labels.worker }}"),
            },
        },
    ]


#: decode-error kinds of events dropped unread (not: ``bad_field``/``bad_text``, kept
#: repaired; ``duplicate_final``, a worker's duplicate; ``unknown_type``, which includes
#: an app's own custom events)
REFUSED_KINDS = ("not_a_mapping", "missing_type", "missing_uuid", "bad_uuid",
                 "undecodable_body", "handler_error", "oversized_message",
                 "unsupported_compression", "too_many_events")


def blindness_rules(options: Options) -> list[dict[str, Any]]:
    """Repeated short outages: each below the 5m of the disconnected alert, together a
    blind exporter (events published during a gap are lost for good); and events
    received but refused unread (partly blind: workers sending what it cannot read)."""
    refused = ("sum without (kind) (increase(flower_practices_event_decode_errors_total"
               f"{{kind=~\"{'|'.join(REFUSED_KINDS)}\"}}[{options.refused_window}]))")
    return [{
        "alert": "FlowerPracticesEventStreamGaps",
        "expr": ("increase(flower_practices_event_stream_gaps_total"
                 f"[{options.gaps_window}]) >= {options.gaps_threshold}"),
        "labels": {"severity": options.exporter_severity},
        "annotations": {
            "summary": "flower-practices exporter {{ $labels.instance }} keeps losing the "
                       "broker",
            "description": ("The exporter's event stream lost the broker about "
                            "{{ $value | humanize }} times in the last " + options.gaps_window +
                            "; events published while it was disconnected are lost, so "
                            "findings and task metrics have holes. Blind time: "
                            "flower_practices_event_stream_disconnected_seconds_total."),
            "runbook_url": options.runbook("event_stream_gaps"),
            "dashboard_url": options.dashboard(WORKERS_DASHBOARD),
        },
    }, {
        "alert": "FlowerPracticesEventsRefused",
        "expr": (f"{refused} / increase(flower_practices_events_total"
                 f"[{options.refused_window}]) > {options.refused_share} and "
                 f"{refused} >= {options.refused_min_events}"),
        "for": options.refused_for,
        "labels": {"severity": options.exporter_severity},
        "annotations": {
            "summary": "flower-practices exporter {{ $labels.instance }} cannot read many "
                       "of its events",
            "description": ("The exporter refused {{ $value | humanizePercentage }} of "
                            "the events it received in the last " + options.refused_window +
                            " (bodies it cannot decode, such as events sent with a "
                            "serializer other than JSON, messages over its size caps, or "
                            "malformed events), so findings and task metrics miss them. "
                            "By kind: flower_practices_event_decode_errors_total."),
            "runbook_url": options.runbook("events_refused"),
            "dashboard_url": options.dashboard(WORKERS_DASHBOARD),
        },
    }]


def groups(options: Options | None = None) -> list[dict[str, Any]]:
    """The rule groups, in a stable order (catalogue order for practices)."""
    options = options or Options()
    return [
        {"name": PRACTICE_GROUP, "rules": [practice_rule(p, options) for p in PRACTICES]},
        {"name": EXPORTER_GROUP,
         "rules": exporter_rules(options) + blindness_rules(options)},
        {"name": OPERATIONS_GROUP, "rules": operations_rules(options)},
    ]
