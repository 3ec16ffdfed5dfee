"""A queue's slot moved to another master while its consumers wait in BRPOPLPUSH (issue 10:
"MOVED during a blocking fetch"): the blocked fetches are answered MOVED, the client
follows and blocks again on the new master, and the jobs pushed afterwards all run, with
nothing logged as refused."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from alchemy.queue.keys import QueueKeys
from alchemy.queue.producer import Producer
from tests.conftest import WorkerProcess, cluster_client, queue_table, read_records, wait_for
from tests.fakes.redis_topologies import LocalCluster, move_slot
from tests.process.test_cluster_failover import blocked_fetches

QUEUE = "moving"


async def test_consumers_follow_their_queue_to_another_master(
    redis: Redis,
    own_cluster: LocalCluster,
    spawn_worker: Callable[..., WorkerProcess],
    prefix: str,
) -> None:
    settings = {"topology": "cluster", "cluster_nodes": own_cluster.seeds}
    workers = [
        spawn_worker(queue_table(QUEUE, concurrency=2), {"name": f"w{n}"}, redis=settings)
        for n in range(2)
    ]
    source = own_cluster.master_of(QUEUE)
    target = next(m for m in own_cluster.masters() if m is not source)
    record = f"{prefix}:rec"
    client = cluster_client(own_cluster.seeds)
    producer = Producer(client, prefix=prefix)
    try:
        # Both consumers up before the first job: otherwise one process can take every job
        # and see the move before the other has even started.
        await wait_for(lambda: _registered(client, prefix, 2), within=15)
        first = [await producer.enqueue(QUEUE, {"record": record}) for _ in range(10)]
        await wait_for(lambda: _done(redis, record, 10), within=15)
        await wait_for(lambda: asyncio.to_thread(blocked_fetches, source), within=10)
        await asyncio.to_thread(move_slot, own_cluster, QUEUE, target)
        assert own_cluster.master_of(QUEUE) is target
        after = [await producer.enqueue(QUEUE, {"record": record}) for _ in range(50)]
        await wait_for(lambda: _done(redis, record, 60), within=15)
        await wait_for(lambda: asyncio.to_thread(blocked_fetches, target), within=10)
        consumers = await client.zrange(QueueKeys(prefix, QUEUE).consumers, 0, -1)
    finally:
        await client.aclose()
    done = [r["id"] for r in await read_records(redis, f"{record}:done")]
    assert sorted(done) == sorted(first + after)  # each once
    assert len(consumers) == 2
    events = [e for w in workers for e in w.events()]
    assert [e for e in events if e.get("level") == "error"] == []
    assert all(w.proc.poll() is None for w in workers)


async def _done(redis: Redis, record: str, n: int) -> bool:
    return int(await redis.llen(f"{record}:done")) >= n


async def _registered(client: RedisCluster, prefix: str, n: int) -> bool:
    return int(await client.zcard(QueueKeys(prefix, QUEUE).consumers)) >= n
