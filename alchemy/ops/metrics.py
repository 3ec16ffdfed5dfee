"""Prometheus metrics of one worker process, in a registry of its own.

:class:`Metrics` is a job observer: it counts transitions and times jobs as the engine
reports them (an integer increment or a bucket count each, no I/O, no lock). Queue depths
are read from Redis when ``/metrics`` is scraped, through a cache that asks Redis at most
once a second however often it is scraped (:mod:`alchemy.http.overview`).

Provider calls and leases of paid work are counted as the ledger records them: a
:class:`Metrics` is also the services' :class:`~alchemy.paid.observe.PaidObserver`, set
when the process is assembled (``python -m alchemy run``), so handlers and providers never
import this module.

Every metric is listed in docs/operations.md ("Metrics").
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from typing import Final

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from alchemy.logs import dropped_lines
from alchemy.paid.brand_budgets import BudgetReport
from alchemy.paid.observe import OUTCOMES, ProviderCall
from alchemy.queue.admin import QueueStatus
from alchemy.worker.observer import JobEvent, Transition

log = structlog.get_logger("alchemy.metrics")

DURATION_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
PICKUP_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
PAUSED_SLEEP_MS: Final = 1000  # a paused consumer looks again after at most this
# Transitions counted by one attribute of a queue's counts, and nothing else.
COUNTED: Final = {
    Transition.PAUSED: "rate_limited",
    Transition.DEFERRED: "deferred",
    Transition.HELD: "held",
}


class _Histogram:
    """Bucket counts and sum of one labelled histogram: two list operations an observation."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def family_sample(self) -> tuple[list[tuple[str, float]], float]:
        buckets = []
        cumulative = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            le = floatToGoString(bound)  # type: ignore[no-untyped-call]
            buckets.append((le, float(cumulative)))
        return buckets, self.total


class _Queue:
    """The job counters of one queue, plain integers (a scrape turns them into metrics)."""

    __slots__ = (
        "completed",
        "dead",
        "deferred",
        "duration",
        "failed",
        "held",
        "pickup",
        "rate_limited",
        "recovered",
        "retried",
        "started",
    )

    def __init__(self) -> None:
        self.started = self.completed = self.failed = self.retried = 0
        self.rate_limited = self.recovered = self.deferred = self.held = 0
        self.dead: dict[str, int] = {}
        self.pickup = _Histogram(PICKUP_BUCKETS)
        self.duration = {
            outcome: _Histogram(DURATION_BUCKETS)
            for outcome in ("completed", "retrying", "paused", "deferred", "held", "dead")
        }


_COUNTERS: Final = (
    ("started", "alchemy_jobs_started", "Attempts started (handler called)"),
    ("completed", "alchemy_jobs_completed", "Attempts that completed"),
    (
        "failed",
        "alchemy_jobs_failed",
        "Attempts that failed (raised or timed out), then retried or dead-lettered",
    ),
    ("retried", "alchemy_jobs_retried", "Failed attempts scheduled for a retry"),
    (
        "rate_limited",
        "alchemy_jobs_rate_limited",
        "Attempts that raised RateLimitedError (queue paused, no attempt spent)",
    ),
    (
        "recovered",
        "alchemy_jobs_recovered",
        "Jobs this process returned to the wait list from a dead process",
    ),
    (
        "deferred",
        "alchemy_jobs_deferred",
        "Attempts that raised DeferredError (back later, no attempt spent)",
    ),
    (
        "held",
        "alchemy_jobs_held",
        "Attempts that found a dependency down (back to the front, no attempt spent)",
    ),
)


class JobCollector(Collector):
    """The per-job metrics. The engine calls observers on the hot path, where even
    prometheus_client's counters (a lock and a few checks each) add up at 10,000 jobs/s, so
    these are plain integers turned into metric families only when scraped."""

    def __init__(self) -> None:
        self.queues: dict[str, _Queue] = {}

    def queue(self, name: str) -> _Queue:
        q = self.queues.get(name)
        if q is None:
            q = self.queues[name] = _Queue()
        return q

    def collect(self) -> Iterable[Metric]:
        queues = list(self.queues.items())
        for attribute, name, documentation in _COUNTERS:
            family = CounterMetricFamily(name, documentation, labels=["queue"])
            for queue, q in queues:
                family.add_metric([queue], getattr(q, attribute))
            yield family
        dead = CounterMetricFamily(
            "alchemy_jobs_dead", "Jobs dead-lettered, by reason", labels=["queue", "reason"]
        )
        for queue, q in queues:
            for reason, count in q.dead.items():
                dead.add_metric([queue, reason], count)
        yield dead
        duration = HistogramMetricFamily(
            "alchemy_job_duration_seconds",
            "Time in the handler per attempt, by outcome",
            labels=["queue", "outcome"],
        )
        pickup = HistogramMetricFamily(
            "alchemy_job_pickup_seconds",
            "From the producer's enqueued_at to the start of the first attempt",
            labels=["queue"],
        )
        for queue, q in queues:
            for outcome, histogram in q.duration.items():
                duration.add_metric([queue, outcome], *histogram.family_sample())
            pickup.add_metric([queue], *q.pickup.family_sample())
        yield duration
        yield pickup


class LogCollector(Collector):
    """The log lines the process dropped because standard output did not take them
    (:func:`alchemy.logs.dropped_lines`, read when scraped)."""

    def __init__(self, dropped: Callable[[], int] = dropped_lines) -> None:
        self.dropped = dropped

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            "alchemy_log_lines_dropped",
            "Log lines dropped because standard output was stuck (or closed)",
            value=self.dropped(),
        )


class Metrics:
    """Every metric of one worker process; also the :class:`JobObserver` feeding them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs = JobCollector()
        r.register(self.jobs)
        r.register(LogCollector())
        self.held_back = Counter(
            "alchemy_queue_held_back",
            "Claims refused: no rate-limit token (throttled), the queue paused, or held while"
            " a dependency is down",
            ["queue", "why"],
            registry=r,
        )
        self.held_back_seconds = Counter(
            "alchemy_queue_held_back_seconds",
            "Seconds consumers waited because of the rate limit, a pause or a hold",
            ["queue", "why"],
            registry=r,
        )
        self.provider_calls = Counter(
            "alchemy_provider_calls",
            "Calls to AI providers, by outcome (ok, refused, rate_limited, timeout, error,"
            " interrupted), as the ledger recorded them",
            ["provider", "model", "outcome"],
            registry=r,
        )
        self.provider_tokens = Counter(
            "alchemy_provider_tokens",
            "Tokens used at AI providers (kind: input or output)",
            ["provider", "model", "kind"],
            registry=r,
        )
        self.images = Counter("alchemy_images_generated", "Images generated", ["model"], registry=r)
        self.provider_cost = Counter(
            "alchemy_provider_cost_usd",
            "Cost of provider calls in US dollars, from the price table (alchemy/providers/"
            "prices.toml); calls of a model without a price are not in it",
            ["provider", "model", "outcome"],
            registry=r,
        )
        self.lease_events = Counter(
            "alchemy_work_lease_events",
            "Leases of paid work: taken_over (expired or its owner dead), deferred (held by"
            " a live runner), lost (a result fenced out and discarded)",
            ["queue", "event"],
            registry=r,
        )
        self.budget_holds = Counter(
            "alchemy_budget_holds",
            "Times a job was held (budget_exhausted) because a budget had no room for the"
            " worst case of its next provider call",
            ["queue"],
            registry=r,
        )
        self.budgets = BudgetGauges()
        r.register(self.budgets)
        self.provider_in_use = Gauge(
            "alchemy_provider_in_use",
            "1 for the provider this process uses by default for each kind (text, image);"
            ' provider="offline" means placeholders: no model is called',
            ["kind", "provider"],
            registry=r,
        )
        self._collector: QueueCollector | None = None

    def providers_in_use(self, text: str, image: str) -> None:
        """Set once at assembly from the configuration (``auto`` resolved)."""
        self.provider_in_use.clear()
        self.provider_in_use.labels("text", text).set(1)
        self.provider_in_use.labels("image", image).set(1)

    @classmethod
    def for_process(cls) -> Metrics:
        """A fresh registry with the process and platform collectors."""
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series
        registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        return cls(registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def watch_queues(self, collector: QueueCollector) -> None:
        """Serve ``collector``'s queue gauges (in place of any earlier one)."""
        if self._collector is not None:
            self.registry.unregister(self._collector)
        self.registry.register(collector)
        self._collector = collector

    # -- JobObserver ------------------------------------------------------------------------
    def on_job(self, event: JobEvent) -> None:
        q = self.jobs.queues.get(event.queue) or self.jobs.queue(event.queue)
        transition = event.transition
        if transition is Transition.STARTED:
            q.started += 1
            if event.pickup_s is not None:
                q.pickup.observe(max(0.0, event.pickup_s))
            return
        if event.duration_s is not None:
            q.duration[transition].observe(event.duration_s)
        if transition is Transition.COMPLETED:
            q.completed += 1
        elif transition is Transition.RETRYING:
            q.failed += 1
            q.retried += 1
        elif transition in COUNTED:
            setattr(q, COUNTED[transition], getattr(q, COUNTED[transition]) + 1)
            if event.reason == "budget_exhausted":
                self.budget_holds.labels(event.queue).inc()
        elif transition is Transition.DEAD:
            if event.duration_s is not None:  # ran and failed; bad input never ran
                q.failed += 1
            reason = event.reason or "unknown"
            q.dead[reason] = q.dead.get(reason, 0) + 1
        elif transition is Transition.RECOVERED:
            q.recovered += 1

    def on_held_back(self, queue: str, why: str, wait_ms: int) -> None:
        self.held_back.labels(queue, why).inc()
        slept = PAUSED_SLEEP_MS if wait_ms < 0 else wait_ms
        if why in ("paused", "held"):
            slept = min(slept, PAUSED_SLEEP_MS)
        self.held_back_seconds.labels(queue, why).inc(slept / 1000)

    # -- PaidObserver: the ledger of provider calls and the leases of paid work -----------
    def on_provider_call(self, call: ProviderCall) -> None:
        """One provider call as the ledger recorded it (alchemy.paid): counted by outcome,
        with its tokens, images and cost. Never raises (metrics must never fail a job)."""
        try:
            provider, model = call.provider, call.model
            outcome = call.outcome if call.outcome in OUTCOMES else "error"
            self.provider_calls.labels(provider, model, outcome).inc()
            if call.input_tokens > 0:
                self.provider_tokens.labels(provider, model, "input").inc(call.input_tokens)
            if call.output_tokens > 0:
                self.provider_tokens.labels(provider, model, "output").inc(call.output_tokens)
            if call.images > 0 and outcome == "ok":
                self.images.labels(model).inc(call.images)
            if call.cost_usd is not None:
                self.provider_cost.labels(provider, model, outcome).inc(float(call.cost_usd))
        except Exception as exc:
            log.error("metrics_failed", error=repr(exc))

    def on_lease(self, queue: str, event: str) -> None:
        self.lease_events.labels(queue, event).inc()


# -- budgets, read from PostgreSQL at scrape time ---------------------------------------------
class BudgetGauges(Collector):
    """Each budget's amount, spend, reservations and what remains in its current window
    (``scope``: ``brand:<uuid>`` or ``provider:<name>``; ``window``: daily or monthly), from
    the last report read at a scrape (:func:`alchemy.paid.brand_budgets.report`)."""

    def __init__(self) -> None:
        self.report: BudgetReport | None = None

    def collect(self) -> Iterable[Metric]:
        names = {
            "budget": ("alchemy_budget_usd", "The budget of the window, USD"),
            "spent": ("alchemy_budget_spent_usd", "Spent in the window, from the ledger, USD"),
            "reserved": (
                "alchemy_budget_reserved_usd",
                "Reserved by provider calls in flight (their worst case), USD",
            ),
            "remaining": (
                "alchemy_budget_remaining_usd",
                "Budget minus spent minus reserved, USD (a window without a budget: absent)",
            ),
        }
        families = {
            key: GaugeMetricFamily(name, text, labels=["scope", "window"])
            for key, (name, text) in names.items()
        }
        report = self.report
        uses = (
            []
            if report is None
            else [
                *(
                    (f"brand:{b.brand_id}", use)
                    for b in report.brands
                    for use in (b.daily, b.monthly)
                ),
                *((f"provider:{cap.provider}", cap.daily) for cap in report.providers),
            ]
        )
        for scope, use in uses:
            labels = [scope, use.kind]
            families["spent"].add_metric(labels, float(use.spent))
            families["reserved"].add_metric(labels, float(use.reserved))
            remaining = use.remaining
            if remaining is not None:
                families["budget"].add_metric(labels, float(use.budget))
                families["remaining"].add_metric(labels, float(remaining))
        yield from families.values()


# -- queue depths, read from Redis at scrape time ------------------------------------------
class QueueCollector(Collector):
    """Gauges of queue depth (from the last statuses read from Redis, see
    :mod:`alchemy.http.overview`) and of the attempts running in this process."""

    def __init__(
        self,
        statuses: Callable[[], Mapping[str, QueueStatus] | None],
        in_flight: Callable[[], Mapping[str, int]],
    ) -> None:
        self.statuses = statuses
        self.in_flight = in_flight

    def collect(self) -> Iterable[Metric]:
        statuses = self.statuses()
        depth = GaugeMetricFamily(
            "alchemy_queue_jobs", "Jobs in the queue by state (Redis)", labels=["queue", "state"]
        )
        paused = GaugeMetricFamily(
            "alchemy_queue_paused", "1 while the queue is paused", labels=["queue"]
        )
        consumers = GaugeMetricFamily(
            "alchemy_queue_consumers", "Live processes serving the queue", labels=["queue"]
        )
        budget_held = GaugeMetricFamily(
            "alchemy_queue_budget_held",
            "Delayed jobs held because a budget is exhausted (budget_exhausted), per scope"
            ' ("brand:<uuid>" or "provider:<name>")',
            labels=["queue", "scope"],
        )
        trimmed = CounterMetricFamily(
            "alchemy_dead_trimmed",
            "Dead-letter entries dropped, the oldest, to keep the list at max_dead (Redis)",
            labels=["queue"],
        )
        for queue, s in (statuses or {}).items():
            for state in ("wait", "processing", "delayed", "dead"):
                depth.add_metric([queue, state], getattr(s, state))
            paused.add_metric([queue], 1.0 if s.paused else 0.0)
            consumers.add_metric([queue], sum(c.alive for c in s.consumers))
            trimmed.add_metric([queue], s.dead_trimmed)
            for scope, count in s.budget_held.items():
                budget_held.add_metric([queue, scope], count)
        running = GaugeMetricFamily(
            "alchemy_jobs_in_flight", "Attempts running in this process", labels=["queue"]
        )
        for queue, count in self.in_flight().items():
            running.add_metric([queue], count)
        up = GaugeMetricFamily("alchemy_redis_up", "1 if the last read of queue depths worked")
        up.add_metric([], 0.0 if statuses is None else 1.0)
        yield from (depth, paused, consumers, budget_held, trimmed, running, up)
