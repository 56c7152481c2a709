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
    FOR_BY_SEVERITY,
    STALL_SECONDS,
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


def _series(labels: dict[str, str]) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return f"celery_practice_violation{{{inner}, {JOB_LABELS}}}"


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
                          options: Options) -> dict[str, str]:
    return {
        "summary": _expected_summary(p, queue, task, worker),
        "description": (f"{p.description} Reported by the flower-practices exporter "
                        f"{INSTANCE}; the evidence is on its /api/practices (or Flower's "
                        "Practices page)."),
        "runbook_url": options.runbook(p.id),
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
    fire_at = _minutes(FOR_BY_SEVERITY[p.severity]) + 1
    exp_labels = {"alertname": alert_name(p.id), "practice": p.id, "severity": p.severity,
                  "job": DEFAULT_JOB, "instance": INSTANCE}
    exp_labels.update({k: v for k, v in (("queue", queue), ("task", task),
                                         ("worker", worker)) if v})
    name = alert_name(p.id)
    return {
        "interval": "1m",
        "input_series": [
            {"series": _series(labels), "values": "1x40"},
            {"series": _series(other_labels), "values": "1x40"},
        ],
        "alert_rule_test": [
            # pending, not firing yet
            {"eval_time": "0m", "alertname": name, "exp_alerts": []},
            {"eval_time": f"{fire_at}m", "alertname": name, "exp_alerts": [{
                "exp_labels": exp_labels,
                "exp_annotations": _expected_annotations(p, queue, task, worker, options),
            }]},
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
                               "severity": "critical", "queue": "q1", "job": DEFAULT_JOB,
                               "instance": INSTANCE},
                "exp_annotations": _expected_annotations(p, "q1", "", "", options)}],
        }],
    }


def exporter_cases(options: Options) -> list[dict[str, Any]]:
    up = f'up{{job="{DEFAULT_JOB}", instance="{INSTANCE}"}}'
    connected = f'flower_practices_event_stream_connected{{{JOB_LABELS}}}'
    last = f'flower_practices_last_event_timestamp_seconds{{{JOB_LABELS}}}'
    down = "FlowerPracticesExporterDown"
    stalled = "FlowerPracticesEventStreamStalled"
    down_annotations = {
        "description": (f'Prometheus has not scraped job "{DEFAULT_JOB}" for 5m: no practice '
                        "alert can fire while the exporter is down."),
        "runbook_url": options.runbook("exporter_down"),
    }
    stalled_runbook = options.runbook("event_stream_stalled")
    return [
        {   # scrape fails: up == 0
            "interval": "1m",
            "input_series": [{"series": up, "values": "0x20"}],
            "alert_rule_test": [
                {"eval_time": "2m", "alertname": down, "exp_alerts": []},
                {"eval_time": "10m", "alertname": down, "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "job": DEFAULT_JOB,
                                   "instance": INSTANCE},
                    "exp_annotations": {
                        "summary": f"flower-practices exporter {INSTANCE} is down or not "
                                   "scraped",
                        **down_annotations}}]},
            ],
        },
        {   # the job is not scraped at all: absent(up)
            "interval": "1m",
            "input_series": [{"series": 'up{job="other", instance="x:1"}', "values": "1x20"}],
            "alert_rule_test": [{"eval_time": "10m", "alertname": down, "exp_alerts": [{
                "exp_labels": {"severity": "warning", "job": DEFAULT_JOB},
                "exp_annotations": {
                    "summary": "flower-practices exporter is down or not scraped",
                    **down_annotations}}]}],
        },
        {   # healthy exporter: connected, events flowing (timestamp follows the clock)
            "interval": "1m",
            "input_series": [
                {"series": up, "values": "1x20"},
                {"series": connected, "values": "1x20"},
                {"series": last, "values": "0+60x20"},
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
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": stalled, "exp_alerts": []},
                {"eval_time": "10m", "alertname": stalled, "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "reason": "disconnected",
                                   "job": DEFAULT_JOB, "instance": INSTANCE},
                    "exp_annotations": {
                        "summary": f"flower-practices exporter {INSTANCE} lost the broker",
                        "description": "The exporter's event stream has been disconnected "
                                       "from the broker for 5m; findings and task metrics "
                                       "are frozen until it reconnects.",
                        "runbook_url": stalled_runbook}}]},
            ],
        },
        {   # connected, events stop at minute 5: stalled once the lag passes the limit
            "interval": "1m",
            "input_series": [
                {"series": up, "values": "1x30"},
                {"series": connected, "values": "1x30"},
                {"series": last, "values": "0+60x5 300x25"},
            ],
            "alert_rule_test": [
                # lag 300s at minute 10: not above the limit yet
                {"eval_time": "10m", "alertname": stalled, "exp_alerts": []},
                {"eval_time": "20m", "alertname": stalled, "exp_alerts": [{
                    "exp_labels": {"severity": "warning", "reason": "no_events",
                                   "job": DEFAULT_JOB, "instance": INSTANCE},
                    "exp_annotations": {
                        "summary": f"flower-practices exporter {INSTANCE} receives no events",
                        "description": "The exporter is connected to the broker but has "
                                       "received no event (not even a worker heartbeat) for "
                                       f"more than {STALL_SECONDS}s: no worker is running, or "
                                       "the workers use another broker/vhost, or their "
                                       "events go elsewhere.",
                        "runbook_url": stalled_runbook}}]},
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
                        "runbook_url": options.runbook("event_stream_gaps")}}]},
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


def test_document(rule_file: str, options: Options | None = None) -> dict[str, Any]:
    options = options or Options()
    cases = [practice_case(i, p, options) for i, p in enumerate(PRACTICES)]
    cases += [practice_quiet_case(), severity_override_case(options), *exporter_cases(options),
              *blindness_cases(options)]
    return {"rule_files": [rule_file], "evaluation_interval": "1m", "tests": cases}
