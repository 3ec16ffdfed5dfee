"""The producer on a Redis Cluster.

Producer.enqueue(replicas=N): WAIT goes to the queue's node on the push's own connection, a
push the replicas did not confirm raises NotReplicatedError (it was pushed all the same),
and a push that meets MOVED is sent again to the new node, once. (The single-server and
Sentinel cases run through docs/protocol.md's examples.) Producer.enqueue_once: its marker
and the push are one script on the queue's node."""

from __future__ import annotations

import asyncio
import json

import pytest

from alchemy.errors import NotReplicatedError
from alchemy.queue.keys import QueueKeys
from alchemy.queue.producer import Producer
from tests.conftest import cluster_client
from tests.fakes.redis_topologies import LocalCluster, move_slot, tag_on


async def test_a_push_counts_once_the_queues_replica_has_it(
    redis_cluster: LocalCluster, prefix: str
) -> None:
    replicated = redis_cluster.replicated_master()
    alone = next(m for m in redis_cluster.masters() if m is not replicated)
    with_replica, without = (
        tag_on(redis_cluster, replicated, "r"),
        tag_on(redis_cluster, alone, "a"),
    )
    client = cluster_client(redis_cluster.seeds)
    try:
        producer = Producer(client, prefix=prefix)
        # (A generous timeout: the replica may be busy with other tests' writes.)
        pushed_id = await producer.enqueue(
            with_replica, {"n": 1}, id="j1", replicas=1, replication_timeout=5.0
        )
        assert pushed_id == "j1"
        with pytest.raises(NotReplicatedError) as caught:
            await producer.enqueue(without, {"n": 2}, id="j2", replicas=1, replication_timeout=0.1)
        assert (caught.value.job_id, caught.value.wanted, caught.value.acknowledged) == ("j2", 1, 0)
        [pushed] = await client.lrange(QueueKeys(prefix, without).wait, 0, -1)
        assert json.loads(pushed)["id"] == "j2"  # not replicated, but pushed
        for queue in (with_replica, without):
            await client.delete(QueueKeys(prefix, queue).wait)
    finally:
        await client.aclose()


async def test_a_push_that_meets_moved_goes_to_the_new_master_once(
    own_cluster: LocalCluster, prefix: str
) -> None:
    replicated = own_cluster.replicated_master()
    queue = tag_on(own_cluster, next(m for m in own_cluster.masters() if m is not replicated), "m")
    client = cluster_client(own_cluster.seeds)
    try:
        producer = Producer(client, prefix=prefix)
        with pytest.raises(NotReplicatedError):  # its master has no replica
            await producer.enqueue(
                queue, {"n": 0}, id="before", replicas=1, replication_timeout=0.05
            )
        # The client still thinks the slot is where it was.
        await asyncio.to_thread(move_slot, own_cluster, queue, replicated)
        await producer.enqueue(queue, {"n": 1}, id="after", replicas=1, replication_timeout=5.0)
        items = await client.lrange(QueueKeys(prefix, queue).wait, 0, -1)
    finally:
        await client.aclose()
    assert [json.loads(item)["id"] for item in items] == ["after", "before"]


async def test_enqueue_once_pushes_a_job_once_on_a_cluster(
    redis_cluster: LocalCluster, prefix: str
) -> None:
    client = cluster_client(redis_cluster.seeds)
    keys = [QueueKeys(prefix, queue) for queue in ("follow-up", "other")]
    try:
        producer = Producer(client, prefix=prefix)
        pushes = [await producer.enqueue_once("follow-up", {"n": 1}, "f-1") for _ in range(3)]
        assert pushes == [True, False, False]
        assert await producer.enqueue_once("other", {"n": 1}, "f-1")  # another queue's marker
        for k in keys:
            [item] = await client.lrange(k.wait, 0, -1)
            assert json.loads(item)["id"] == "f-1"
            assert await client.pttl(k.enqueued("f-1")) > 0
    finally:
        for k in keys:
            await client.delete(k.wait)
            await client.delete(k.enqueued("f-1"))
        await client.aclose()
