"""What happens to a job whose attempt failed: a pure function of the error, the job's
bookkeeping and the queue's settings, so the rule lives in one place and tests call it.

    the attempt raised                         the decision
    ProviderPausedError (a provider's own      HOLD for ``provider_pause`` seconds (or until
    spend limit)                               ``alchemy resume``): back to the front of the
                                               queue, no attempt spent, no probe, not counted
    DependencyUnavailableError                 HOLD: back to the front of the queue, no
                                               attempt spent; the queues needing the
                                               dependency hold until it answers
    RateLimitedError(retry_after)              PAUSE: the queue pauses for retry_after (at
                                               least MIN_RETRY_AFTER), the job comes back
                                               after it, no attempt spent
    DeferredError(delay)                       DEFER: the job comes back after delay, no
                                               attempt spent, the queue goes on (its
                                               ``reason``, e.g. ``budget_exhausted``, kept)
    PermanentError                             DEAD (permanent_error)
    anything else, attempts left               RETRY after the backoff (or the error's delay)
    anything else, last attempt                DEAD (max_attempts)

HOLD and PAUSE count a deferral; a job deferred more than ``max_deferrals`` times, or
(PAUSE) for more than ``max_deferred`` seconds in all, is DEAD (``deferred_too_long``)
instead. DEFER is not counted: it is bounded by whoever raises it (a paid-work lease
expires, a budget window resets); nor is a provider's pause, which its operator ends.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from enum import Enum
from typing import Final

from alchemy.config import QueueConfig
from alchemy.errors import (
    DeferredError,
    DependencyUnavailableError,
    PermanentError,
    ProviderPausedError,
    RateLimitedError,
    RetryableError,
)
from alchemy.queue.backoff import backoff_delay
from alchemy.queue.job import DeadReason, ErrorInfo, Meta

MIN_RETRY_AFTER: Final = 1.0  # seconds: a shorter "retry after" is raised to this


class Action(Enum):
    RETRY = "retrying"
    DEFER = "deferred"
    PAUSE = "paused"
    HOLD = "held"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    meta: Meta  # the bookkeeping the job carries on (RETRY, DEFER, PAUSE, HOLD)
    error: ErrorInfo  # what the records, events and a dead-letter entry say
    delay: float = 0.0  # seconds until it is due (RETRY, DEFER, PAUSE)
    reason: DeadReason | None = None  # DEAD
    dependency: str | None = None  # HOLD
    hold_for: float | None = None  # HOLD: seconds the hold lasts, without a probe
    waiting_for: str | None = None  # DEFER: why the job waits (budget_exhausted)


def decide(
    exc: BaseException,
    meta: Meta,
    error: ErrorInfo,
    queue: QueueConfig,
    rng: random.Random | None = None,
    *,
    provider_pause: float = 3600.0,
) -> Decision:
    """The fate of a job whose attempt ``meta.attempt`` failed with ``exc``."""
    failed = replace(meta, last_error=error)
    if isinstance(exc, ProviderPausedError):
        return Decision(
            Action.HOLD, failed, error, dependency=exc.dependency, hold_for=provider_pause
        )
    if isinstance(exc, DependencyUnavailableError):
        return _deferral(Action.HOLD, failed, 0.0, queue, dependency=exc.dependency)
    if isinstance(exc, RateLimitedError):
        return _deferral(Action.PAUSE, failed, max(MIN_RETRY_AFTER, exc.retry_after), queue)
    if isinstance(exc, DeferredError):
        # Bounded by whoever defers (a paid-work lease expires), so not counted: a job may
        # wait as long as the work someone else holds can take.
        return Decision(
            Action.DEFER, failed, error, delay=max(0.0, exc.delay), waiting_for=exc.reason
        )
    if isinstance(exc, PermanentError):
        return Decision(Action.DEAD, failed, error, reason=DeadReason.PERMANENT_ERROR)
    if meta.attempt >= queue.max_attempts:
        return Decision(Action.DEAD, failed, error, reason=DeadReason.MAX_ATTEMPTS)
    delay = retry_delay(exc, meta.attempt, queue, rng)
    return Decision(Action.RETRY, replace(failed, attempt=meta.attempt + 1), error, delay=delay)


def _deferral(
    action: Action,
    meta: Meta,
    delay: float,
    queue: QueueConfig,
    *,
    dependency: str | None = None,
) -> Decision:
    assert meta.last_error is not None
    deferred = replace(
        meta, deferrals=meta.deferrals + 1, deferred_ms=meta.deferred_ms + round(delay * 1000)
    )
    too_often = deferred.deferrals > queue.max_deferrals
    too_long = action is not Action.HOLD and deferred.deferred_ms > queue.max_deferred * 1000
    if too_often or too_long:
        last = meta.last_error
        error = ErrorInfo(
            "DeferredTooLong",
            f"deferred {deferred.deferrals} times for {deferred.deferred_ms / 1000:g}s in all"
            f" (limits: max_deferrals {queue.max_deferrals}, max_deferred"
            f" {queue.max_deferred:g}s); last: {last.type}: {last.message}",
        )
        return Decision(Action.DEAD, meta, error, reason=DeadReason.DEFERRED_TOO_LONG)
    return Decision(action, deferred, meta.last_error, delay=delay, dependency=dependency)


def retry_delay(
    exc: BaseException, attempt: int, queue: QueueConfig, rng: random.Random | None = None
) -> float:
    if isinstance(exc, RetryableError) and exc.delay is not None:
        return exc.delay
    return backoff_delay(
        attempt,
        initial=queue.backoff_initial,
        multiplier=queue.backoff_multiplier,
        maximum=queue.backoff_max,
        jitter=queue.backoff_jitter,
        rng=rng,
    )
