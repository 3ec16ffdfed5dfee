"""Contract tests of the atomic queue steps, asserted on the Redis contents."""

from __future__ import annotations

import asyncio
import json

from redis.asyncio import Redis

from alchemy.queue.admin import DeadRetry, QueueAdmin
from alchemy.queue.job import DeadReason, ErrorInfo, Meta, encode_dead_entry, encode_envelope
from alchemy.queue.store import ClaimKind, QueueStore, RateLimit, RecoveredJob
from tests.conftest import REDIS_URL, wait_for

ME = "host:me"


def store(redis: Redis, prefix: str, rate: RateLimit | None = None, who: str = ME) -> QueueStore:
    kwargs = {"rate": rate} if rate else {}
    return QueueStore(redis, prefix=prefix, queue="q", identity=who, **kwargs)


async def fill(redis: Redis, s: QueueStore, n: int) -> list[bytes]:
    items = [json.dumps({"id": f"j{i}"}).encode() for i in range(n)]
    for item in items:
        await redis.lpush(s.keys.wait, item)
    return items


async def test_claim_takes_oldest_first_and_moves_to_processing(redis: Redis, prefix: str) -> None:
    s = store(redis, prefix)
    items = await fill(redis, s, 5)
    claim = await s.claim(3)
    assert claim.kind is ClaimKind.JOBS
    assert list(claim.items) == items[:3]
    assert sorted(await redis.lrange(s.processing, 0, -1)) == sorted(items[:3])
    assert await redis.lrange(s.keys.wait, 0, -1) == list(reversed(items[3:]))


async def test_claim_spends_tokens_and_schedules_the_next(redis: Redis, prefix: str) -> None:
    s = store(redis, prefix, RateLimit(limit=5, period=1.0, burst=3))
    items = await fill(redis, s, 10)
    first = await s.claim(10)
    assert len(first.items) == 4  # one token, plus the burst of 3
    # The bucket is empty: the next job is taken with the next token, due in 208 ms (one
    # token per 200 ms, and the guard: 0.1 s per 1 s window, at most 4%).
    second = await s.claim(10)
    assert second.kind is ClaimKind.SCHEDULED
    assert list(second.items) == [items[4]]
    assert 195 <= second.wait_ms <= 209
    # That token is spoken for: look again when it arrives, to take the one after.
    third = await s.claim(10)
    assert third.kind is ClaimKind.THROTTLED
    assert 195 <= third.wait_ms <= 209
    assert await redis.llen(s.processing) == 5


async def test_without_a_burst_the_bucket_holds_one_token(redis: Redis, prefix: str) -> None:
    s = store(redis, prefix, RateLimit(limit=20, period=5.0))
    await fill(redis, s, 10)
    assert len((await s.claim(10)).items) == 1
    assert (await s.claim(10)).kind is ClaimKind.SCHEDULED
    assert (await s.claim(10)).kind is ClaimKind.THROTTLED


async def test_empty_claim_takes_no_token_and_confirm_takes_one(redis: Redis, prefix: str) -> None:
    s = store(redis, prefix, RateLimit(limit=1, period=3600.0))
    empty = await s.claim(5)
    assert empty.kind is ClaimKind.EMPTY
    assert empty.wait_ms == -1  # no retry due
    # Three jobs taken by blocking fetches: the first gets the one token, the second the
    # next one (an hour away), the third goes back to the front of the wait list.
    first, second, third = b'{"id":"x"}', b'{"id":"y"}', b'{"id":"z"}'
    await redis.lpush(s.processing, first, second, third)
    assert (await s.confirm(first)).kind is ClaimKind.JOBS
    scheduled = await s.confirm(second)
    assert scheduled.kind is ClaimKind.SCHEDULED
    assert scheduled.wait_ms > 3_500_000
    throttled = await s.confirm(third)
    assert throttled.kind is ClaimKind.THROTTLED
    assert throttled.wait_ms > 3_500_000
    assert sorted(await redis.lrange(s.processing, 0, -1)) == sorted([first, second])
    assert await redis.lindex(s.keys.wait, -1) == third
    # Re-sent after a lost reply: the item is already back, nothing happens twice.
    assert (await s.confirm(third)).kind is ClaimKind.GONE
    assert await redis.llen(s.keys.wait) == 1


async def test_a_hold_stops_claims_until_it_is_lifted(redis: Redis, prefix: str) -> None:
    s = store(redis, prefix)
    items = await fill(redis, s, 3)
    [item] = (await s.claim(1)).items
    envelope = encode_envelope(item, Meta(id="j0", deferrals=1))
    hold = b'{"dependency":"postgres","reason":"refused"}'
    assert await s.hold(item, envelope, hold, ttl=5.0)
    assert not await s.hold(item, envelope, hold, ttl=5.0)  # re-sent: nothing twice
    assert await redis.lindex(s.keys.wait, -1) == envelope  # at the front
    held = await s.claim(5)
    assert held.kind is ClaimKind.HELD
    assert held.hold == hold
    assert 4000 < held.wait_ms <= 5000
    # A job taken by a blocking fetch during the hold goes back to the front.
    assert await redis.rpoplpush(s.keys.wait, s.processing) == envelope
    assert (await s.confirm(envelope)).kind is ClaimKind.HELD
    assert await redis.lindex(s.keys.wait, -1) == envelope
    await redis.delete(s.keys.held)
    assert list((await s.claim(5)).items) == [envelope, items[1], items[2]]


async def test_due_retries_are_promoted_by_claim(redis: Redis, prefix: str) -> None:
    s = store(redis, prefix)
    await redis.lpush(s.processing, b'{"id":"r"}')
    envelope = encode_envelope(b'{"id":"r"}', Meta(id="r", attempt=2))
    assert await s.retry(b'{"id":"r"}', envelope, delay=0.0)
    assert not await s.retry(b'{"id":"r"}', envelope, delay=0.0)  # re-sent: no duplicate
    assert await redis.zcard(s.keys.delayed) == 1
    claim = await s.claim(5)
    assert list(claim.items) == [envelope]
    assert await redis.zcard(s.keys.delayed) == 0


async def test_pauses_stop_claims(redis: Redis, prefix: str) -> None:
    s = store(redis, prefix)
    await fill(redis, s, 2)
    [item] = (await s.claim(1)).items
    envelope = encode_envelope(item, Meta(id="j0"))
    assert await s.defer_and_pause(item, envelope, delay=5.0)
    paused = await s.claim(5)
    assert paused.kind is ClaimKind.PAUSED
    assert 4000 < paused.wait_ms <= 5000
    # A shorter "retry after" never shortens the pause in force.
    await redis.lpush(s.processing, b"other")
    assert await s.defer_and_pause(b"other", b"other-envelope", delay=1.0)
    assert await redis.pttl(s.keys.paused_until) > 4000
    admin = QueueAdmin(redis, prefix=prefix)
    await admin.resume("q")
    await admin.pause("q")
    assert (await s.claim(5)).wait_ms == -1
    await admin.resume("q")
    assert (await s.claim(5)).kind is ClaimKind.JOBS


async def test_confirm_returns_a_job_fetched_during_a_pause(redis: Redis, prefix: str) -> None:
    s = store(redis, prefix)
    await fill(redis, s, 2)
    [item] = (await s.claim(1)).items
    await redis.set(s.keys.paused_until, "x", px=3000)
    result = await s.confirm(item)
    assert result.kind is ClaimKind.PAUSED
    assert await redis.llen(s.processing) == 0
    assert await redis.lindex(s.keys.wait, -1) == item  # back at the front


async def test_ack_dead_letter_and_requeue_are_idempotent(redis: Redis, prefix: str) -> None:
    s = store(redis, prefix)
    a, b, c = await fill(redis, s, 3)
    await s.claim(3)
    assert await s.ack([a]) == 1
    assert await s.ack([a]) == 0
    entry = encode_dead_entry(
        queue="q",
        raw_job=b,
        reason=DeadReason.PERMANENT_ERROR,
        error=ErrorInfo("E", "m"),
        meta=Meta(id="j1"),
        dead_at_ms=1,
    )
    assert await s.dead_letter(b, entry)
    assert not await s.dead_letter(b, entry)
    assert await redis.lrange(s.keys.dead, 0, -1) == [entry]
    assert await s.requeue(c)
    assert not await s.requeue(c)
    assert await redis.lrange(s.keys.wait, 0, -1) == [c]


async def test_requeue_all_keeps_the_order(redis: Redis, prefix: str) -> None:
    s = store(redis, prefix)
    items = await fill(redis, s, 6)
    await s.claim(4)
    assert await s.requeue_all() == 4
    assert await redis.llen(s.processing) == 0
    assert list(reversed(await redis.lrange(s.keys.wait, 0, -1))) == items


async def test_recovery_counts_and_dead_letters_poison(redis: Redis, prefix: str) -> None:
    s = store(redis, prefix)
    raw = '{"id": "p", "note": "café / \\u00e9 ☃"}'.encode()
    await redis.lpush(s.keys.wait, raw)
    for expected_recoveries in (1, 2):
        await s.claim(1)
        assert await s.recover(ME, max_recoveries=2, require_dead=False) == [
            RecoveredJob("p", 1, expected_recoveries, poisoned=False)
        ]
        [wrapped] = await redis.lrange(s.keys.wait, 0, -1)
        envelope = json.loads(wrapped)
        assert envelope["job"].encode() == raw
        assert envelope["_alchemy"]["recoveries"] == expected_recoveries
    await s.claim(1)
    # A poisoned job comes back with its bytes, for the handler module's on_dead hook.
    assert await s.recover(ME, max_recoveries=2, require_dead=False) == [
        RecoveredJob("p", 1, 3, poisoned=True, raw_job=raw)
    ]
    assert await redis.llen(s.keys.wait) == 0
    [dead] = await redis.lrange(s.keys.dead, 0, -1)
    entry = json.loads(dead)
    assert entry["reason"] == "poison"
    assert entry["recoveries"] == 3
    assert entry["job"].encode() == raw


async def test_recovery_leaves_a_live_process_alone(redis: Redis, prefix: str) -> None:
    other = store(redis, prefix, who="host:other")
    await fill(redis, other, 2)
    await other.heartbeat("{}", ttl=5.0)
    await other.claim(2)
    sweeper = store(redis, prefix)
    assert await sweeper.recover("host:other", max_recoveries=2, require_dead=True) is None
    assert await redis.llen(other.processing) == 2
    await redis.delete(other.keys.heartbeat("host:other"))
    back = await sweeper.recover("host:other", max_recoveries=2, require_dead=True)
    assert back is not None
    assert sorted(back, key=lambda job: job.job_id or "") == [
        RecoveredJob("j0", 1, 1, poisoned=False),
        RecoveredJob("j1", 1, 1, poisoned=False),
    ]
    assert await sweeper.recover("host:other", max_recoveries=2, require_dead=True) == []
    assert await redis.zscore(other.keys.consumers, "host:other") is None


async def test_dead_letter_retry_and_purge(redis: Redis, prefix: str) -> None:
    s = store(redis, prefix)
    admin = QueueAdmin(redis, prefix=prefix)
    raws = await fill(redis, s, 3)
    await s.claim(3)
    for n, raw in enumerate(raws):
        entry = encode_dead_entry(
            queue="q",
            raw_job=raw,
            reason=DeadReason.MAX_ATTEMPTS,
            error=ErrorInfo("E", "m"),
            meta=Meta(id=f"j{n}", attempt=3),
            dead_at_ms=n,
        )
        await s.dead_letter(raw, entry)
    listed = await admin.dead_list("q", offset=0, limit=2)
    assert [e.id for e in listed] == ["j2", "j1"]  # newest first, paged
    assert await admin.dead_retry("q", "j1") == DeadRetry(retried=1)
    assert await redis.lrange(s.keys.wait, 0, -1) == [raws[1]]  # as the producer wrote it
    assert await admin.dead_retry("q", "nope") == DeadRetry()
    assert await admin.dead_retry_all("q") == DeadRetry(retried=2)
    assert await redis.llen(s.keys.dead) == 0
    assert await redis.llen(s.keys.wait) == 3
    claim = await s.claim(3)
    assert set(claim.items) == set(raws)
    await s.dead_letter(raws[0], b'{"id":"j0","job":"x"}')
    assert await admin.dead_purge("q", "j0") == 1
    assert await admin.dead_purge("q") == 0


async def _blocked_fetches(redis: Redis) -> int:
    clients = await redis.client_list()
    return sum(1 for c in clients if c.get("cmd") == "brpoplpush" and "b" in c.get("flags", ""))


async def test_a_gated_blocking_fetch_reads_the_gates_just_after_it_takes_the_job(
    redis: Redis, prefix: str
) -> None:
    """The pause and hold keys are read in the same reply as the job, as they stood after
    Redis handed it over: a pause set while the fetch was blocked is seen."""
    s = store(redis, prefix)
    blocking = Redis.from_url(REDIS_URL, max_connections=1)
    try:
        before = await _blocked_fetches(redis)
        assert await s.block_fetch_gated(blocking, 0.1) == (None, False)  # timed out

        async def fetch_after(set_gate: object) -> tuple[bytes | None, bool]:
            fetch = asyncio.create_task(s.block_fetch_gated(blocking, 5.0))
            await wait_for(lambda: _more_blocked(redis, before))
            if set_gate is not None:
                await set_gate  # type: ignore[misc]
            await redis.lpush(s.keys.wait, b'{"id":"g"}')
            return await fetch

        assert await fetch_after(None) == (b'{"id":"g"}', True)
        assert await s.ack([b'{"id":"g"}']) == 1  # it was in the processing list
        gates = {
            "paused": redis.set(s.keys.paused, 1),
            "paused_until": redis.set(s.keys.paused_until, "x", px=5000),
            "held": redis.set(s.keys.held, b'{"dependency":"postgres"}', px=5000),
        }
        for name, set_gate in gates.items():
            assert await fetch_after(set_gate) == (b'{"id":"g"}', False), name
            assert (await s.confirm(b'{"id":"g"}')).kind in (ClaimKind.PAUSED, ClaimKind.HELD)
            assert await redis.lindex(s.keys.wait, -1) == b'{"id":"g"}'  # back at the front
            await redis.delete(s.keys.wait, s.keys.paused, s.keys.paused_until, s.keys.held)
        assert await redis.llen(s.processing) == 0
    finally:
        await blocking.aclose()


async def _more_blocked(redis: Redis, before: int) -> bool:
    return await _blocked_fetches(redis) > before
