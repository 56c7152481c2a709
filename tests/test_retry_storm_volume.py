"""retry_storm is relative to the task's own runs: real workers on the real Redis.

A busy task that retries a few per cent of its runs once, with jittered back-off, exceeds
an absolute retry count but is no storm; a task whose every message retries 5 times (with
a fixed 1 s countdown: no zero-delay retry) is one, its retries most of its attempts.
The absolute floor is lowered to 10 (the rule's default of 100 retries per 5 min would
need thousands of runs, too many for a 2-core test box: tests/test_rule_semantics_units.py
feeds such a stream to the engine).
"""

from __future__ import annotations

import pytest

from tests.support.exporter import wait_for
from tests.test_retry_storm_policy import events, retries_env, settled_storm

pytestmark = pytest.mark.slow


def test_a_busy_task_retrying_a_few_runs_is_no_storm_but_retry_every_run_is() -> None:
    with retries_env("volume", 8, {"max_retries_per_window": 10}) as (app, exporter, _):
        for i in range(400):
            app.send_task("retries.busy", args=(i,))
        wait_for(lambda: events(exporter, "succeeded", "retries.busy") == 400,
                 timeout=120, message="all 400 busy tasks succeeded")
        assert events(exporter, "retried", "retries.busy") == 20  # > the floor of 10
        exporter.wait_evaluated()
        assert exporter.findings("retry_storm") == []
        assert exporter.total("celery_practice_violations_total",
                              practice="retry_storm") == 0

        for _ in range(3):
            app.send_task("retries.pounding")
        wait_for(lambda: events(exporter, "failed", "retries.pounding") == 3,
                 timeout=90, message="the pounding tasks exhausted their retries")

        f = settled_storm(exporter, "retries.pounding", 15)
        ev = f["evidence"]
        # 5 retries per first attempt: 83 % of the attempts are retries (limit 75 %)
        assert ev["first_attempts_in_window"] == 3
        assert ev["retry_share"] == round(15 / 18, 3)
        assert ev["zero_delay_retries"] == 0  # a storm by share, not by zero delay
        assert "for 3 first attempts: 83% of the attempts are retries" in f["summary"]
        assert [x["task"] for x in exporter.findings("retry_storm")] == [
            "retries.pounding"]
