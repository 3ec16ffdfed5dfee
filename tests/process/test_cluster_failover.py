"""Issue 10, acceptance 3: workers on a real Redis Cluster ride out a failover of the master
that serves their queue, losing no job and never exiting.

Each test starts its own cluster (three masters, one replica of the first; cluster-node-
timeout 2000 ms, so the replica is promoted about 3 s after its master dies instead of
about 20 s with the default 15000 ms) and a queue whose hash tag lives on the replicated
master. Two worker processes run 600 jobs pushed with ``WAIT 1`` while a producer keeps
pushing (again with the same id until a replica confirms). Mid-run the master is

- killed with SIGKILL: the replica is promoted, and the old master is started again after
  the promotion (it rejoins as the new master's replica, so pushes are replicated again);
- or failed over by hand (``CLUSTER FAILOVER`` on the replica) once the backlog is done,
  while consumers wait in BRPOPLPUSH for the producer's next job: the old master stays up
  and becomes a replica, so the blocked fetches end (Redis 7.0 answers them with MOVED, which
  the client follows and blocks again on the new master; ``UNBLOCKED`` is the other answer a
  blocked fetch can get) and every command sent to the old master gets MOVED.

Every acknowledged push must complete; a job may run twice across the failover (a write the
master had not copied yet is missing on the replica), which idempotency by id absorbs.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from alchemy.errors import NotReplicatedError
from alchemy.queue.keys import QueueKeys
from alchemy.queue.producer import Producer
from alchemy.queue.topology import RedisClient
from tests.conftest import WorkerProcess, cluster_client, queue_table, read_records, wait_for
from tests.fakes.redis_topologies import LocalCluster, ServerProcess, tag_on

JOBS = 600
PUSHING_AFTER = 2.0  # seconds the producer goes on after the promotion
RESUME_WITHIN = 5.0  # seconds after the promotion


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path / "cluster")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


async def push_until_replicated(producer: Producer, queue: str, job_id: str, data: Any) -> None:
    """Push until one replica confirmed it: each try with the same id."""
    while True:
        try:
            await producer.enqueue(queue, data, id=job_id, replicas=1, replication_timeout=0.5)
            return
        except (NotReplicatedError, redis_errors.RedisError):
            await asyncio.sleep(0.2)


async def keep_pushing(
    producer: Producer, queue: str, record: str, acked: list[str], enough: asyncio.Event
) -> None:
    """A job every 50 ms (each pushed until a replica has it) until ``enough`` is set."""
    n = 0
    while not enough.is_set():
        job_id = f"late-{n}"
        await push_until_replicated(producer, queue, job_id, {"record": record, "sleep": 0.1})
        acked.append(job_id)
        n += 1
        await asyncio.sleep(0.05)


async def done_ids(redis: Redis, record: str) -> Counter[str]:
    return Counter(r["id"] for r in await read_records(redis, f"{record}:done"))


def blocked_fetches(node: ServerProcess) -> int:
    """How many clients of ``node`` are blocked in BRPOPLPUSH now."""
    with node.client() as client:
        clients = client.client_list()
    return sum(1 for c in clients if c["cmd"] == "brpoplpush" and "b" in c["flags"])


def fail_over_by_hand(cluster: LocalCluster) -> None:
    """``CLUSTER FAILOVER`` on the replica: it takes over, its master becomes its replica."""
    masters = {m.port for m in cluster.masters()}
    replica = next(n for n in cluster.nodes if n.running and n.port not in masters)
    with replica.client() as client:
        client.execute_command("CLUSTER", "FAILOVER")


@pytest.mark.parametrize("how", ["sigkill", "manual"])
async def test_workers_ride_out_a_failover_of_their_queues_master(
    redis: Redis,
    own_cluster: LocalCluster,
    spawn_worker: Callable[..., WorkerProcess],
    prefix: str,
    how: str,
) -> None:
    master = own_cluster.replicated_master()
    queue = tag_on(own_cluster, master, "failover")
    keys = QueueKeys(prefix, queue)
    record = f"{prefix}:rec"
    client: RedisClient = cluster_client(own_cluster.seeds)
    producer = Producer(client, prefix=prefix)
    ids = [f"job-{n}" for n in range(JOBS)]
    for job_id in ids:
        await push_until_replicated(producer, queue, job_id, {"record": record, "sleep": 0.1})
    settings = {"topology": "cluster", "cluster_nodes": own_cluster.seeds, "socket_timeout": 2.0}
    workers = [
        spawn_worker(
            queue_table(queue, concurrency=4),
            {"name": f"w{n}", "reconcile_interval": 3.5},
            redis=settings,
        )
        for n in range(2)
    ]
    acked: list[str] = []
    enough = asyncio.Event()
    late = asyncio.create_task(keep_pushing(producer, queue, record, acked, enough))
    # Busy (a backlog) for the kill; idle, blocked in BRPOPLPUSH, for the manual failover.
    busy = how == "sigkill"
    await wait_for(
        lambda: _done_at_least(redis, record, 150 if busy else JOBS), within=30, interval=0.05
    )

    if not busy:
        await wait_for(lambda: asyncio.to_thread(blocked_fetches, master), within=10)
    failed_at = time.time()
    if how == "sigkill":
        master.kill()
    else:
        await asyncio.to_thread(fail_over_by_hand, own_cluster)
    promoted_in = await asyncio.to_thread(own_cluster.wait_promoted, master)
    promoted_at = failed_at + promoted_in
    if how == "sigkill":
        master.start()  # it rejoins as the new master's replica
    await asyncio.sleep(PUSHING_AFTER)
    enough.set()
    await late
    everything = ids + acked
    await wait_for(lambda: _all_done(redis, record, everything), within=60, interval=0.2)
    members = [m.decode() for m in await client.zrange(keys.consumers, 0, -1)]
    for member in members:
        await wait_for(lambda m=member: _empty(client, keys.processing(m)), within=15)

    starts = await read_records(redis, record)
    resumed_at = min(s["t"] for s in starts if s["t"] > failed_at + 0.05)
    done = await done_ids(redis, record)
    twice = {job_id: n for job_id, n in done.items() if n > 1}
    events = [e for w in workers for e in w.events()]
    failing = Counter(e.get("step") for e in events if e.get("event") == "redis_step_failing")
    print(
        f"{how}: promoted {promoted_in:.2f}s after the failure; work resumed"
        f" {resumed_at - promoted_at:+.2f}s after the promotion; {len(everything)} acknowledged"
        f" pushes, {len(set(everything) - set(done))} lost, {len(twice)} ran twice;"
        f" failing steps {dict(failing)}"
    )
    assert all(w.proc.poll() is None for w in workers), "a worker exited"
    assert set(done) == set(everything), "an acknowledged job was lost"
    assert resumed_at - promoted_at <= RESUME_WITHIN
    assert not [e for e in events if e.get("event") == "background_task_ended"]
    assert not [e for e in events if e.get("level") == "error"], "a failover step was refused"
    assert await client.llen(keys.wait) == 0
    assert await client.lrange(keys.dead, 0, -1) == []
    await client.aclose()


async def _done_at_least(redis: Redis, record: str, n: int) -> bool:
    return int(await redis.llen(f"{record}:done")) >= n


async def _all_done(redis: Redis, record: str, ids: list[str]) -> bool:
    return set(await done_ids(redis, record)) >= set(ids)


async def _empty(client: RedisClient, key: str) -> bool:
    return int(await client.llen(key)) == 0
