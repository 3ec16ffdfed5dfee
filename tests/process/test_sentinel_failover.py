"""Issue 10, acceptance 4: workers on a Redis watched by Sentinel ride out the death of the
master, losing no acknowledged job, never exiting, and resuming within 5 s of the promotion.

Each test starts its own set (a master, a replica, three sentinels with down-after 1000 ms,
so the replica is promoted about 2-4 s after the master dies), and the run of
:mod:`tests.process.failover`: two workers and a producer pushing with ``WAIT 1``; the
master is killed with SIGKILL mid-run (with a backlog, or while the consumers are blocked
in BRPOPLPUSH), and started again after the promotion: the sentinels make it the new
master's replica, so pushes are replicated again.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from alchemy.config import parse_config
from alchemy.worker.connections import RedisClients
from tests.conftest import WorkerProcess
from tests.fakes.redis_topologies import MASTER_NAME, LocalSentinel
from tests.process.failover import Failover, run_through_failover


def sentinel_settings(sentinel: LocalSentinel) -> dict[str, object]:
    return {
        "topology": "sentinel",
        "sentinels": sentinel.addresses,
        "sentinel_master": MASTER_NAME,
    }


@pytest.mark.parametrize("busy", [True, False], ids=["backlog", "idle"])
async def test_workers_ride_out_the_death_of_the_master(
    redis: Redis,
    own_sentinel: LocalSentinel,
    spawn_worker: Callable[..., WorkerProcess],
    prefix: str,
    busy: bool,
) -> None:
    settings = sentinel_settings(own_sentinel)
    failover = Failover(
        fail=own_sentinel.master.kill,
        wait_promoted=own_sentinel.wait_promoted,
        restore=own_sentinel.master.start,  # the sentinels make it the new master's replica
    )
    async with RedisClients(parse_config({"redis": settings}).redis) as clients:
        run = await run_through_failover(
            label=f"sentinel, {'backlog' if busy else 'idle'}",
            redis=redis,
            client=clients.shared,
            spawn_worker=spawn_worker,
            prefix=prefix,
            queue="failover",
            redis_settings=settings,
            failover=failover,
            busy=busy,
        )
    run.assert_nothing_lost()
