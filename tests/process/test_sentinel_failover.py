"""Issue 10, acceptance 4: workers on a Redis watched by Sentinel ride out the death of the
master, losing no acknowledged job, never exiting, and resuming within 5 s of the promotion.

Each test starts its own set (a master, a replica, three sentinels with down-after 1000 ms,
so the replica is promoted about 2-4 s after the master dies), and the run of
:mod:`tests.process.failover`: two workers and a producer pushing with ``WAIT 1``; the
master is killed with SIGKILL mid-run (with a backlog, or while the consumers are blocked
in BRPOPLPUSH), and started again after the promotion: the sentinels make it the new
master's replica, so pushes are replicated again. Or ``SENTINEL FAILOVER`` promotes the
replica while the old master still runs: until the sentinels demote it, clients connected
to it keep writing there, and what they write is lost with its demotion (a push waiting
for a replica is refused there: it has none); then blocked fetches end (``UNBLOCKED``) and
writes get ``READONLY``, which sends the client to the sentinels again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from alchemy.config import parse_config
from alchemy.worker.connections import RedisClients
from tests.conftest import WorkerProcess
from tests.fakes.redis_topologies import MASTER_NAME, LocalSentinel
from tests.process.failover import Failover, run_through_failover

MANY_TWICE = 20  # jobs a failover by hand may run twice: what the workers had in hand


def sentinel_settings(sentinel: LocalSentinel) -> dict[str, object]:
    return {
        "topology": "sentinel",
        "sentinels": sentinel.addresses,
        "sentinel_master": MASTER_NAME,
    }


def fail_over_by_hand(sentinel: LocalSentinel) -> None:
    """``SENTINEL FAILOVER``: the replica is promoted while the old master still runs (and
    takes writes) until the sentinels demote it."""
    with sentinel.sentinels[0].client() as client:
        client.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)


@pytest.mark.parametrize(
    ("busy", "how"),
    [(True, "sigkill"), (False, "sigkill")],
    ids=["backlog", "idle"],
)
async def test_workers_ride_out_the_death_of_the_master(
    redis: Redis,
    own_sentinel: LocalSentinel,
    spawn_worker: Callable[..., WorkerProcess],
    prefix: str,
    busy: bool,
    how: str,
) -> None:
    settings = sentinel_settings(own_sentinel)
    failover = Failover(
        fail=own_sentinel.master.kill,
        wait_promoted=own_sentinel.wait_promoted,
        restore=own_sentinel.master.start,  # the sentinels make it the new master's replica
    )
    async with RedisClients(parse_config({"redis": settings}).redis) as clients:
        run = await run_through_failover(
            label=f"sentinel, {how}, {'backlog' if busy else 'idle'}",
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


async def test_a_failover_by_hand_with_the_old_master_up_runs_few_jobs_twice(
    redis: Redis,
    tmp_path: Path,
    spawn_worker: Callable[..., WorkerProcess],
    prefix: str,
) -> None:
    """``SENTINEL FAILOVER`` with a backlog, on data nodes with the settings operations.md
    recommends (``min-replicas-to-write 1``): the old master refuses writes as soon as its
    replica leaves it, so the workers do not go on taking the backlog there while the new
    master has it too. (Without that setting a run here ran 384 of 655 jobs twice.)"""
    strict = LocalSentinel(
        tmp_path / "strict",
        extra=["--min-replicas-to-write", "1", "--min-replicas-max-lag", "10"],
    )
    strict.start()
    try:
        settings = sentinel_settings(strict)
        async with RedisClients(parse_config({"redis": settings}).redis) as clients:
            run = await run_through_failover(
                label="sentinel, manual, backlog",
                redis=redis,
                client=clients.shared,
                spawn_worker=spawn_worker,
                prefix=prefix,
                queue="failover",
                redis_settings=settings,
                failover=Failover(
                    fail=lambda: fail_over_by_hand(strict),
                    wait_promoted=strict.wait_promoted,
                ),
                busy=True,
            )
    finally:
        strict.stop()
    run.assert_nothing_lost()
    assert len(run.ran_twice) <= MANY_TWICE
