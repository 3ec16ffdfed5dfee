"""Every error alchemy raises on purpose, as one tree.

    AlchemyError
    ├── ConfigError            bad configuration; the process exits 78 (EX_CONFIG)
    ├── IdentityInUseError     another live process runs with this worker identity
    ├── BudgetError            a budget cannot be set as asked (an unknown brand, say)
    ├── NotReplicatedError     a job was pushed, but not copied to as many replicas as the
    │                          producer asked for in time (``Producer.enqueue(replicas=)``):
    │                          push it again with the same id
    └── JobError               raised by handlers; the consumer decides from the type alone
        ├── PermanentError     never retried: straight to the dead-letter list
        │   └── OverBudgetError    one call's worst case alone exceeds a whole budget
        └── RetryableError     retried with backoff, or after ``delay`` seconds when given
            ├── RateLimitedError   the upstream said "retry after N seconds": the whole
            │                      queue pauses for N seconds in every process and the job
            │                      is retried without spending an attempt
            ├── DeferredError      not now, and not a failure: the job comes back after
            │   │                  ``delay`` seconds without spending an attempt (another
            │   │                  runner holds the work, say); the queue goes on
            │   └── BudgetExhaustedError
            │                      the brand's (or the provider's) budget window has no
            │                      room for the call's worst case: the job is held
            │                      (``budget_exhausted``) and looked at again after
            │                      ``delay``, at once when an operator raises the budget
            └── DependencyUnavailableError
                │                  a dependency the handler needs (``dependency``, e.g.
                │                  "postgres") is down: the job goes back to the front of
                │                  its queue without spending an attempt, and every queue
                │                  that needs the dependency holds in every process until
                │                  a probe sees it answer again
                └── ProviderPausedError
                                   the provider refused for its own spend limit: the
                                   queue holds for ``pause_for`` seconds (no probe) or
                                   until an operator resumes it; no attempt spent

Retry-after pauses and dependency holds are bounded per job (``max_deferrals``,
``max_deferred``): past them the job is dead-lettered as ``deferred_too_long``. A deferral
is bounded by whoever defers (a paid-work lease expires, a budget window resets), and a
provider's pause by its operator, so neither is counted.

Any other exception raised by a handler (including a timeout) counts as a failed attempt
and is retried with the queue's backoff until ``max_attempts``.
"""

from __future__ import annotations


class AlchemyError(Exception):
    """Root of every error alchemy raises on purpose."""


class ConfigError(AlchemyError):
    """The configuration is unusable. ``key`` is the dotted path of the offending key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class IdentityInUseError(AlchemyError):
    """Another live process already runs with this worker identity."""


class NotReplicatedError(AlchemyError):
    """A push reached the master but only ``acknowledged`` of the ``wanted`` replicas
    confirmed it within the timeout, so a failover now could lose it. The job may still
    run (the master has it): push it again with the same id, and let the handler's
    idempotency by id absorb a second delivery."""

    def __init__(self, job_id: str, *, wanted: int, acknowledged: int, timeout: float) -> None:
        super().__init__(
            f"job {job_id!r} was pushed, but {acknowledged} of {wanted} replica(s)"
            f" acknowledged it within {timeout:g}s: push it again with the same id"
        )
        self.job_id = job_id
        self.wanted = wanted
        self.acknowledged = acknowledged


class BudgetError(AlchemyError):
    """A budget cannot be read or set as asked (an unknown brand, a negative amount)."""


class JobError(AlchemyError):
    """Base for errors a handler raises to steer what happens to its job."""


class PermanentError(JobError):
    """The job can never succeed (bad data, refused by the upstream): dead-letter it now."""


class RetryableError(JobError):
    """The job may succeed later. ``delay`` (seconds) overrides the queue's backoff."""

    def __init__(self, message: str = "", *, delay: float | None = None) -> None:
        super().__init__(message)
        if delay is not None and delay < 0:
            raise ValueError("delay must be >= 0")
        self.delay = delay


class RateLimitedError(RetryableError):
    """The upstream asked us to slow down for ``retry_after`` seconds (an HTTP 429).

    The queue pauses for that long across every process and the job is retried after the
    pause without spending an attempt.
    """

    def __init__(self, retry_after: float, message: str = "") -> None:
        text = message or f"rate limited, retry after {retry_after:g}s"
        super().__init__(text, delay=retry_after)
        self.retry_after = retry_after


class DeferredError(RetryableError):
    """Come back after ``delay`` seconds; no attempt is spent and the queue goes on.

    For work that someone else is doing right now (a live lease held by another runner).
    ``reason`` names why the job waits (``budget_exhausted``) in the records and events."""

    def __init__(self, delay: float, message: str = "", *, reason: str | None = None) -> None:
        super().__init__(message or f"deferred for {delay:g}s", delay=delay)
        self.delay: float = delay
        self.reason = reason


class BudgetExhaustedError(DeferredError):
    """No room in a budget window for the call's worst case: held, not failed. The message
    names the brand as ``brand <uuid>`` (or the provider), which is how an operator's
    raise of the budget finds the held jobs (:meth:`QueueStore.release_budget_holds`)."""

    def __init__(self, delay: float, message: str) -> None:
        super().__init__(delay, message, reason="budget_exhausted")


class OverBudgetError(PermanentError):
    """The worst case of one call is more than the whole budget: it can never run."""


class DependencyUnavailableError(RetryableError):
    """A dependency the handler needs is down (``dependency``: its name, as the handler
    module lists it in ``REQUIRES``). The engine returns the job to the front of its queue
    without spending an attempt and holds every queue that needs the dependency until the
    dependency's probe succeeds."""

    def __init__(self, dependency: str, message: str = "") -> None:
        super().__init__(message or f"{dependency} is unavailable")
        self.dependency = dependency


class ProviderPausedError(DependencyUnavailableError):
    """The provider refused the call for its own spend limit (Anthropic's usage limit,
    OpenAI's ``insufficient_quota``): an error answer, not billed. The queue holds for
    ``pause_for`` seconds (set by the engine from ``[budgets] provider_pause``) with
    dependency ``provider:<name>``, or until ``alchemy resume``; no probe, no attempt."""

    def __init__(self, provider: str, message: str = "") -> None:
        super().__init__(f"provider:{provider}", message or f"{provider}: spend limit reached")
        self.provider = provider
