"""The operator reads of :class:`QueueAdmin`: what the command line and the admin API show,
read from the protocol's keys in one place."""

from __future__ import annotations

import json

from redis.asyncio import Redis

from alchemy.queue.admin import QueueAdmin
from alchemy.queue.job import DeadReason, ErrorInfo, Meta, encode_dead_entry
from alchemy.queue.keys import QueueKeys


async def redis_ms(redis: Redis) -> float:
    seconds, micros = await redis.time()
    return seconds * 1000 + micros / 1000


async def test_status_reads_heartbeat_ages_from_the_consumers_scores_by_redis_clock(
    redis: Redis, prefix: str
) -> None:
    keys = QueueKeys(prefix, "q")
    now = await redis_ms(redis)
    await redis.zadd(keys.consumers, {"host:fresh": now - 1_500, "host:stale": now - 60_000})
    await redis.set(keys.heartbeat("host:fresh"), json.dumps({"pid": 7}))
    await redis.lpush(keys.processing("host:fresh"), b"{}", b"{}")
    status = await QueueAdmin(redis, prefix=prefix).status("q")
    consumers = {c.identity: c for c in status.consumers}
    fresh, stale = consumers["host:fresh"], consumers["host:stale"]
    assert (fresh.alive, fresh.processing, fresh.heartbeat) == (True, 2, {"pid": 7})
    assert 1.5 <= (fresh.heartbeat_age_s or 0) < 3.0
    assert (stale.alive, stale.heartbeat) == (False, None)
    assert 60.0 <= (stale.heartbeat_age_s or 0) < 62.0
    assert status.processing == 2
    # A score ahead of Redis's clock (another host's clock skew) is not a negative age.
    await redis.zadd(keys.consumers, {"host:fresh": now + 10_000})
    status = await QueueAdmin(redis, prefix=prefix).status("q")
    assert {c.identity: c.heartbeat_age_s for c in status.consumers}["host:fresh"] == 0.0
    shown = status.to_json()["consumers"][0]
    assert list(shown) == ["identity", "alive", "processing", "heartbeat", "heartbeat_age_s"]


async def add_dead(redis: Redis, prefix: str, job_id: str) -> None:
    entry = encode_dead_entry(
        queue="q",
        raw_job=json.dumps({"id": job_id}).encode(),
        reason=DeadReason.MAX_ATTEMPTS,
        error=ErrorInfo("ValueError", "no"),
        meta=Meta(id=job_id, attempt=3),
        dead_at_ms=1,
    )
    await redis.lpush(QueueKeys(prefix, "q").dead, entry)


async def test_dead_page_is_a_bounded_slice_with_the_total(redis: Redis, prefix: str) -> None:
    admin = QueueAdmin(redis, prefix=prefix)
    for n in range(5):
        await add_dead(redis, prefix, f"j{n}")
    page = await admin.dead_page("q", offset=1, limit=2)
    assert (page.total, [e.id for e in page.entries]) == (5, ["j3", "j2"])
    empty = await admin.dead_page("q", offset=0, limit=0)  # never LRANGE 0 -1
    assert (empty.total, empty.entries) == (5, [])
    beyond = await admin.dead_page("q", offset=10, limit=50)
    assert (beyond.total, beyond.entries) == (5, [])
    assert (await admin.dead_page("other")).total == 0


async def test_record_prefers_the_current_generation(redis: Redis, prefix: str) -> None:
    keys = QueueKeys(prefix, "q")
    admin = QueueAdmin(redis, prefix=prefix)
    await redis.hset(keys.records_old, "j", json.dumps({"id": "j", "state": "started"}))
    await redis.pexpire(keys.records_old, 5_000)
    old = await admin.record("q", "j")
    assert old is not None
    assert old["state"] == "started"
    assert old["expires_in_s"] in (4, 5)  # whole seconds left of the old generation
    await redis.hset(keys.records, "j", json.dumps({"id": "j", "state": "completed"}))
    await redis.pexpire(keys.records, 90_000)
    current = await admin.record("q", "j")
    assert current is not None
    assert current["state"] == "completed"
    assert current["expires_in_s"] in (89, 90)
    assert await admin.record("q", "nope") is None
