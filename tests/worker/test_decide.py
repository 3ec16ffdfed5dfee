"""The outcome rule as a pure function: retry, defer, pause, hold or dead, from the error
type, the job's bookkeeping and the queue's settings alone."""

from __future__ import annotations

import random

import pytest

from alchemy.config import QueueConfig
from alchemy.errors import (
    BudgetExhaustedError,
    DeferredError,
    DependencyUnavailableError,
    OverBudgetError,
    PermanentError,
    ProviderPausedError,
    RateLimitedError,
    RetryableError,
)
from alchemy.queue.job import DeadReason, ErrorInfo, Meta
from alchemy.worker.outcome import MIN_RETRY_AFTER, Action, decide

QUEUE = QueueConfig(
    name="q",
    handler="m:f",
    max_attempts=3,
    backoff_initial=5.0,
    backoff_multiplier=2.0,
    backoff_max=600.0,
    backoff_jitter=0.0,
    max_deferrals=3,
    max_deferred=100.0,
)
ERROR = ErrorInfo("X", "boom")


def test_plain_failures_retry_with_backoff_then_die() -> None:
    first = decide(ValueError("x"), Meta(id="j", attempt=1), ERROR, QUEUE)
    assert (first.action, first.delay, first.meta.attempt) == (Action.RETRY, 5.0, 2)
    assert first.meta.last_error == ERROR
    second = decide(ValueError("x"), Meta(id="j", attempt=2), ERROR, QUEUE)
    assert (second.action, second.delay) == (Action.RETRY, 10.0)
    last = decide(ValueError("x"), Meta(id="j", attempt=3), ERROR, QUEUE)
    assert (last.action, last.reason) == (Action.DEAD, DeadReason.MAX_ATTEMPTS)


def test_a_retryable_delay_is_exact_and_spends_an_attempt() -> None:
    decision = decide(RetryableError("x", delay=1.5), Meta(id="j"), ERROR, QUEUE)
    assert (decision.action, decision.delay, decision.meta.attempt) == (Action.RETRY, 1.5, 2)


def test_permanent_errors_die_at_once() -> None:
    decision = decide(PermanentError("no"), Meta(id="j"), ERROR, QUEUE)
    assert (decision.action, decision.reason) == (Action.DEAD, DeadReason.PERMANENT_ERROR)


@pytest.mark.parametrize(
    ("exc", "action", "delay"),
    [
        (RateLimitedError(30.0), Action.PAUSE, 30.0),
        (RateLimitedError(0.01), Action.PAUSE, MIN_RETRY_AFTER),  # raised to the floor
        (DependencyUnavailableError("postgres"), Action.HOLD, 0.0),
    ],
)
def test_coming_back_spends_no_attempt_but_counts_a_deferral(
    exc: Exception, action: Action, delay: float
) -> None:
    decision = decide(exc, Meta(id="j", attempt=2, deferrals=1, deferred_ms=500), ERROR, QUEUE)
    assert (decision.action, decision.delay) == (action, delay)
    assert decision.meta.attempt == 2
    assert decision.meta.deferrals == 2
    assert decision.meta.deferred_ms == 500 + round(delay * 1000)
    if action is Action.HOLD:
        assert decision.dependency == "postgres"


def test_too_many_deferrals_die_as_deferred_too_long() -> None:
    meta = Meta(id="j", deferrals=3, deferred_ms=3000)
    decision = decide(RateLimitedError(30.0), meta, ERROR, QUEUE)
    assert (decision.action, decision.reason) == (Action.DEAD, DeadReason.DEFERRED_TOO_LONG)
    assert decision.error.type == "DeferredTooLong"
    assert "deferred 4 times" in decision.error.message
    assert decision.error.message.endswith("last: X: boom")


def test_a_deferral_is_not_counted() -> None:
    # Bounded by whoever defers (a paid-work lease expires): a job may wait as long as the
    # work someone else holds can take.
    meta = Meta(id="j", attempt=2, deferrals=3, deferred_ms=99_000)
    decision = decide(DeferredError(12.0), meta, ERROR, QUEUE)
    assert (decision.action, decision.delay) == (Action.DEFER, 12.0)
    assert (decision.meta.attempt, decision.meta.deferrals) == (2, 3)
    assert decision.meta.deferred_ms == 99_000


def test_too_long_in_all_dies_too_but_holds_count_no_time() -> None:
    meta = Meta(id="j", deferrals=1, deferred_ms=95_000)
    long = decide(RateLimitedError(10.0), meta, ERROR, QUEUE)
    assert (long.action, long.reason) == (Action.DEAD, DeadReason.DEFERRED_TOO_LONG)
    held = decide(DependencyUnavailableError("postgres"), meta, ERROR, QUEUE)
    assert held.action is Action.HOLD  # an outage's length is not the job's fault


def test_jitter_only_shortens_the_backoff() -> None:
    jittery = QueueConfig(name="q", handler="m:f", backoff_jitter=0.5)
    rng = random.Random(7)
    delays = [decide(ValueError(), Meta(id="j"), ERROR, jittery, rng).delay for _ in range(50)]
    assert all(2.5 <= d <= 5.0 for d in delays)
    assert len(set(delays)) > 1


def test_a_budget_hold_defers_with_its_reason_and_is_never_counted() -> None:
    meta = Meta(id="j", attempt=2, deferrals=QUEUE.max_deferrals)  # at the limit already
    exc = BudgetExhaustedError(60.0, "budget_exhausted: brand b daily budget $1.00 ...")
    decision = decide(exc, meta, ERROR, QUEUE)
    assert (decision.action, decision.delay, decision.waiting_for) == (
        Action.DEFER,
        60.0,
        "budget_exhausted",
    )
    assert (decision.meta.attempt, decision.meta.deferrals) == (2, QUEUE.max_deferrals)


def test_a_providers_spend_limit_holds_for_the_pause_and_is_never_counted() -> None:
    meta = Meta(id="j", deferrals=QUEUE.max_deferrals)
    decision = decide(ProviderPausedError("openai"), meta, ERROR, QUEUE, provider_pause=900.0)
    assert (decision.action, decision.dependency, decision.hold_for) == (
        Action.HOLD,
        "provider:openai",
        900.0,
    )
    assert (decision.meta.attempt, decision.meta.deferrals) == (1, QUEUE.max_deferrals)


def test_a_call_over_the_whole_budget_dies_at_once() -> None:
    decision = decide(OverBudgetError("over_budget: ..."), Meta(id="j"), ERROR, QUEUE)
    assert (decision.action, decision.reason) == (Action.DEAD, DeadReason.PERMANENT_ERROR)
