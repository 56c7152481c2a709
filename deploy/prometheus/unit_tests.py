"""promtool unit tests for the rules: for every alert, a case where it fires and cases where
it does not (still pending, other practice only, healthy exporter).

The expected labels and annotations are written out here literally (what Prometheus must
render from the rule's templates), so ``promtool test rules`` checks the rule file rather
than echoing it.
"""

from __future__ import annotations

from typing import Any

from flower_practices.catalogue import PRACTICES, Practice

from .rules import (
    DEFAULT_JOB,
    PRACTICES_DASHBOARD,
    QUEUES_DASHBOARD,
    TASKS_DASHBOARD,
    WORKERS_DASHBOARD,
    Options,
    alert_name,
)

INSTANCE = "exporter:9808"
JOB_LABELS = f'job="{DEFAULT_JOB}", instance="{INSTANCE}"'
#: label sets cycled through the practices: (queue, task, worker)
WHERE = [("q1", "proj.tasks.t1", "w1@host"), ("q2", "", ""), ("", "", "")]


def _minutes(duration: str) -> int:
    assert duration.endswith("m"), duration
    return int(duration[:-1])


def _series(labels: dict[str, str], metric: str = "celery_practice_violation") -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{metric}{{{inner}, {JOB_LABELS}}}"


def _counter(labels: dict[str, str]) -> str:
    """The finding's celery_practice_violations_total series (no severity, no worker)."""
    return _series({k: v for k, v in labels.items() if k in ("practice", "queue", "task")},
                   "celery_practice_violations_total")


def _expected_summary(p: Practice, queue: str, task: str, worker: str) -> str:
    text = p.title
    if queue:
        text += f" on queue {queue}"
    if task:
        text += f", task {task}"
    if worker:
        text += f", worker {worker}"
    return text


def _expected_annotations(p: Practice, queue: str, task: str, worker: str,
                          options: Options, occurrences: int = 0) -> dict[str, str]:
    dashboard = (f"{options.dashboard_base_url}/{PRACTICES_DASHBOARD}?var-job={DEFAULT_JOB}"
                 f"&var-practice={p.id}" + (f"&var-queue={queue}" if queue else ""))
    return {
        "summary": _expected_summary(p, queue, task, worker),
        "description": (f"{p.description} {occurrences} offending occurrence(s) counted in "
                        "the last hour. Reported by the flower-practices exporter "
                        f"(job {DEFAULT_JOB}); the evidence (summary, counts, first seen) is "
                        "on its /api/practices (or Flower's Practices page)."),
        "runbook_url": options.runbook(p.id),
        "dashboard_url": dashboard,
    }


def _other(p: Practice) -> Practice:
    return next(o for o in PRACTICES if o.id != p.id)


def practice_case(index: int, p: Practice, options: Options) -> dict[str, Any]:
    queue, task, worker = WHERE[index % len(WHERE)]
    labels = {"practice": p.id, "severity": p.severity, "queue": queue, "task": task,
              "worker": worker}
    other = _other(p)
    other_labels = {"practice": other.id, "severity": other.severity, "queue": "other",
                    "task": "", "worker": ""}
    fire_at = _minutes(options.for_severity(p.severity)) + 1
    exp_labels = {"alertname": alert_name(p.id), "practice": p.id, "severity": p.severity,
                  "job": DEFAULT_JOB}
    exp_labels.update({k: v for k, v in (("queue", queue), ("task", task),
                                         ("worker", worker)) if v})
    name = alert_name(p.id)
    return {
        "interval": "1m",
        "input_series": [
            {"series": _series(labels), "values": "1x40"},
            # one offending occurrence a minute
            {"series": _counter(labels), "values": "0+1x40"},
            {"series": _series(other_labels), "values": "1x40"},
        ],
        "alert_rule_test": [
            # pending, not firing yet
            {"eval_time": "0m", "alertname": name, "exp_alerts": []},
            {"eval_time": f"{fire_at}m", "alertname": name, "exp_alerts": [{
                "exp_labels": exp_labels,
                "exp_annotations": _expected_annotations(p, queue, task, worker, options,
                                                         occurrences=fire_at),
            }]},
        ],
    }


def keep_firing_case(options: Options) -> dict[str, Any]:
    """The exporter dies at minute 10 (the series goes stale): the practice alert keeps
    firing for keep_firing_for, then resolves."""
    p = next(p for p in PRACTICES if p.id == "lost_task")
    labels = {"practice": p.id, "severity": p.severity, "queue": "q1", "task": "t",
              "worker": "w1@host"}
    keep = _minutes(options.keep_firing_for)
    exp = {"exp_labels": {"alertname": alert_name(p.id), "practice": p.id,
                          "severity": p.severity, "queue": "q1", "task": "t",
                          "worker": "w1@host", "job": DEFAULT_JOB},
           "exp_annotations": _expected_annotations(p, "q1", "t", "w1@host", options)}
    return {
        "interval": "1m",
        "input_series": [{"series": _series(labels), "values": "1x10 stale"}],
        "alert_rule_test": [
            {"eval_time": "9m", "alertname": alert_name(p.id), "exp_alerts": [exp]},
            # series gone since minute 11: still firing within keep_firing_for
            {"eval_time": f"{10 + keep - 1}m", "alertname": alert_name(p.id),
             "exp_alerts": [exp]},
            {"eval_time": f"{10 + keep + 2}m", "alertname": alert_name(p.id),
             "exp_alerts": []},
        ],
    }


def replicas_case(options: Options) -> dict[str, Any]:
    """Two replicas (other instance and pod) in one cluster/namespace report the same
    finding: one alert, which keeps the cluster and namespace labels; the first replica
    dies at minute 10 and the alert goes on firing (with no resolve) long after
    keep_firing_for, from the survivor."""
    p = next(p for p in PRACTICES if p.id == "lost_task")
    where = 'practice="lost_task", severity="critical", queue="q1", task="t", worker=""'
    scope = f'cluster="eu", namespace="celery", job="{DEFAULT_JOB}"'
    exp = {"exp_labels": {"alertname": alert_name(p.id), "practice": p.id,
                          "severity": "critical", "queue": "q1", "task": "t",
                          "cluster": "eu", "namespace": "celery", "job": DEFAULT_JOB},
           "exp_annotations": _expected_annotations(p, "q1", "t", "", options)}
    keep = _minutes(options.keep_firing_for)
    return {
        "interval": "1m",
        "input_series": [
            {"series": f'celery_practice_violation{{{where}, {scope}, instance="10.0.0.1:9808",'
                       ' pod="fp-a"}', "values": "1x10 stale"},
            {"series": f'celery_practice_violation{{{where}, {scope}, instance="10.0.0.2:9808",'
                       ' pod="fp-b"}', "values": f"1x{20 + keep}"},
        ],
        "alert_rule_test": [
            {"eval_time": "9m", "alertname": alert_name(p.id), "exp_alerts": [exp]},
            {"eval_time": f"{10 + keep + 5}m", "alertname": alert_name(p.id),
             "exp_alerts": [exp]},
        ],
    }


def practice_quiet_case() -> dict[str, Any]:
    """Only the first practice has a finding: no other practice alert fires."""
    first = PRACTICES[0]
    labels = {"practice": first.id, "severity": first.severity, "queue": "", "task": "",
              "worker": ""}
    return {
        "interval": "1m",
        "input_series": [{"series": _series(labels), "values": "1x40"}],
        "alert_rule_test": [{"eval_time": "30m", "alertname": alert_name(p.id),
                             "exp_alerts": []} for p in PRACTICES[1:]],
    }


def severity_override_case(options: Options) -> dict[str, Any]:
    """A severity overridden in the exporter's config is the alert's severity."""
    p = next(p for p in PRACTICES if p.severity == "warning")
    labels = {"practice": p.id, "severity": "critical", "queue": "q1", "task": "",
              "worker": ""}
    return {
        "interval": "1m",
        "input_series": [{"series": _series(labels), "values": "1x40"}],
        "alert_rule_test": [{
            "eval_time": "30m", "alertname": alert_name(p.id),
            "exp_alerts": [{
                "exp_labels": {"alertname": alert_name(p.id), "practice": p.id,
                               "severity": "critical", "queue": "q1", "job": DEFAULT_JOB},
                "exp_annotations": _expected_annotations(p, "q1", "", "", options)}],
        }],
    }


def exporter_cases(options: Options) -> list[dict[str, Any]]:
    up = f'up{{job="{DEFAULT_JOB}", instance="{INSTANCE}"}}'
    connected = f'flower_practices_event_stream_connected{{{JOB_LABELS}}}'
    last = f'flower_practices_last_event_timestamp_seconds{{{JOB_LABELS}}}'
    down = "FlowerPracticesExporterDown"
    stalled = "FlowerPracticesEventStreamStalled"
    start = f'flower_practices_start_time_seconds{{{JOB_LABELS}}}'
    workers_dashboard = (f"{options.dashboard_base_url}/{WORKERS_DASHBOARD}"
                         f"?var-job={DEFAULT_JOB}")
    down_for = _minutes(options.exporter_down_for)
    down_annotations = {
        "summary": (f"flower-practices exporter is down or not scraped (job {DEFAULT_JOB}: "
                    "no replica answers)"),
        "description": (f'Prometheus has not scraped any replica of job "{DEFAULT_JOB}" for '
                        f"{options.exporter_down_for} (or the target vanished from service "
                        "discovery): no new practice alert can fire while the exporter is "
                        f"down. Firing practice alerts keep firing for "
                        f"{options.keep_firing_for}; a restarted exporter restores its "
                        "findings from its state file."),
        "runbook_url": options.runbook("exporter_down"),
        "dashboard_url": workers_dashboard,
    }
    replica = f'up{{job="{DEFAULT_JOB}", instance="replica-b:9808"}}'
    replica_down = "FlowerPracticesExporterReplicaDown"
    stalled_runbook = options.runbook("event_stream_stalled")
    stalled_description = (
        "The exporter is connected to the broker but has received no event (not even a "
        "worker heartbeat) for {lag} (limit " f"{options.stall_seconds}s, counted from its "
        "start until the first event): no worker is running, or the workers use another "
        "broker/vhost, or their events go elsewhere.")
    return [
        {   # scrape fails: up == 0
            "interval": "1m",
            "input_series": [{"series": up, "values": "0x20"}],
            "alert_rule_test": [
                {"eval_time": f"{down_for - 1}m", "alertname": down, "exp_alerts": []},
                {"eval_time": f"{down_for + 1}m", "alertname": down, "exp_alerts": [{
                    "exp_labels": {"severity": options.exporter_down_severity,
                                   "job": DEFAULT_JOB},
                    "exp_annotations": down_annotations}]},
                # a single replica down is the exporter down: no replica alert besides
                {"eval_time": f"{down_for + 1}m", "alertname": replica_down,
                 "exp_alerts": []},
            ],
        },
        {   # two replicas, one down: a warning for that replica, no page
            "interval": "1m",
            "input_series": [{"series": up, "values": "0x20"},
                             {"series": replica, "values": "1x20"}],
            "alert_rule_test": [
                {"eval_time": f"{down_for + 1}m", "alertname": down, "exp_alerts": []},
                {"eval_time": f"{down_for - 1}m", "alertname": replica_down,
                 "exp_alerts": []},
                {"eval_time": f"{down_for + 1}m", "alertname": replica_down, "exp_alerts": [{
                    "exp_labels": {"severity": options.exporter_severity,
                                   "job": DEFAULT_JOB, "instance": INSTANCE},
                    "exp_annotations": {
                        "summary": f"flower-practices exporter replica {INSTANCE} is down "
                                   "(another replica still serves)",
                        "description": (
                            f'Prometheus has not scraped this replica of job "{DEFAULT_JOB}" '
                            f"for {options.exporter_down_for}, while another replica "
                            "answers: findings and alerts still flow from the survivor, "
                            "but the deployment has lost its redundancy."),
                        "runbook_url": options.runbook("exporter_down"),
                        "dashboard_url": workers_dashboard}}]},
            ],
        },
        {   # two replicas, both down: one page for the job
            "interval": "1m",
            "input_series": [{"series": up, "values": "0x20"},
                             {"series": replica, "values": "0x20"}],
            "alert_rule_test": [
                {"eval_time": f"{down_for + 1}m", "alertname": down, "exp_alerts": [{
                    "exp_labels": {"severity": options.exporter_down_severity,
                                   "job": DEFAULT_JOB},
                    "exp_annotations": down_annotations}]},
                {"eval_time": f"{down_for + 1}m", "alertname": replica_down,
                 "exp_alerts": []},
            ],
        },
        {   # the job is not scraped at all: absent(up)
            "interval": "1m",
            "input_series": [{"series": 'up{job="other", instance="x:1"}', "values": "1x20"}],
            "alert_rule_test": [{"eval_time": f"{down_for + 1}m", "alertname": down,
                                 "exp_alerts": [{
                "exp_labels": {"severity": options.exporter_down_severity, "job": DEFAULT_JOB},
                "exp_annotations": down_annotations}]}],
        },
        {   # healthy exporter: connected, events flowing (timestamp follows the clock)
            "interval": "1m",
            "input_series": [
                {"series": up, "values": "1x20"},
                {"series": connected, "values": "1x20"},
                {"series": last, "values": "0+60x20"},
                {"series": start, "values": "0x20"},
            ],
            "alert_rule_test": [
                {"eval_time": "15m", "alertname": down, "exp_alerts": []},
                {"eval_time": "15m", "alertname": stalled, "exp_alerts": []},
            ],
        },
        {   # disconnected from the broker (last event long ago too: only one alert)
            "interval": "1m",
            "input_series": [
                {"series": up, "values": "1x20"},
                {"series": connected, "values": "0x20"},
                {"series": last, "values": "0x20"},
                {"series": start, "values": "0x20"},
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": stalled, "exp_alerts": []},
                {"eval_time": "10m", "alertname": stalled, "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "reason": "disconnected",
                                   "job": DEFAULT_JOB, "instance": INSTANCE},
                    "exp_annotations": {
                        "summary": f"flower-practices exporter {INSTANCE} lost the broker",
                        "description": "The exporter's event stream has been disconnected "
                                       f"from the broker for {options.disconnected_for}; "
                                       "findings and task metrics are frozen until it "
                                       "reconnects.",
                        "runbook_url": stalled_runbook,
                        "dashboard_url": workers_dashboard}}]},
            ],
        },
        {   # connected, events stop at minute 5: stalled once the lag passes the limit
            "interval": "1m",
            "input_series": [
                {"series": up, "values": "1x30"},
                {"series": connected, "values": "1x30"},
                {"series": last, "values": "0+60x5 300x25"},
                {"series": start, "values": "0x30"},
            ],
            "alert_rule_test": [
                # lag 300s at minute 10: not above the limit yet
                {"eval_time": "10m", "alertname": stalled, "exp_alerts": []},
                {"eval_time": "20m", "alertname": stalled, "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "reason": "no_events",
                                   "job": DEFAULT_JOB, "instance": INSTANCE},
                    "exp_annotations": {
                        "summary": f"flower-practices exporter {INSTANCE} receives no events",
                        "description": stalled_description.format(lag="15m 0s"),
                        "runbook_url": stalled_runbook,
                        "dashboard_url": workers_dashboard}}]},
            ],
        },
        {   # a fresh start with no event yet (timestamp 0): counted from the start, so
            # quiet for stall_seconds, not a minute after the start
            "interval": "1m",
            "input_series": [
                {"series": up, "values": "_x9 1x30"},
                {"series": connected, "values": "_x9 1x30"},
                {"series": last, "values": "_x9 0x30"},
                {"series": start, "values": "_x9 600x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "12m", "alertname": stalled, "exp_alerts": []},
                {"eval_time": "15m", "alertname": stalled, "exp_alerts": []},
                {"eval_time": "18m", "alertname": stalled, "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "reason": "no_events",
                                   "job": DEFAULT_JOB, "instance": INSTANCE},
                    "exp_annotations": {
                        "summary": f"flower-practices exporter {INSTANCE} receives no events",
                        "description": stalled_description.format(lag="8m 0s"),
                        "runbook_url": stalled_runbook,
                        "dashboard_url": workers_dashboard}}]},
            ],
        },
    ]


def operations_cases(options: Options) -> list[dict[str, Any]]:
    """Each operational alert: fires past its threshold, quiet below it."""
    events = "celery_task_events_total"
    sev = options.operations_severity
    base = f"{options.dashboard_base_url}/{{}}?var-job={DEFAULT_JOB}&{{}}"

    def ev(task: str, typ: str) -> str:
        return f'{events}{{type="{typ}", task="{task}", queue="celery", {JOB_LABELS}}}'

    wait = "celery_task_queue_wait_seconds_bucket"

    def bucket(queue: str, le: str) -> str:
        return f'{wait}{{queue="{queue}", le="{le}", {JOB_LABELS}}}'

    ratio_for = _minutes(options.failure_ratio_for)
    return [
        {   # t.flaky: 3 of 10 fail; t.ok: 1 of 100; t.rare: 1 of 2 (too few tasks)
            "interval": "1m",
            "input_series": [
                {"series": ev("t.flaky", "failed"), "values": "0+3x40"},
                {"series": ev("t.flaky", "succeeded"), "values": "0+7x40"},
                {"series": ev("t.ok", "failed"), "values": "0+1x40"},
                {"series": ev("t.ok", "succeeded"), "values": "0+99x40"},
                {"series": ev("t.rare", "failed"), "values": "0+0.1x40"},
                {"series": ev("t.rare", "succeeded"), "values": "0+0.1x40"},
            ],
            "alert_rule_test": [
                {"eval_time": f"{ratio_for - 1}m", "alertname": "CeleryTaskFailureRatioHigh",
                 "exp_alerts": []},
                {"eval_time": f"{ratio_for + 12}m", "alertname": "CeleryTaskFailureRatioHigh",
                 "exp_alerts": [{
                     "exp_labels": {"severity": sev, "task": "t.flaky", "job": DEFAULT_JOB},
                     "exp_annotations": {
                         "summary": "Celery task t.flaky fails often",
                         "description": (
                             "30% of the finished t.flaky tasks failed over the last "
                             f"{options.failure_ratio_window} (limit "
                             f"{options.failure_ratio:.0%}, from at least "
                             f"{options.failure_ratio_min_tasks} finished tasks)."),
                         "runbook_url": options.runbook("task_failure_ratio"),
                         "dashboard_url": base.format(TASKS_DASHBOARD, "var-task=t.flaky"),
                     }}]},
            ],
        },
        {   # queue "big": 5000 waiting; queue "small": 10
            "interval": "1m",
            "input_series": [
                {"series": f'celery_queue_length{{queue="big", priority="", {JOB_LABELS}}}',
                 "values": "5000x30"},
                {"series": f'celery_queue_length{{queue="small", priority="", {JOB_LABELS}}}',
                 "values": "10x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "CeleryQueueBacklog", "exp_alerts": []},
                {"eval_time": f"{_minutes(options.queue_length_for) + 1}m",
                 "alertname": "CeleryQueueBacklog", "exp_alerts": [{
                     "exp_labels": {"severity": sev, "queue": "big", "job": DEFAULT_JOB},
                     "exp_annotations": {
                         "summary": "Celery queue big has a backlog",
                         "description": (f"5k messages wait in queue big (limit "
                                         f"{options.queue_length}, for "
                                         f"{options.queue_length_for})."),
                         "runbook_url": options.runbook("queue_backlog"),
                         "dashboard_url": base.format(QUEUES_DASHBOARD, "var-queue=big"),
                     }}]},
            ],
        },
        {   # queue "slow": tasks wait 300-600 s; queue "fast": under 1 s
            "interval": "1m",
            "input_series": [
                {"series": bucket("slow", "1"), "values": "0x40"},
                {"series": bucket("slow", "300"), "values": "0x40"},
                {"series": bucket("slow", "600"), "values": "0+10x40"},
                {"series": bucket("slow", "+Inf"), "values": "0+10x40"},
                {"series": bucket("fast", "1"), "values": "0+10x40"},
                {"series": bucket("fast", "300"), "values": "0+10x40"},
                {"series": bucket("fast", "600"), "values": "0+10x40"},
                {"series": bucket("fast", "+Inf"), "values": "0+10x40"},
            ],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "CeleryQueueWaitHigh", "exp_alerts": []},
                {"eval_time": f"{_minutes(options.queue_wait_for) + 2}m",
                 "alertname": "CeleryQueueWaitHigh", "exp_alerts": [{
                     "exp_labels": {"severity": sev, "queue": "slow", "job": DEFAULT_JOB},
                     "exp_annotations": {
                         "summary": "Tasks wait long in Celery queue slow",
                         "description": (
                             "95 % of the tasks that started from queue slow over the last "
                             f"{options.queue_wait_window} waited up to 9m 45s (target "
                             f"{options.queue_wait_p95_seconds}s)."),
                         "runbook_url": options.runbook("queue_wait_high"),
                         "dashboard_url": base.format(QUEUES_DASHBOARD, "var-queue=slow"),
                     }}]},
            ],
        },
        {   # w2 stopped sending heartbeats; w1 is up
            "interval": "1m",
            "input_series": [
                {"series": f'celery_worker_up{{worker="w1@host", {JOB_LABELS}}}',
                 "values": "1x20"},
                {"series": f'celery_worker_up{{worker="w2@host", {JOB_LABELS}}}',
                 "values": "1x3 0x17"},
            ],
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": "CeleryWorkerDown", "exp_alerts": []},
                {"eval_time": f"{4 + _minutes(options.worker_down_for) + 1}m",
                 "alertname": "CeleryWorkerDown", "exp_alerts": [{
                     "exp_labels": {"severity": sev, "worker": "w2@host", "job": DEFAULT_JOB},
                     "exp_annotations": {
                         "summary": "Celery worker w2@host is down",
                         "description": (
                             "Worker w2@host sent no heartbeat for "
                             f"{options.worker_down_for} and never said goodbye (killed, OOM, "
                             "lost the broker); its queues are consumed by fewer workers, and "
                             "tasks it was running may be lost."),
                         "runbook_url": options.runbook("worker_down"),
                         "dashboard_url": base.format(WORKERS_DASHBOARD, "var-worker=w2@host"),
                     }}]},
            ],
        },
    ]


def blindness_cases(options: Options) -> list[dict[str, Any]]:
    """The gaps alert fires on repeated losses, not on a single one."""
    gaps = f"flower_practices_event_stream_gaps_total{{{JOB_LABELS}}}"
    alert = "FlowerPracticesEventStreamGaps"
    return [
        {   # losses at minutes 6, 12, 18 and 24: fires at the third; resolves 30m after
            "interval": "1m",
            "input_series": [{"series": gaps, "values": "0x5 1x5 2x5 3x5 4x60"}],
            "alert_rule_test": [
                {"eval_time": "9m", "alertname": alert, "exp_alerts": []},
                {"eval_time": "21m", "alertname": alert, "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "job": DEFAULT_JOB,
                                   "instance": INSTANCE},
                    "exp_annotations": {
                        "summary": f"flower-practices exporter {INSTANCE} keeps losing the "
                                   "broker",
                        "description": "The exporter's event stream lost the broker about "
                                       "3 times in the last 30m; events published while it "
                                       "was disconnected are lost, so findings and task "
                                       "metrics have holes. Blind time: "
                                       "flower_practices_event_stream_disconnected_seconds"
                                       "_total.",
                        "runbook_url": options.runbook("event_stream_gaps"),
                        "dashboard_url": options.dashboard(WORKERS_DASHBOARD)}}]},
                {"eval_time": "60m", "alertname": alert, "exp_alerts": []},
            ],
        },
        {   # one loss (a broker restart): no alert
            "interval": "1m",
            "input_series": [{"series": gaps, "values": "0x10 1x50"}],
            "alert_rule_test": [
                {"eval_time": "15m", "alertname": alert, "exp_alerts": []},
                {"eval_time": "40m", "alertname": alert, "exp_alerts": []},
            ],
        },
    ]


def refused_cases(options: Options) -> list[dict[str, Any]]:
    """The refused-events alert fires on a steady share of unreadable events, not on a
    small share, a handful, or events kept (repaired fields, custom event types)."""
    events = f"flower_practices_events_total{{{JOB_LABELS}}}"

    def errors(kind: str) -> str:
        return f'flower_practices_event_decode_errors_total{{{JOB_LABELS}, kind="{kind}"}}'

    alert = "FlowerPracticesEventsRefused"
    return [
        {   # 100 events/min; from minute 5 half of them cannot be decoded
            "interval": "1m",
            "input_series": [
                {"series": events, "values": "0+100x60"},
                {"series": errors("undecodable_body"), "values": "0x5 50+50x55"},
                {"series": errors("bad_field"), "values": "0+30x60"}],
            "alert_rule_test": [
                {"eval_time": "6m", "alertname": alert, "exp_alerts": []},
                {"eval_time": "30m", "alertname": alert, "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "job": DEFAULT_JOB,
                                   "instance": INSTANCE},
                    "exp_annotations": {
                        "summary": f"flower-practices exporter {INSTANCE} cannot read many "
                                   "of its events",
                        "description": "The exporter refused 50% of the events it received "
                                       "in the last 15m (bodies it cannot decode, such as "
                                       "events sent with a serializer other than JSON, "
                                       "messages over its size caps, or malformed events), "
                                       "so findings and task metrics miss them. By kind: "
                                       "flower_practices_event_decode_errors_total.",
                        "runbook_url": options.runbook("events_refused"),
                        "dashboard_url": options.dashboard(WORKERS_DASHBOARD)}}]},
            ],
        },
        {   # 5 % refused, repaired fields and custom event types: no alert
            "interval": "1m",
            "input_series": [
                {"series": events, "values": "0+100x60"},
                {"series": errors("oversized_message"), "values": "0+5x60"},
                {"series": errors("bad_field"), "values": "0+60x60"},
                {"series": errors("unknown_type"), "values": "0+60x60"}],
            "alert_rule_test": [
                {"eval_time": "30m", "alertname": alert, "exp_alerts": []},
                {"eval_time": "60m", "alertname": alert, "exp_alerts": []},
            ],
        },
        {   # a quiet system: 40 of 60 events refused in one burst, fewer than 50
            "interval": "1m",
            "input_series": [
                {"series": events, "values": "0x5 60x55"},
                {"series": errors("not_a_mapping"), "values": "0x5 40x55"}],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": alert, "exp_alerts": []},
                {"eval_time": "15m", "alertname": alert, "exp_alerts": []},
            ],
        },
    ]


def test_document(rule_file: str, options: Options | None = None) -> dict[str, Any]:
    options = options or Options()
    cases = [practice_case(i, p, options) for i, p in enumerate(PRACTICES)]
    cases += [practice_quiet_case(), severity_override_case(options), keep_firing_case(options),
              replicas_case(options),
              *exporter_cases(options), *operations_cases(options), *blindness_cases(options),
              *refused_cases(options)]
    return {"rule_files": [rule_file], "evaluation_interval": "1m", "tests": cases}
