"""The clients of a process for each topology, and which errors mean "wait"."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from alchemy.config import parse_config
from alchemy.queue.keys import QueueKeys
from alchemy.queue.store import QueueStore
from alchemy.worker.connections import RedisClients, describe_target, is_transient
from tests.fakes.redis_topologies import MASTER_NAME, LocalCluster, LocalSentinel


@pytest.mark.parametrize(
    "exc",
    [
        redis_errors.MaxConnectionsError(),
        redis_errors.ConnectionError("Connection refused"),
        redis_errors.ResponseError("UNBLOCKED force unblock from blocking operation"),
        redis_errors.ReadOnlyError("You can't write against a read only replica."),
        redis_errors.ClusterDownError("The cluster is down"),
        redis_errors.TryAgainError("Multiple keys request during rehashing of slot"),
        redis_errors.NoScriptError("No matching script. Please use EVAL."),
        redis_errors.SlotNotCoveredError('Slot "42" is not covered by the cluster.'),
        redis_errors.RedisClusterException("Redis Cluster cannot be connected. Please ..."),
        redis_errors.RedisClusterException("All slots are not covered after query all ..."),
        redis_errors.RedisClusterException("TTL exhausted."),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_failover_errors_mean_wait(exc: Exception) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        redis_errors.AuthenticationError("invalid password"),
        redis_errors.NoPermissionError("NOPERM this user has no permissions"),
        redis_errors.ResponseError("CROSSSLOT Keys in request don't hash to the same slot"),
        redis_errors.RedisClusterException("Argument 'db' must be 0 or None in cluster mode"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_mistakes_do_not_mean_wait(exc: Exception) -> None:
    assert not is_transient(exc)


def closed_under_us() -> AttributeError:
    """What a command gets when redis-py closed its connection meanwhile: the error raised
    inside redis-py's connection module."""
    import redis.asyncio.connection as module

    try:
        exec(compile("None.writelines([])", module.__file__, "exec"))
    except AttributeError as exc:
        return exc
    raise AssertionError("no error")


def test_a_connection_closed_by_redis_py_under_a_command_means_wait() -> None:
    assert is_transient(closed_under_us())
    with pytest.raises(AttributeError) as ours:
        None.writelines([])  # type: ignore[attr-defined]
    assert not is_transient(ours.value)  # the same error from our own code is a bug


def redis_config(**redis: Any) -> Any:
    return parse_config({"redis": redis}).redis


async def test_single_clients_are_a_pool_and_one_connection_per_blocking_client() -> None:
    async with RedisClients(redis_config(max_connections=7)) as clients:
        shared, blocking = clients.shared, clients.blocking()
        assert isinstance(shared, Redis)
        assert isinstance(blocking, Redis)
        assert shared.connection_pool.max_connections == 7
        assert blocking.connection_pool.max_connections == 1
        assert clients.shared is shared
        assert await shared.ping()
        assert await blocking.ping()


async def test_cluster_blocking_fetches_never_take_shared_connections(
    redis_cluster: LocalCluster, prefix: str
) -> None:
    """Six consumers blocked in BRPOPLPUSH on the queue's node, and the shared pool (4 per
    node, which raises instead of waiting) still serves every step."""
    config = redis_config(
        topology="cluster", cluster_nodes=redis_cluster.seeds[:1], max_connections=4
    )
    async with RedisClients(config) as clients:
        shared = clients.shared
        assert isinstance(shared, RedisCluster)
        store = QueueStore(shared, prefix=prefix, queue="q", identity="me")
        blocked = [
            asyncio.create_task(store.block_fetch(clients.blocking(), 1.0)) for _ in range(6)
        ]
        await asyncio.sleep(0.3)  # all six wait on the queue's node now
        for _ in range(5):  # as many steps at once as the pool holds
            claims = await asyncio.gather(*(store.claim(1) for _ in range(4)))
            assert {c.kind.name for c in claims} == {"EMPTY"}
        await shared.lpush(QueueKeys(prefix, "q").wait, b'{"id":"one"}')
        taken = [item for item in await asyncio.gather(*blocked) if item is not None]
        assert taken == [b'{"id":"one"}']  # one consumer got it, the others timed out
        assert await shared.delete(store.processing) == 1


async def test_sentinel_clients_ask_the_sentinels_for_the_master(
    redis_sentinel: LocalSentinel,
) -> None:
    config = redis_config(
        topology="sentinel", sentinels=redis_sentinel.addresses, sentinel_master=MASTER_NAME
    )
    async with RedisClients(config) as clients:
        shared, blocking = clients.shared, clients.blocking()
        assert isinstance(shared, Redis)
        assert isinstance(shared.connection_pool, SentinelConnectionPool)
        info = await shared.info("server")
        assert int(info["tcp_port"]) == redis_sentinel.master_port()
        assert await blocking.ping()


def test_targets_are_described_without_secrets() -> None:
    single = redis_config(url="redis://:s3cret@db.example:6380/1")
    assert describe_target(single) == "redis://:***@db.example:6380/1"
    cluster = redis_config(topology="cluster", cluster_nodes=["a:7001", "b:7001"])
    assert describe_target(cluster) == "the Redis Cluster of a:7001, b:7001"
    sentinel = redis_config(
        topology="sentinel", sentinels=["s:26379"], sentinel_master="m", sentinel_password="pw"
    )
    assert describe_target(sentinel) == "the master 'm' of the sentinels s:26379"
