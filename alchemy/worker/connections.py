"""Redis clients for a worker process, and what counts as "Redis is away for a moment"."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from alchemy.config import RedisConfig

T = TypeVar("T")
log = structlog.get_logger("alchemy.redis")

_TRANSIENT_REPLIES = ("UNBLOCKED", "LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")


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
    """True for errors that mean "Redis is unreachable or failing over": back off, retry."""
    if isinstance(exc, redis_errors.AuthenticationError | redis_errors.AuthorizationError):
        return False  # wrong credentials do not heal by waiting
    if isinstance(exc, redis_errors.ConnectionError | redis_errors.TimeoutError | OSError):
        return True
    if isinstance(exc, redis_errors.BusyLoadingError | redis_errors.ReadOnlyError):
        return True
    if isinstance(exc, redis_errors.ResponseError):
        return str(exc).startswith(_TRANSIENT_REPLIES)
    return False


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


async def until_done(step: Callable[[], Awaitable[T]], *, what: str) -> T:
    """Run an idempotent Redis step until it succeeds, backing off while Redis is away.

    Used for every step that must not be dropped (ack, retry, dead-letter, requeue)."""
    backoff = Backoff()
    while True:
        try:
            return await step()
        except Exception as exc:
            if not is_transient(exc):
                raise
            delay = backoff.next_delay()
            log.warning(
                "redis_unavailable",
                step=what,
                error=f"{type(exc).__name__}: {exc}",
                retry_in_s=round(delay, 3),
            )
            await asyncio.sleep(delay)
