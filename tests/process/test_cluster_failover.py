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
from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from tests.conftest import WorkerProcess, cluster_client
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
