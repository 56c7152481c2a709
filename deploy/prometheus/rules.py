"""The alert rules, as data: one alert per practice plus the exporter's own health.

Practice alerts fire from ``celery_practice_violation{practice="<id>"}`` (1 per active
finding) and keep the finding's labels, so the alert's ``severity`` is the one the exporter
reports (the catalogue default unless overridden in ``[practices.<id>] severity``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flower_practices.catalogue import DEFAULT_RUNBOOK_BASE_URL, PRACTICES, Practice

#: Prometheus scrape job of the exporter (used by the exporter-down alert only)
DEFAULT_JOB = "flower-practices"
#: ``for`` of a practice alert, by the practice's catalogue severity
FOR_BY_SEVERITY = {"critical": "1m", "warning": "5m", "info": "15m"}
#: exporter alerts
EXPORTER_DOWN_FOR = "5m"
DISCONNECTED_FOR = "5m"
#: no event (not even a worker heartbeat) for this long while connected = stalled
STALL_SECONDS = 300
STALL_FOR = "1m"
#: this many losses of the event stream within GAPS_WINDOW = a flapping, blind exporter
GAPS_THRESHOLD = 3
GAPS_WINDOW = "30m"
EXPORTER_SEVERITY = "warning"

PRACTICE_GROUP = "flower-practices.practices"
EXPORTER_GROUP = "flower-practices.exporter"


@dataclass(frozen=True, slots=True)
class Options:
    """What a deployment may change when regenerating (``generate --job/--runbook-base-url``)."""

    job: str = DEFAULT_JOB
    runbook_base_url: str = DEFAULT_RUNBOOK_BASE_URL

    def runbook(self, name: str) -> str:
        return f"{self.runbook_base_url.rstrip('/')}/{name}.md"


def alert_name(practice_id: str) -> str:
    """``queue_without_consumer`` -> ``CeleryPracticeQueueWithoutConsumer``."""
    return "CeleryPractice" + "".join(part.capitalize() for part in practice_id.split("_"))


SUMMARY_WHERE = ("{{ if $labels.queue }} on queue {{ $labels.queue }}{{ end }}"
                 "{{ if $labels.task }}, task {{ $labels.task }}{{ end }}"
                 "{{ if $labels.worker }}, worker {{ $labels.worker }}{{ end }}")


def practice_rule(p: Practice, options: Options) -> dict[str, Any]:
    return {
        "alert": alert_name(p.id),
        "expr": f'celery_practice_violation{{practice="{p.id}"}} > 0',
        "for": FOR_BY_SEVERITY[p.severity],
        "labels": {"severity": "{{ $labels.severity }}"},
        "annotations": {
            "summary": f"{p.title}{SUMMARY_WHERE}",
            "description": (f"{p.description} Reported by the flower-practices exporter "
                            "{{ $labels.instance }}; the evidence is on its /api/practices "
                            "(or Flower's Practices page)."),
            "runbook_url": options.runbook(p.id),
        },
    }


def exporter_rules(options: Options) -> list[dict[str, Any]]:
    up = f'up{{job="{options.job}"}}'
    return [
        {
            "alert": "FlowerPracticesExporterDown",
            "expr": f"{up} == 0 or absent({up})",
            "for": EXPORTER_DOWN_FOR,
            "labels": {"severity": EXPORTER_SEVERITY},
            "annotations": {
                "summary": "flower-practices exporter{{ if $labels.instance }} "
                           "{{ $labels.instance }}{{ end }} is down or not scraped",
                "description": (f'Prometheus has not scraped job "{options.job}" for '
                                f"{EXPORTER_DOWN_FOR}: no practice alert can fire while the "
                                "exporter is down."),
                "runbook_url": options.runbook("exporter_down"),
            },
        },
        {
            "alert": "FlowerPracticesEventStreamStalled",
            "expr": "flower_practices_event_stream_connected == 0",
            "for": DISCONNECTED_FOR,
            "labels": {"severity": EXPORTER_SEVERITY, "reason": "disconnected"},
            "annotations": {
                "summary": "flower-practices exporter {{ $labels.instance }} lost the broker",
                "description": (f"The exporter's event stream has been disconnected from the "
                                f"broker for {DISCONNECTED_FOR}; findings and task metrics "
                                "are frozen until it reconnects."),
                "runbook_url": options.runbook("event_stream_stalled"),
            },
        },
        {
            "alert": "FlowerPracticesEventStreamStalled",
            "expr": (f"(time() - flower_practices_last_event_timestamp_seconds) > "
                     f"{STALL_SECONDS} and flower_practices_event_stream_connected == 1"),
            "for": STALL_FOR,
            "labels": {"severity": EXPORTER_SEVERITY, "reason": "no_events"},
            "annotations": {
                "summary": "flower-practices exporter {{ $labels.instance }} receives no "
                           "events",
                "description": (f"The exporter is connected to the broker but has received "
                                f"no event (not even a worker heartbeat) for more than "
                                f"{STALL_SECONDS}s: no worker is running, or the workers use "
                                "another broker/vhost, or their events go elsewhere."),
                "runbook_url": options.runbook("event_stream_stalled"),
            },
        },
    ]


def blindness_rules(options: Options) -> list[dict[str, Any]]:
    """Repeated short outages: each below the 5m of the disconnected alert, together a
    blind exporter (events published during a gap are lost for good)."""
    return [{
        "alert": "FlowerPracticesEventStreamGaps",
        "expr": (f"increase(flower_practices_event_stream_gaps_total[{GAPS_WINDOW}]) "
                 f">= {GAPS_THRESHOLD}"),
        "labels": {"severity": EXPORTER_SEVERITY},
        "annotations": {
            "summary": "flower-practices exporter {{ $labels.instance }} keeps losing the "
                       "broker",
            "description": ("The exporter's event stream lost the broker about "
                            "{{ $value | humanize }} times in the last " + GAPS_WINDOW +
                            "; events published while it was disconnected are lost, so "
                            "findings and task metrics have holes. Blind time: "
                            "flower_practices_event_stream_disconnected_seconds_total."),
            "runbook_url": options.runbook("event_stream_gaps"),
        },
    }]


def groups(options: Options | None = None) -> list[dict[str, Any]]:
    """The rule groups, in a stable order (catalogue order for practices)."""
    options = options or Options()
    return [
        {"name": PRACTICE_GROUP, "rules": [practice_rule(p, options) for p in PRACTICES]},
        {"name": EXPORTER_GROUP,
         "rules": exporter_rules(options) + blindness_rules(options)},
    ]
