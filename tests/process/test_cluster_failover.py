"""Issue 10, acceptance 3: workers on a real Redis Cluster ride out a failover of the master
that serves their queue, losing no job and never exiting.

Each test starts its own cluster (three masters, one replica of the first; cluster-node-
timeout 2000 ms, so the replica is promoted about 3-5 s after its master dies instead of
about 20 s with the default 15000 ms) and uses a queue whose hash tag lives on the
replicated master (the run itself: :mod:`tests.process.failover`). The master is

- killed with SIGKILL while there is a backlog: the replica is promoted, and the old master
  is started again after the promotion (it rejoins as the new master's replica, so pushes
  are replicated again);
- or failed over by hand (``CLUSTER FAILOVER`` on the replica) once the backlog is done,
  while consumers wait in BRPOPLPUSH for the producer's next job: the old master stays up
  and becomes a replica, so the blocked fetches end (Redis 7.0 answers them with MOVED,
  which the client follows to block again on the new master; ``UNBLOCKED`` is the other
  answer a blocked fetch can get) and every command sent to the old master gets MOVED.

Every acknowledged push must complete; a job may run twice across the failover (a write the
master had not copied yet is missing on the replica), which idempotency by id absorbs.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from alchemy.queue.producer import Producer
from tests.conftest import (
    WorkerProcess,
    cluster_client,
    queue_table,
    read_records,
    wait_for,
    wait_started,
)
from tests.fakes.redis_topologies import LocalCluster, ServerProcess, tag_on
from tests.process.failover import Failover, run_through_failover


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

    async def fetches_blocked() -> bool:
        return await asyncio.to_thread(blocked_fetches, master) > 0

    if how == "sigkill":
        failover = Failover(
            fail=master.kill,
            wait_promoted=lambda: own_cluster.wait_promoted(master),
            restore=master.start,  # it rejoins as the new master's replica
        )
    else:
        failover = Failover(
            fail=lambda: fail_over_by_hand(own_cluster),
            wait_promoted=lambda: own_cluster.wait_promoted(master),
            ready_to_fail=fetches_blocked,
        )
    client = cluster_client(own_cluster.seeds)
    try:
        run = await run_through_failover(
            label=f"cluster, {how}",
            redis=redis,
            client=client,
            spawn_worker=spawn_worker,
            prefix=prefix,
            queue=tag_on(own_cluster, master, "failover"),
            redis_settings={"topology": "cluster", "cluster_nodes": own_cluster.seeds},
            failover=failover,
            busy=how == "sigkill",
        )
    finally:
        await client.aclose()
    run.assert_nothing_lost()


def name_claimed_on(cluster: LocalCluster, master: ServerProcess, stem: str) -> str:
    """A worker name whose identity's claim key (hash tag ``HOST:NAME``) lives on ``master``."""
    host = socket.gethostname()
    return tag_on(cluster, master, stem, tag=lambda name: f"{host}:{name}")


async def test_a_process_whose_claim_node_fails_over_is_not_taken_for_dead(
    redis: Redis,
    own_cluster: LocalCluster,
    spawn_worker: Callable[..., WorkerProcess],
    prefix: str,
) -> None:
    """The identity's claim and the queue live on different masters. While the claim's
    master fails over (longer than heartbeat_ttl), the process keeps its queue heartbeat, so
    a process that still reaches the queue's master does not recover its running jobs."""
    claim_master = own_cluster.replicated_master()
    queue_master = next(m for m in own_cluster.masters() if m is not claim_master)
    queue = tag_on(own_cluster, queue_master, "steady")
    settings = {"topology": "cluster", "cluster_nodes": own_cluster.seeds}
    victim = spawn_worker(
        queue_table(queue, concurrency=6),
        {"name": name_claimed_on(own_cluster, claim_master, "victim")},
        redis=settings,
    )
    await wait_started(victim)
    record = f"{prefix}:rec"
    client = cluster_client(own_cluster.seeds)
    try:
        producer = Producer(client, prefix=prefix)
        for n in range(6):
            await producer.enqueue(queue, {"record": record, "sleep": 8}, id=f"long-{n}")
        await wait_for(lambda: _count(redis, record, 6), within=10)
        watcher = spawn_worker(
            queue_table(queue),
            {"name": name_claimed_on(own_cluster, queue_master, "watcher")},
            redis=settings,
        )
        await wait_started(watcher)
        claim_master.kill()
        promoted_in = await asyncio.to_thread(own_cluster.wait_promoted, claim_master)
        await wait_for(lambda: _count(redis, f"{record}:done", 6), within=20)
    finally:
        await client.aclose()
    print(f"the claim's master was replaced in {promoted_in:.2f}s (heartbeat_ttl 2s)")
    starts = Counter(r["id"] for r in await read_records(redis, record))
    assert starts == {f"long-{n}": 1 for n in range(6)}, "a job ran twice"
    assert not [e for e in watcher.events() if e.get("event") == "recovered_dead_worker"]
    assert victim.proc.poll() is None


async def _count(redis: Redis, key: str, n: int) -> bool:
    return int(await redis.llen(key)) >= n
