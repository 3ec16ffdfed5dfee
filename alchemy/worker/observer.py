"""Hooks for whatever watches the engine (metrics, the events stream, Python callbacks).

The consumer and the membership call these synchronously at each transition; an observer
must not block (queue the work and write it elsewhere) and must not raise.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import NamedTuple, Protocol

import structlog

from alchemy.queue.job import ErrorInfo

log = structlog.get_logger("alchemy.observer")


class Transition(StrEnum):
    STARTED = "started"
    COMPLETED = "completed"
    RETRYING = "retrying"  # failed, comes back after a backoff
    PAUSED = "paused"  # rate limited upstream: comes back after the pause, no attempt spent
    DEFERRED = "deferred"  # not now (the work is held elsewhere): back later, no attempt spent
    HELD = "held"  # a dependency is down: back at the front of the queue, no attempt spent
    DEAD = "dead"
    RECOVERED = "recovered"  # its process died while running it: back on the wait list
    PROGRESS = "progress"  # the handler reported how far it is (job.progress), throttled


class JobEvent(NamedTuple):
    """One transition of one job. A named tuple: immutable, and built twice per job on the
    engine's hot path, where a frozen dataclass costs three times as much."""

    queue: str
    transition: Transition
    job_id: str | None
    attempt: int
    worker: str
    duration_s: float | None = None  # finished transitions: time in the handler
    pickup_s: float | None = None  # started: from enqueued_at to start (first attempt only)
    error: ErrorInfo | None = None
    reason: str | None = None  # dead: the dead-letter reason
    retry_in_s: float | None = None
    dead_worker: str | None = None  # recovered, and dead as poison: whose process died
    recoveries: int = 0  # deaths of processes running this job so far
    # progress, and completed/retrying/dead after a report: the latest fraction and step
    progress: float | None = None
    step: str | None = None
    result: str | None = None  # completed: what the handler returned, as capped JSON text
    first_run: bool = False  # started: attempt 1, never recovered nor deferred before


class JobObserver(Protocol):
    def on_job(self, event: JobEvent) -> None: ...

    def on_held_back(self, queue: str, why: str, wait_ms: int) -> None:
        """``why``: "throttled" (no rate-limit token), "paused", "held", or "late_start" (a
        start later than its token, which took a new one)."""


class Observers:
    """Fans each call out to every observer; a failing observer is logged, never fatal."""

    def __init__(self, observers: Sequence[JobObserver] = ()) -> None:
        self.observers = list(observers)

    def on_job(self, event: JobEvent) -> None:
        for observer in self.observers:
            try:
                observer.on_job(event)
            except Exception as exc:
                log.error("observer_failed", observer=type(observer).__name__, error=repr(exc))

    def on_held_back(self, queue: str, why: str, wait_ms: int) -> None:
        for observer in self.observers:
            try:
                observer.on_held_back(queue, why, wait_ms)
            except Exception as exc:
                log.error("observer_failed", observer=type(observer).__name__, error=repr(exc))
