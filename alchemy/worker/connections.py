"""Redis clients for a worker process, and what counts as "Redis is away for a moment".

:class:`RedisClients` builds every client of a process for the configured topology
(``[redis] topology``): the shared client of every non-blocking step, and one blocking
client per consumer, so that a BRPOPLPUSH never holds a connection the other steps need.

- single: ``Redis`` from ``redis.url``.
- cluster: ``RedisCluster`` from the seeds in ``redis.cluster_nodes``. A command goes to the
  node of its key's slot (every key of a queue shares the queue's ``{hash tag}``); its pool
  holds up to ``max_connections`` connections per node and fails fast
  (``MaxConnectionsError``) rather than wait. A blocking client is a ``RedisCluster`` of its
  own with two connections per node, so it follows MOVED to the queue's node and re-blocks.
- sentinel: a master client of ``redis.sentinels`` for ``redis.sentinel_master`` (a blocking
  client: a pool of one connection); each new connection asks the sentinels where the
  master is, and a connection that finds the old master demoted (``READONLY``) is dropped.

redis-py's own retries are off everywhere: a step is re-sent by our loops (``until_done``,
the fetcher's backoff), every re-sent step is an idempotent Lua step, and a Cluster client
reads the slot table again on the next command after a connection error.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import redis
import structlog
from redis import exceptions as redis_errors
from redis.asyncio import Redis, Sentinel
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo

from alchemy.config import RedisConfig, mask_url, node_address
from alchemy.errors import AlchemyError
from alchemy.queue.topology import RedisClient
from alchemy.worker.health import process_health

T = TypeVar("T")
log = structlog.get_logger("alchemy.redis")

BLOCKING_CONNECTIONS_PER_NODE: Final = 2  # a Cluster blocking client: one call at a time

# Replies that mean "wait": a snapshot failed (MISCONF), a script or module is busy
# (BUSY), the data set is loading, a replica or a cluster is failing over, a blocking call
# was unblocked by a failover. redis-py turns some of them into classes of their own (and
# strips the code from their message); the others stay ResponseErrors with the code first.
_TRANSIENT_REPLIES: Final = ("UNBLOCKED", "MISCONF", "BUSY", "NOREPLICAS", "MASTERDOWN")
_TRANSIENT_CLASSES: Final = (
    redis_errors.ConnectionError,  # also BusyLoadingError (LOADING), MaxConnectionsError,
    # MasterNotFoundError (no sentinel names a master yet)
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,  # also MasterDownError
    redis_errors.OutOfMemoryError,  # noeviction: writes fail until memory is freed
    redis_errors.SlotNotCoveredError,  # a Cluster's slot table read mid-failover
    # A promoted replica or a restarted server without our scripts, twice in a row (a
    # Cluster client loads a script on the masters it knows, then follows MOVED to a new
    # one): the next try loads it where it runs.
    redis_errors.NoScriptError,
    OSError,
)
# What a Cluster client raises (a RedisClusterException, not a RedisError) while no seed
# answers, the slots are not all served, the nodes disagree, or redirections went round.
_TRANSIENT_CLUSTER_STATES: Final = (
    "Redis Cluster cannot be connected",
    "All slots are not covered",
    "startup_nodes could not agree",
    "TTL exhausted",
)


def _no_retries() -> Retry:
    return Retry(NoBackoff(), 0)


class RedisClients:
    """Every Redis client of one process, for the configured topology; closed together by
    :meth:`aclose` (the shared one, each blocking one, the sentinels' own)."""

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self._opened: list[RedisClient] = []
        self._sentinel: Sentinel | None = None
        self._shared: RedisClient | None = None

    @property
    def shared(self) -> RedisClient:
        """The pool for every non-blocking step (built on first use, then the same)."""
        if self._shared is None:
            self._shared = self._build(blocking=False)
        return self._shared

    def blocking(self) -> RedisClient:
        """A new client for one consumer's BRPOPLPUSH. Its socket timeout sits above the
        server-side block timeout, so it bounds a stalled call without cutting a normal
        one."""
        return self._build(blocking=True)

    def _build(self, *, blocking: bool) -> RedisClient:
        cfg = self.config
        options: dict[str, Any] = {
            "socket_timeout": cfg.block_timeout + cfg.socket_timeout
            if blocking
            else cfg.socket_timeout,
            "socket_connect_timeout": cfg.socket_timeout,
            "retry": _no_retries(),
            # What the client tells Redis (CLIENT SETINFO), as redis-py's default says it,
            # without reading the version from package metadata (alchemy/lean.py).
            "driver_info": DriverInfo(lib_version=redis.__version__),
        }
        if not blocking:
            options["health_check_interval"] = 30
        client: RedisClient
        if cfg.topology == "cluster":
            client = self._cluster(options, blocking=blocking)
        elif cfg.topology == "sentinel":
            client = self._sentinel_master(options, blocking=blocking)
        elif blocking:
            # One connection, as a pool of one: its pipelines use it too.
            client = Redis.from_url(cfg.url.reveal(), max_connections=1, **options)
        else:
            client = Redis.from_url(
                cfg.url.reveal(), max_connections=cfg.max_connections, **options
            )
        self._opened.append(client)
        return client

    def _data_node_options(self) -> dict[str, Any]:
        """User, password, database and TLS of the data nodes, from ``redis.url``."""
        parsed = parse_url(self.config.url.reveal())
        options = {
            key: value
            for key, value in parsed.items()
            if key in ("username", "password", "db") or key.startswith("ssl_")
        }
        if self.config.url.reveal().startswith("rediss://"):
            options["ssl"] = True
        return options

    def _cluster(self, options: dict[str, Any], *, blocking: bool) -> RedisCluster:
        cfg = self.config
        seeds = [ClusterNode(*node_address(address)) for address in cfg.cluster_nodes]
        node_options = self._data_node_options()
        node_options.pop("db", None)  # 0: checked with the configuration
        per_node = BLOCKING_CONNECTIONS_PER_NODE if blocking else cfg.max_connections
        return RedisCluster(
            startup_nodes=seeds, max_connections=per_node, **node_options, **options
        )

    def _sentinel_master(self, options: dict[str, Any], *, blocking: bool) -> Redis:
        cfg = self.config
        if self._sentinel is None:
            sentinel_options: dict[str, Any] = {
                "socket_timeout": cfg.socket_timeout,
                "socket_connect_timeout": cfg.socket_timeout,
                "retry": _no_retries(),
            }
            if cfg.sentinel_password:
                sentinel_options["password"] = cfg.sentinel_password.reveal()
            if cfg.url.reveal().startswith("rediss://"):
                sentinel_options["ssl"] = True
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
                [node_address(address) for address in cfg.sentinels],
                sentinel_kwargs=sentinel_options,
            )
        # A blocking client is used by one fetcher at a time: a pool of one connection.
        size = 1 if blocking else cfg.max_connections
        master: Redis = self._sentinel.master_for(
            cfg.sentinel_master, max_connections=size, **self._data_node_options(), **options
        )
        return master

    async def aclose(self) -> None:
        opened, self._opened, self._shared = self._opened, [], None
        for client in opened:
            await client.aclose()
        if self._sentinel is not None:
            for sentinel in self._sentinel.sentinels:
                await sentinel.aclose()
            self._sentinel = None

    async def __aenter__(self) -> RedisClients:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def describe_target(config: RedisConfig) -> str:
    """Where Redis is, for messages (no secret in it)."""
    if config.topology == "cluster":
        return "the Redis Cluster of " + ", ".join(config.cluster_nodes)
    if config.topology == "sentinel":
        return f"the master {config.sentinel_master!r} of the sentinels " + ", ".join(
            config.sentinels
        )
    return mask_url(config.url.reveal())


def is_transient(exc: BaseException) -> bool:
    """True for errors that mean "Redis is away, busy or failing over": back off, retry.
    False for everything else: wrong credentials, a missing permission (NOPERM), a bug."""
    if isinstance(exc, redis_errors.AuthenticationError | redis_errors.AuthorizationError):
        return False  # wrong credentials do not heal by waiting
    if isinstance(exc, _TRANSIENT_CLASSES):
        return True
    if isinstance(exc, redis_errors.ResponseError):
        return str(exc).startswith(_TRANSIENT_REPLIES)
    if isinstance(exc, redis_errors.RedisClusterException):
        return str(exc).startswith(_TRANSIENT_CLUSTER_STATES)
    return _torn_down_by_redis_py(exc)


def _torn_down_by_redis_py(exc: BaseException) -> bool:
    """A connection closed by redis-py itself while a command was on it: a Cluster client
    that gets CLUSTERDOWN (mid-failover) closes every connection of every node, those in
    use by other tasks too, whose commands then fail inside redis-py with an AttributeError
    (``'NoneType' object has no attribute 'writelines'``): a lost connection like any
    other. Anything else raised from our own code stays a bug."""
    if not isinstance(exc, AttributeError) or "'NoneType' object" not in str(exc):
        return False
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and f"{os.sep}redis{os.sep}" in frame.tb_frame.f_code.co_filename


def describe(exc: BaseException) -> str:
    """``Type: message`` for logs; a missing permission says what to do about it."""
    message = str(exc)
    if isinstance(exc, MasterNotFoundError):
        # redis-py appends the repr of every sentinel client (kilobytes): keep the sentence.
        message = message.split(" : ", 1)[0]
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
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
