"""What the protocol's code must know about where Redis runs: a single server or a Sentinel
master (a :class:`~redis.asyncio.Redis`), or a Cluster (a
:class:`~redis.asyncio.cluster.RedisCluster`).

Every key of a queue carries the queue's ``{hash tag}``, so a queue lives in one slot and
each Lua step, transaction and pipeline of one queue goes to one node. Keyless commands
that must run on that node (``TIME`` for a queue's clock, ``WAIT`` after a push) are sent
there with :func:`same_node`; a Cluster client would otherwise pick a node at random (or,
for ``WAIT``, every node). The clients themselves are built by
:mod:`alchemy.worker.connections`.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

RedisClient: TypeAlias = Redis | RedisCluster
"""A client of a single server, of a Sentinel master, or of a Cluster."""


async def same_node(redis: RedisClient, key: str) -> dict[str, Any]:
    """Keyword arguments that send a keyless command (in a pipeline too) to the node that
    serves ``key``: nothing for a single server, ``target_nodes`` for a Cluster."""
    if not isinstance(redis, RedisCluster):
        return {}
    await redis.initialize()  # the slot table, read once (nothing when it is known)
    return {"target_nodes": redis.get_node_from_key(key)}
