"""Metrics: what each transition counts, the provider API, the queue gauges, and the log
lines dropped."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from alchemy.config import parse_config
from alchemy.logs import dropped_lines
from alchemy.ops.metrics import LogCollector, Metrics, QueueCollector
from alchemy.ops.wiring import operations
from alchemy.paid.observe import ProviderCall
from alchemy.queue.admin import ConsumerStatus, QueueStatus
from alchemy.queue.job import ErrorInfo
from alchemy.worker.observer import JobEvent, Transition

ERROR = ErrorInfo("ValueError", "no")


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_each_transition_counts_once() -> None:
    m = Metrics()
    events = [
        JobEvent("q", Transition.STARTED, "a", 1, "w", pickup_s=0.004),
        JobEvent("q", Transition.COMPLETED, "a", 1, "w", duration_s=0.02),
        JobEvent("q", Transition.STARTED, "b", 1, "w", pickup_s=-0.5),  # clocks disagree
        JobEvent("q", Transition.RETRYING, "b", 1, "w", 0.1, error=ERROR, retry_in_s=2.0),
        JobEvent("q", Transition.STARTED, "b", 2, "w"),
        JobEvent("q", Transition.DEAD, "b", 2, "w", 0.1, error=ERROR, reason="max_attempts"),
        JobEvent("q", Transition.STARTED, "c", 1, "w"),
        JobEvent("q", Transition.PAUSED, "c", 1, "w", 0.001, error=ERROR, retry_in_s=30.0),
        JobEvent("q", Transition.DEAD, None, 1, "w", error=ERROR, reason="invalid_json"),
        JobEvent("r", Transition.STARTED, "d", 1, "w"),
    ]
    for event in events:
        m.on_job(event)
    for job_id in ("e", "f", "g"):
        m.on_job(JobEvent("q", Transition.RECOVERED, job_id, 1, "w", dead_worker="dead-one"))
    m.on_job(JobEvent("q", Transition.DEAD, "h", 2, "w", reason="poison", dead_worker="dead-one"))
    m.on_held_back("q", "throttled", 250)
    m.on_held_back("q", "paused", -1)
    m.on_held_back("q", "paused", 30_000)
    assert value(m, "alchemy_jobs_started_total", queue="q") == 4
    assert value(m, "alchemy_jobs_started_total", queue="r") == 1
    assert value(m, "alchemy_jobs_completed_total", queue="q") == 1
    assert value(m, "alchemy_jobs_failed_total", queue="q") == 2  # b twice; not the bad item
    assert value(m, "alchemy_jobs_retried_total", queue="q") == 1
    assert value(m, "alchemy_jobs_rate_limited_total", queue="q") == 1
    assert value(m, "alchemy_jobs_dead_total", queue="q", reason="max_attempts") == 1
    assert value(m, "alchemy_jobs_dead_total", queue="q", reason="invalid_json") == 1
    assert value(m, "alchemy_jobs_dead_total", queue="q", reason="poison") == 1
    assert value(m, "alchemy_jobs_recovered_total", queue="q") == 3
    duration = "alchemy_job_duration_seconds_count"
    assert value(m, duration, queue="q", outcome="completed") == 1
    assert value(m, duration, queue="q", outcome="dead") == 1
    assert value(m, "alchemy_job_pickup_seconds_count", queue="q") == 2
    assert value(m, "alchemy_job_pickup_seconds_bucket", queue="q", le="0.005") == 2
    assert value(m, "alchemy_queue_held_back_total", queue="q", why="paused") == 2
    assert value(m, "alchemy_queue_held_back_seconds_total", queue="q", why="throttled") == 0.25
    assert value(m, "alchemy_queue_held_back_seconds_total", queue="q", why="paused") == 2.0


def test_provider_calls_tokens_images_and_cost() -> None:
    m = Metrics()
    m.on_provider_call(ProviderCall("anthropic", "claude", "ok", 100, 40, 0, Decimal("0.0009")))
    m.on_provider_call(ProviderCall("anthropic", "claude", "ok", 1, cost_usd=Decimal("0.0001")))
    m.on_provider_call(ProviderCall("openai", "gpt", "teapot"))  # unknown outcome: error
    m.on_provider_call(ProviderCall("openai", "gpt-image-1.5", "ok", images=2))
    m.on_provider_call(ProviderCall("openai", "gpt-image-1.5", "error", images=0))
    m.on_provider_call(ProviderCall("openai", "gpt", "interrupted"))
    calls = "alchemy_provider_calls_total"
    assert value(m, calls, provider="anthropic", model="claude", outcome="ok") == 2
    assert value(m, calls, provider="openai", model="gpt", outcome="error") == 1
    assert value(m, calls, provider="openai", model="gpt", outcome="interrupted") == 1
    tokens = "alchemy_provider_tokens_total"
    assert value(m, tokens, provider="anthropic", model="claude", kind="input") == 101
    assert value(m, tokens, provider="anthropic", model="claude", kind="output") == 40
    assert value(m, tokens, provider="openai", model="gpt", kind="input") is None
    assert value(m, "alchemy_images_generated_total", model="gpt-image-1.5") == 2
    cost = "alchemy_provider_cost_usd_total"
    assert value(m, cost, provider="anthropic", model="claude", outcome="ok") == pytest.approx(
        0.001
    )
    assert value(m, cost, provider="openai", model="gpt", outcome="error") is None  # no price
    assert b"alchemy_provider_calls_total{" in m.render()


def test_lease_events() -> None:
    m = Metrics()
    for event in ("taken_over", "deferred", "deferred", "lost"):
        m.on_lease("content-generation", event)
    events = "alchemy_work_lease_events_total"
    assert value(m, events, queue="content-generation", event="deferred") == 2
    assert value(m, events, queue="content-generation", event="lost") == 1


def test_queue_gauges_come_from_the_last_read() -> None:
    m = Metrics.for_process()
    status = QueueStatus(
        "q",
        wait=5,
        processing=2,
        delayed=1,
        dead=7,
        paused=True,
        paused_for_ms=-1,
        consumers=[ConsumerStatus("w", True, 2, None), ConsumerStatus("x", False, 0, None)],
        dead_trimmed=3,
    )
    statuses: dict[str, QueueStatus] | None = None
    m.watch_queues(QueueCollector(lambda: statuses, lambda: {"q": 2}))
    assert value(m, "alchemy_redis_up") == 0
    assert value(m, "alchemy_queue_jobs", queue="q", state="wait") is None
    statuses = {"q": status}
    m.watch_queues(QueueCollector(lambda: statuses, lambda: {"q": 2}))  # replaces the first
    for state, count in (("wait", 5), ("processing", 2), ("delayed", 1), ("dead", 7)):
        assert value(m, "alchemy_queue_jobs", queue="q", state=state) == count
    assert value(m, "alchemy_queue_paused", queue="q") == 1
    assert value(m, "alchemy_queue_consumers", queue="q") == 1
    assert value(m, "alchemy_dead_trimmed_total", queue="q") == 3
    assert value(m, "alchemy_jobs_in_flight", queue="q") == 2
    assert value(m, "alchemy_redis_up") == 1
    text = m.render().decode()
    assert "process_cpu_seconds_total" in text
    assert "_created" not in text


def test_dropped_log_lines_are_read_when_scraped() -> None:
    m = Metrics.for_process()
    assert value(m, "alchemy_log_lines_dropped_total") == dropped_lines()
    registry = CollectorRegistry()
    dropped = 0
    registry.register(LogCollector(lambda: dropped))
    assert registry.get_sample_value("alchemy_log_lines_dropped_total") == 0
    dropped = 42
    assert registry.get_sample_value("alchemy_log_lines_dropped_total") == 42


def test_without_a_listener_no_metrics_are_kept(tmp_path: Path) -> None:
    """``[http] port = 0``: nothing can read metrics, so the process builds none and the
    Prometheus client is never imported (its memory counts against the engine's 40 MB)."""
    script = (
        "import sys\n"
        "from alchemy.config import parse_config\n"
        "from alchemy.ops.wiring import operations\n"
        "ops = operations(parse_config({}), collect_metrics=False)\n"
        "assert ops.metrics is None and ops.paid_observer is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('prometheus')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    assert done.stdout.strip() == "[]"
    with_metrics = operations(parse_config({}), collect_metrics=True, install_metrics=False)
    assert isinstance(with_metrics.metrics, Metrics)
