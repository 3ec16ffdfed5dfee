"""The recovery sweep judges others only on prompt answers from Redis (issue 12, goal 5):
a heartbeat of our own still waiting longer than ``slow_s`` proves a stall, not deaths."""

from __future__ import annotations

import asyncio
import json
import time

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from alchemy.config import WorkerConfig
from alchemy.queue.identity import IdentityClaims
from alchemy.queue.keys import QueueKeys
from alchemy.queue.store import QueueStore, RateLimit
from alchemy.worker.membership import Membership

QUEUE = "members"


def store(redis: Redis, prefix: str, identity: str) -> QueueStore:
    return QueueStore(
        redis,
        prefix=prefix,
        queue=QUEUE,
        identity=identity,
        rate=RateLimit(0, 60.0, 0),
        max_dead=100,
    )


async def plant_dead_member(redis: Redis, prefix: str) -> str:
    """A member whose heartbeat has expired, one job in its processing list."""
    dead = "vm:dead"
    await store(redis, prefix, dead).heartbeat("{}", ttl=0.01)
    await redis.lpush(QueueKeys(prefix, QUEUE).processing(dead), json.dumps({"id": "j1"}))
    await asyncio.sleep(0.05)
    return dead


def membership(redis: Redis, prefix: str, config: WorkerConfig | None = None) -> Membership:
    config = config or WorkerConfig(
        name="alive", host="vm", heartbeat_interval=0.5, heartbeat_ttl=2.0
    )
    member = Membership(
        [store(redis, prefix, "vm:alive")], config, claims=IdentityClaims(redis, prefix=prefix)
    )
    member._healthy_since = time.monotonic() - 10  # Redis has answered us for long
    return member


def test_the_slow_answer_limit_with_the_shipped_timings(redis: Redis, prefix: str) -> None:
    """(TTL 3 s - 2 x 0.5 s) / 2: a stall that expires a heartbeat (2.5 s or more) holds
    one of ours for at least 2 s."""
    assert membership(redis, prefix, WorkerConfig()).slow_s == 1.0


async def test_no_sweep_while_our_own_heartbeat_waits_for_redis(redis: Redis, prefix: str) -> None:
    dead = await plant_dead_member(redis, prefix)
    member = membership(redis, prefix)
    member._beat_started = time.monotonic() - 1.0  # > slow_s, 0.5 s
    await member.sweep()
    keys = QueueKeys(prefix, QUEUE)
    assert await redis.llen(keys.processing(dead)) == 1
    assert await redis.llen(keys.wait) == 0
    # The stall restarted the wait for a whole TTL of prompt answers.
    assert not member._may_judge_others()


async def test_a_prompt_sweep_recovers_the_dead(redis: Redis, prefix: str) -> None:
    dead = await plant_dead_member(redis, prefix)
    member = membership(redis, prefix)
    await member.sweep()
    keys = QueueKeys(prefix, QUEUE)
    assert await redis.llen(keys.processing(dead)) == 0
    assert await redis.llen(keys.wait) == 1


async def test_after_redis_failed_us_others_get_two_ttls_to_come_back(
    redis: Redis, prefix: str
) -> None:
    """A failover or restart: others reconnect on their own schedule, so judging them waits
    two TTLs of prompt answers; a slow answer alone restarts the wait of one TTL."""
    member = membership(redis, prefix)  # TTL 2 s
    member._unhealthy(refused=True)
    member._healthy_since = time.monotonic() - 3.0  # back for 1.5 TTLs
    assert not member._may_judge_others()
    member._healthy_since = time.monotonic() - 4.1
    assert member._may_judge_others()
    member._unhealthy()  # slow, not refused: one TTL again
    member._healthy_since = time.monotonic() - 2.1
    assert member._may_judge_others()


async def test_a_failed_heartbeat_means_redis_failed_us(prefix: str) -> None:
    # Nothing listens there; no retries inside redis-py, so the first beat fails at once.
    gone = Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    try:
        member = membership(gone, prefix)
        task = asyncio.create_task(member.heartbeat_loop())
        await asyncio.sleep(0.2)
        task.cancel()
        member._healthy_since = time.monotonic() - 3.0  # back for 1.5 TTLs since
        assert not member._may_judge_others()
        member._healthy_since = time.monotonic() - 4.1
        assert member._may_judge_others()
    finally:
        await gone.aclose()
