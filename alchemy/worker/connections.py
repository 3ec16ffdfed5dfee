"""Redis clients for a worker process, and what counts as "Redis is away for a moment"."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import structlog
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from alchemy.config import RedisConfig
from alchemy.errors import AlchemyError
from alchemy.worker.health import process_health

T = TypeVar("T")
log = structlog.get_logger("alchemy.redis")

# Replies that mean "wait": a snapshot failed (MISCONF), a script or module is busy
# (BUSY), the data set is loading, a replica or a cluster is failing over, a blocking call
# was unblocked by a failover. redis-py turns some of them into classes of their own (and
# strips the code from their message); the others stay ResponseErrors with the code first.
_TRANSIENT_REPLIES: Final = ("UNBLOCKED", "MISCONF", "BUSY", "NOREPLICAS", "MASTERDOWN")
_TRANSIENT_CLASSES: Final = (
    redis_errors.ConnectionError,  # also BusyLoadingError (LOADING), MaxConnectionsError
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,  # also MasterDownError
    redis_errors.OutOfMemoryError,  # noeviction: writes fail until memory is freed
    OSError,
)


def shared_client(config: RedisConfig) -> Redis:
    """The pool for every non-blocking step. redis-py's own retries are off: a re-sent
    script after a lost reply is handled by our idempotent steps and our own loop."""
    return Redis.from_url(
        config.url.reveal(),
        socket_timeout=config.socket_timeout,
        socket_connect_timeout=config.socket_timeout,
        max_connections=config.max_connections,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
    )


def blocking_client(config: RedisConfig) -> Redis:
    """One connection for one consumer's BRPOPLPUSH; its socket timeout sits above the
    server-side block timeout, so it bounds a stalled call without cutting a normal one."""
    return Redis.from_url(
        config.url.reveal(),
        socket_timeout=config.block_timeout + config.socket_timeout,
        socket_connect_timeout=config.socket_timeout,
        single_connection_client=True,
        retry=Retry(NoBackoff(), 0),
    )


def is_transient(exc: BaseException) -> bool:
    """True for errors that mean "Redis is away, busy or failing over": back off, retry.
    False for everything else: wrong credentials, a missing permission (NOPERM), a bug."""
    if isinstance(exc, redis_errors.AuthenticationError | redis_errors.AuthorizationError):
        return False  # wrong credentials do not heal by waiting
    if isinstance(exc, _TRANSIENT_CLASSES):
        return True
    if isinstance(exc, redis_errors.ResponseError):
        return str(exc).startswith(_TRANSIENT_REPLIES)
    return False


def describe(exc: BaseException) -> str:
    """``Type: message`` for logs; a missing permission says what to do about it."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, redis_errors.NoPermissionError):
        text += " (the Redis user in redis.url lacks a permission this step needs: check its ACL)"
    return text


class Backoff:
    """Capped exponential backoff with jitter for reconnecting."""

    def __init__(self, initial: float = 0.05, maximum: float = 5.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        base: float = min(self.maximum, self.initial * 2.0 ** min(self.failures - 1, 16))
        return base * (0.5 + random.random() / 2)

    def reset(self) -> None:
        self.failures = 0


class Episode:
    """A run of failures of one step: logged when it starts (warning when the error is
    transient, error otherwise) and when it ends, never once per try, and listed in
    :data:`process_health` meanwhile."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.failures = 0
        self.started = 0.0

    def failed(self, exc: BaseException, **fields: object) -> None:
        self.failures += 1
        if self.failures > 1:
            return
        self.started = time.monotonic()
        text = describe(exc)
        process_health.fail(self.name, text)
        if is_transient(exc):
            log.warning("redis_step_failing", error=text, **fields)
        else:
            log.error("redis_step_refused", error=text, **fields)

    def succeeded(self) -> None:
        if not self.failures:
            return
        process_health.clear(self.name)
        log.info(
            "redis_step_recovered",
            step=self.name,
            failures=self.failures,
            after_s=round(time.monotonic() - self.started, 3),
        )
        self.failures = 0


async def until_done(step: Callable[[], Awaitable[T]], *, what: str, queue: str | None = None) -> T:
    """Run an idempotent Redis step until it succeeds, backing off (capped) while Redis is
    away or refuses.

    Used for every step that must not be dropped (ack, retry, dead-letter, requeue). Any
    error is retried: a transient one is logged as a warning, anything else (NOPERM, a
    script error) as an error, each once per episode; the step's recovery is logged too.
    While it fails, :data:`~alchemy.worker.health.process_health` lists it (``/readyz``).
    Only wrong credentials and alchemy's own errors (decisions such as "this identity is in
    use") are raised: waiting does not change them (the command line turns them into exit
    status 78).
    """
    backoff = Backoff()
    episode = Episode(what if queue is None else f"{what}:{queue}")
    while True:
        try:
            result = await step()
        except (
            redis_errors.AuthenticationError,
            redis_errors.AuthorizationError,
            AlchemyError,
        ):
            raise
        except Exception as exc:
            delay = backoff.next_delay()
            episode.failed(exc, retry_in_s=delay, step=what, queue=queue)
            await asyncio.sleep(delay)
            continue
        episode.succeeded()
        return result
