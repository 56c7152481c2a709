"""The "Celery / Workers & exporter health" dashboard: workers, event flow and exporter."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db

from .common import (
    dashboard,
    dedup,
    graph,
    label_variable,
    query,
    row,
    series,
    single,
    up_down_mappings,
    zero_while_up,
)

UID = "celery-workers-exporter"
W = 'worker=~"$worker"'
RATE = "[$__rate_interval]"
#: a zero timestamp (no event since the exporter started) is no lag of 56 years: dropped
LAG = (f"time() - max by (instance) "
       f"({series('flower_practices_last_event_timestamp_seconds')} > 0)")


def per_worker(metric: str) -> str:
    """A worker gauge, once for all replicas of the exporter (the exporter-health panels
    below stay per replica: they are about each one)."""
    return dedup(series(metric, W))


def build() -> db.Dashboard:
    board = dashboard(
        UID, "Celery / Workers & exporter health",
        "Celery workers seen through their heartbeats and task events, and the health of "
        "the flower-practices exporter itself (event flow, lag, decode errors, reconnects, "
        "blind time).",
        [label_variable("worker", "Worker",
                        'label_values(celery_worker_up{job=~"$job"}, worker)')])
    board.with_row(row("Workers"))
    board.with_panel(single(
        "Workers up", "Workers whose heartbeats are fresh.", "short",
        zero_while_up(f"sum({per_worker('celery_worker_up')})"),
        steps=[(None, "red"), (1, "green")]))
    board.with_panel(single(
        "Workers down", "Workers known to the exporter whose heartbeats stopped.", "short",
        zero_while_up(f"count({per_worker('celery_worker_up')} == 0)"),
        steps=[(None, "green"), (1, "red")]))
    board.with_panel(single(
        "Tasks running", "Tasks started but not finished, all selected workers.", "short",
        zero_while_up(f"sum({per_worker('celery_worker_tasks_running')})")))
    board.with_panel(single(
        "Tasks reserved", "Tasks received but not started (prefetched), all selected "
        "workers; heard since the exporter's last event-stream gap.", "short",
        zero_while_up(f"sum({per_worker('celery_worker_tasks_reserved')})")))
    board.with_panel(graph(
        "Worker up", "1 while a worker's heartbeats are fresh.", "bool_on_off",
        [query(f"max by (worker) ({per_worker('celery_worker_up')})", "{{worker}}")],
        width=24, height=6))
    board.with_panel(graph(
        "Tasks running by worker", "Tasks started but not finished, per worker.", "short",
        [query(f"sum by (worker) ({per_worker('celery_worker_tasks_running')})", "{{worker}}")]))
    board.with_panel(graph(
        "Tasks reserved by worker", "Tasks received but not started, per worker (heard "
        "since the exporter's last event-stream gap).", "short",
        [query(f"sum by (worker) ({per_worker('celery_worker_tasks_reserved')})",
               "{{worker}}")]))
    board.with_row(row("Exporter health"))
    board.with_panel(single(
        "Exporter up", "Prometheus can scrape the exporter.", "short",
        f"min({series('up')})", steps=[(None, "red"), (1, "green")],
        mappings=up_down_mappings()))
    board.with_panel(single(
        "Event stream", "Whether the exporter's event stream is connected to the broker.",
        "short", f"min({series('flower_practices_event_stream_connected')})",
        steps=[(None, "red"), (1, "green")],
        mappings=up_down_mappings("connected", "disconnected")))
    board.with_panel(single(
        "Event lag", "Seconds since the last event was received (workers send heartbeats "
        "every 2s, so this stays low while any worker is alive).", "s", f"max({LAG})",
        steps=[(None, "green"), (30, "orange"), (300, "red")]))
    board.with_panel(single(
        "Events / s", "Events received from the broker per second.", "cps",
        f"sum(rate({series('flower_practices_events_total')}{RATE}))"))
    board.with_panel(graph(
        "Events received", "Events per second received by each exporter.", "cps",
        [query(f"sum by (instance) (rate({series('flower_practices_events_total')}{RATE}))",
               "{{instance}}")]))
    board.with_panel(graph(
        "Event lag by exporter", "time() - last event timestamp, per exporter.", "s",
        [query(LAG, "{{instance}}")]))
    board.with_panel(graph(
        "Decode errors by kind", "Events dropped as malformed or of unknown type.", "cps",
        [query(f"sum by (kind) (rate("
               f"{series('flower_practices_event_decode_errors_total')}{RATE}))", "{{kind}}")]))
    board.with_panel(graph(
        "Broker reconnects", "Reconnections of the event stream over each interval.",
        "short",
        [query(f"sum by (instance) (increase("
               f"{series('flower_practices_broker_reconnects_total')}{RATE}))",
               "{{instance}}")]))
    board.with_panel(graph(
        "Event stream blind time", "Seconds the event stream was disconnected in each "
        "interval (flower_practices_event_stream_disconnected_seconds_total; the ongoing "
        "gap included). Events published meanwhile are lost: findings have holes.", "s",
        [query(f"sum by (instance) (increase("
               f"{series('flower_practices_event_stream_disconnected_seconds_total')}"
               f"{RATE}))", "{{instance}}")]))
    board.with_panel(graph(
        "Event stream gaps", "Losses of a connected event stream in each interval "
        "(flower_practices_event_stream_gaps_total); alert FlowerPracticesEventStreamGaps "
        "fires at 3 within 30m.", "short",
        [query(f"sum by (instance) (increase("
               f"{series('flower_practices_event_stream_gaps_total')}{RATE}))",
               "{{instance}}")]))
    board.with_panel(graph(
        "Probe and rule errors", "Failed broker probes (by probe) and rule evaluations "
        "that raised (by practice), per second.", "cps",
        [query(f"sum by (probe) (rate({series('flower_practices_probe_errors_total')}"
               f"{RATE}))", "probe {{probe}}", ref="A"),
         query(f"sum by (practice) (rate({series('flower_practices_rule_errors_total')}"
               f"{RATE}))", "rule {{practice}}", ref="B")]))
    board.with_panel(graph(
        "Cardinality caps", "Label values folded into __other__ (by label) and in-flight "
        "task records evicted, per second. Non-zero: raise the caps in [exporter].", "cps",
        [query(f"sum by (label) (rate({series('flower_practices_label_overflow_total')}"
               f"{RATE}))", "overflow {{label}}", ref="A"),
         query(f"sum(rate({series('flower_practices_tasks_evicted_total')}{RATE}))",
               "tasks evicted", ref="B")]))
    board.with_panel(graph(
        "State corrections", "Tasks whose tracked state the exporter corrected without "
        "an event saying so, per second, by kind: reserved_unheard (reserved before a "
        "blind window, not believed after it), reconnect_kept (kept running across a "
        "worker's consumer reconnect), ended_unreported (runs an idle heartbeat showed "
        "over), expired (records dropped at their maximum age). Bursts of "
        "reserved_unheard follow event stream gaps.", "cps",
        [query(f"sum by (kind) (rate({series('flower_practices_state_corrections_total')}"
               f"{RATE}))", "{{kind}}")]))
    board.with_panel(graph(
        "Tracked tasks", "In-flight task records held by the exporter.", "short",
        [query(f"sum by (instance) ({series('flower_practices_tracked_tasks')})",
               "{{instance}}")]))
    board.with_panel(graph(
        "Rule evaluation duration", "Duration of the last rules evaluation.", "s",
        [query(f"max by (instance) "
               f"({series('flower_practices_evaluation_duration_seconds')})", "{{instance}}")]))
    return board
