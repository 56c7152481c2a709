"""The "Celery / Queues" dashboard: backlog, consumers, wait percentiles and starvation."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db

from .common import (
    dashboard,
    dedup,
    graph,
    instant_table,
    label_variable,
    query,
    row,
    scope_labels,
    series,
    single,
    zero_while_up,
)

UID = "celery-queues"
Q = 'queue=~"$queue"'
STARTED = 'type="started"'
STARVATION = 'practice=~"queue_starvation|queue_without_consumer|prefetch_starvation"'


def rate(metric: str, *matchers: str) -> str:
    """``rate(metric{...}[$__rate_interval])`` of the selected queues, once for all
    replicas of the exporter."""
    return dedup(f"rate({series(metric, Q, *matchers)}[$__rate_interval])")


def wait_quantile(q: float) -> str:
    buckets = rate("celery_task_queue_wait_seconds_bucket")
    return f"histogram_quantile({q}, sum by (queue, le) ({buckets}))"


def build() -> db.Dashboard:
    board = dashboard(
        UID, "Celery / Queues",
        "Broker queues as flower-practices sees them: messages waiting (priority "
        "sub-queues separately where the broker tells them), tasks prefetched by workers, "
        "consumers, how long tasks wait before they start, and "
        "starved or unconsumed queues.",
        [label_variable("queue", "Queue",
                        'label_values(celery_queue_length{job=~"$job"}, queue)')])
    length = dedup(series("celery_queue_length", Q))
    consumers = dedup(series("celery_queue_consumers", Q))
    board.with_row(row("Backlog and consumers"))
    board.with_panel(single(
        "Messages waiting", "Messages in the selected queues, all priorities.", "short",
        zero_while_up(f"sum({length})"), steps=[(None, "green"), (1000, "orange")]))
    board.with_panel(single(
        "Queues with backlog and no consumer",
        "Queues holding messages that no worker consumes.", "short",
        zero_while_up(f"count((sum by (queue) ({length}) > 0) unless on (queue) "
                      f"(sum by (queue) ({consumers}) > 0))"),
        steps=[(None, "green"), (1, "red")]))
    board.with_panel(single(
        "Starvation findings", "Active queue_starvation, queue_without_consumer and "
        "prefetch_starvation findings.", "short",
        zero_while_up(f"sum({series('celery_practice_violation', STARVATION, Q)})"),
        steps=[(None, "green"), (1, "orange")]))
    board.with_panel(single(
        "Longest p95 wait", "Highest p95 queue wait over the selected queues.", "s",
        f"max({wait_quantile(0.95)})", steps=[(None, "green"), (60, "orange")]))
    board.with_panel(graph(
        "Queue length by queue and priority",
        "Messages waiting per queue. Redis: one series per priority sub-queue (priority "
        "\"0\"-\"9\"; a plain queue has only \"0\"). RabbitMQ (and other transports) cannot "
        "split a queue's depth by priority: its whole depth is one series with priority "
        "\"\" (empty), x-max-priority queue or not.", "short",
        [query(f"sum by (queue, priority) ({length})", "{{queue}} priority {{priority}}")]))
    board.with_panel(graph(
        "Consumers by queue",
        "Consumers per queue (RabbitMQ's count, else workers' active_queues).", "short",
        [query(f"sum by (queue) ({consumers})", "{{queue}}")]))
    board.with_panel(graph(
        "Backlog: in the broker and prefetched by workers",
        "Per queue: messages in the broker (celery_queue_length, all priorities) and tasks "
        "received by live workers but not started (celery_queue_reserved_tasks, from "
        "events). Prefetched messages leave the broker's count: during a priority "
        "inversion the broker can say 0 while workers hold the backlog. After a gap in the "
        "exporter's event stream the reserved count starts over (tasks reserved before it "
        "may have run unheard): it can read low for a while, never high.", "short",
        [query(f"sum by (queue) ({length})", "{{queue}} in broker", ref="A"),
         query(f"sum by (queue) ({series('celery_queue_reserved_tasks', Q)})",
               "{{queue}} reserved on workers", ref="B")], width=24))
    board.with_row(row("Queue wait"))
    board.with_panel(graph(
        "Queue wait p50 / p95 / p99",
        "Time from task-sent (or task-received) to task-started, per queue.", "s",
        [query(wait_quantile(0.5), "{{queue}} p50", ref="A"),
         query(wait_quantile(0.95), "{{queue}} p95", ref="B"),
         query(wait_quantile(0.99), "{{queue}} p99", ref="C")], width=24))
    board.with_panel(graph(
        "Mean queue wait",
        "Average wait per queue (sum / count of the wait histogram).", "s",
        [query(f"sum by (queue) ({rate('celery_task_queue_wait_seconds_sum')}) / "
               f"sum by (queue) ({rate('celery_task_queue_wait_seconds_count')})",
               "{{queue}}")]))
    board.with_panel(graph(
        "Tasks started per queue", "Task-started events per second, per queue.", "ops",
        [query(f"sum by (queue) ({rate('celery_task_events_total', STARTED)})",
               "{{queue}}")]))
    board.with_panel(graph(
        "Oldest waiting task age",
        "Per queue: age of the oldest task sent (task-sent seen, no eta/countdown) and not "
        "yet received by a worker (celery_queue_oldest_task_age_seconds; 0 when none). "
        "Rises while a queue has no consumer or too few; a good autoscaling signal.", "s",
        [query(f"max by (queue) ({dedup(series('celery_queue_oldest_task_age_seconds', Q))})",
               "{{queue}}")]))
    board.with_row(row("Starvation"))
    board.with_panel(instant_table(
        "Starved and unconsumed queues",
        "Active findings about queues: no consumer, wait above the threshold, or tasks "
        "stuck in a busy worker's prefetch while another worker idles.",
        f"max by ({scope_labels()}, practice, severity, queue, worker) "
        f"({series('celery_practice_violation', STARVATION, Q)})", hide=("Time", "Value")))
    return board
