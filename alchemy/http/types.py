"""The JSON shapes the HTTP listener serves (docs/operations.md, "The admin API")."""

from __future__ import annotations

from typing import Any, TypedDict

from alchemy.config import ProvidersInUse


class ErrorBody(TypedDict):
    """Every response that is not a success."""

    error: str


class Health(TypedDict):
    status: str  # "ok"
    worker: str
    pid: int
    uptime_s: float


class Readiness(TypedDict):
    ready: bool
    worker: str
    reasons: list[str]  # empty when ready
    providers: ProvidersInUse  # offline output does not make a process unready


class ThroughputWindow(TypedDict):
    completed: int
    failed: int
    completed_per_s: float


class Throughput(TypedDict):
    last_minute: ThroughputWindow
    last_5_minutes: ThroughputWindow


class ConsumerInfo(TypedDict):
    identity: str
    alive: bool
    processing: int


class QueueInfo(TypedDict):
    queue: str
    wait: int
    processing: int
    delayed: int
    dead: int
    paused: bool
    paused_for_ms: int  # -1: paused until resumed
    held: dict[str, Any] | None  # a dependency is down: dependency, reason, since_ms, by, left_ms
    budget_held: dict[str, int]  # delayed jobs held for budget_exhausted, per "brand:<uuid>"
    consumers: list[ConsumerInfo]
    throughput: Throughput | None  # None when no process writes events


class QueueList(TypedDict):
    queues: list[QueueInfo]


class DeadEntryJson(TypedDict, total=False):
    """A dead-letter entry as stored (docs/protocol.md, "Dead-letter entries")."""

    v: int
    queue: str
    id: str | None
    reason: str
    error: dict[str, str]
    attempts: int
    recoveries: int
    first_attempt_ms: int | None
    dead_at_ms: int
    job: str
    job_b64: str
    truncated: bool  # too_large: job/job_b64 hold the first 65,536 bytes only
    job_bytes: int  # ... of a job this long
    job_sha256: str  # ... whose sha256 this is (hex)


class DeadPage(TypedDict):
    queue: str
    total: int
    offset: int
    limit: int
    entries: list[dict[str, Any]]  # DeadEntryJson; unknown fields are passed on


class UnknownJob(TypedDict):
    error: str
    id: str
    state: str  # "unknown"


class RetryResult(TypedDict):
    queue: str
    retried: int
    skipped_truncated: int  # too_large entries, which keep only the job's head


class PurgeResult(TypedDict):
    queue: str
    purged: int


class PauseResult(TypedDict):
    queue: str
    paused: bool
