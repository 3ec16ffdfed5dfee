"""The events stream, read back with XRANGE as a program in another language would, and the
in-process hooks."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from redis.asyncio import Redis

from alchemy.ops.batching import DEFAULT_MAX_BATCH
from alchemy.ops.events import EventHooks, EventStream
from alchemy.queue.admin import QueueAdmin
from alchemy.queue.browse import QueueBrowser
from alchemy.queue.job import ErrorInfo
from alchemy.queue.keys import QueueKeys
from alchemy.worker.observer import JobEvent, Transition
from tests.conftest import plant_dying_job, queue_table, wait_for


def decode(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]


async def stream(redis: Redis, prefix: str, queue: str = "q") -> list[dict[str, str]]:
    return decode(await redis.xrange(QueueKeys(prefix, queue).events))


async def test_every_transition_lands_in_the_queue_stream(
    redis: Redis, prefix: str, make_config: Any, run_worker: Any
) -> None:
    table = queue_table("q", backoff_initial=0.05, backoff_jitter=0.0, max_attempts=2)
    table["q"]["handler"] = "tests.support.handlers:rate_limited_once"
    config = make_config(table)
    keys = QueueKeys(prefix, "q")
    identity = config.worker.identity
    jobs = [
        {"id": "flaky", "fail_until_attempt": 2, "enqueued_at": 1},
        {"id": "doomed", "fail_until_attempt": -1, "error": "permanent"},
        {"id": "slow-down", "once_key": f"{prefix}:once", "retry_after": 0.1},
    ]
    for job in jobs:
        await redis.lpush(keys.wait, json.dumps(job))
    await redis.lpush(keys.wait, b"not json")
    await redis.lpush(keys.processing(identity), json.dumps({"id": "left"}))
    deaths = await plant_dying_job(redis, config, "q", {"id": "killer"})
    events = EventStream(prefix, identity=identity)
    run_worker(config, observers=[events], extensions=[events])

    def done(entries: list[dict[str, str]], job_id: str) -> bool:
        return any(e.get("job_id") == job_id and e["event"] == "completed" for e in entries)

    async def finished() -> bool:
        entries = await stream(redis, prefix)
        return all(done(entries, j) for j in ("flaky", "slow-down", "left")) and any(
            e.get("job_id") == "doomed" and e["event"] == "dead" for e in entries
        )

    await wait_for(finished, within=10)
    entries = await stream(redis, prefix)
    by_id: dict[str | None, list[str]] = {}
    for entry in entries:
        by_id.setdefault(entry.get("job_id"), []).append(entry["event"])
    assert by_id["flaky"] == ["started", "retrying", "started", "completed"]
    assert by_id["doomed"] == ["started", "dead"]
    assert by_id["slow-down"] == ["started", "paused", "started", "completed"]
    assert by_id["left"] == ["recovered", "started", "completed"]
    assert by_id["killer"] == ["dead"]
    assert by_id[None] == ["dead"]  # the unreadable item

    recovered = next(e for e in entries if e.get("job_id") == "left")
    assert recovered["event"] == "recovered"
    assert (recovered["dead_worker"], recovered["attempt"]) == (identity, "1")
    assert recovered["error_type"] == "ProcessDied"
    poisoned = next(e for e in entries if e.get("job_id") == "killer")
    assert (poisoned["reason"], poisoned["dead_worker"]) == ("poison", identity)
    assert poisoned["error_type"] == "ProcessDied"
    assert f"died {deaths + 1} times" in poisoned["error_message"]
    flaky = [e for e in entries if e.get("job_id") == "flaky"]
    assert flaky[0]["attempt"] == "1"
    assert float(flaky[0]["pickup_ms"]) > 0
    assert flaky[1]["error_type"] == "ValueError"
    assert int(flaky[1]["retry_in_ms"]) == 50
    assert float(flaky[1]["duration_ms"]) >= 0
    assert flaky[3]["attempt"] == "2"
    assert {e["worker"] for e in entries} == {identity}
    doomed = [e for e in entries if e.get("job_id") == "doomed"][1]
    assert (doomed["reason"], doomed["error_type"]) == ("permanent_error", "PermanentError")
    unreadable = next(e for e in entries if "job_id" not in e and e["event"] == "dead")
    assert unreadable["reason"] == "invalid_json"
    assert all(int(e["ts"]) > 1_700_000_000_000 for e in entries)


async def test_the_stream_is_capped(redis: Redis, prefix: str) -> None:
    events = EventStream(prefix, identity="w", max_length=100)
    events.attach(redis)
    for n in range(1000):
        events.on_job(JobEvent("q", Transition.COMPLETED, f"j{n}", 1, "w", duration_s=0.001))
        if n % 100 == 0:
            await asyncio.sleep(0)
    assert await events.flush()
    length = await redis.xlen(QueueKeys(prefix, "q").events)
    assert 100 <= length < 300  # MAXLEN ~ trims whole nodes of 100 entries
    last = decode(await redis.xrevrange(QueueKeys(prefix, "q").events, count=1))[0]
    assert last["job_id"] == "j999"


async def test_throughput_counts_completed_and_failed_per_second(redis: Redis, prefix: str) -> None:
    events = EventStream(prefix, identity="w")
    events.attach(redis)
    for n in range(30):
        events.on_job(JobEvent("q", Transition.COMPLETED, f"c{n}", 1, "w", duration_s=0.0))
    for n in range(5):
        error = ErrorInfo("ValueError", "no")
        events.on_job(JobEvent("q", Transition.RETRYING, f"f{n}", 1, "w", 0.0, error=error))
    events.on_job(JobEvent("q", Transition.STARTED, "s", 1, "w"))
    assert await events.flush()
    assert await redis.ttl(QueueKeys(prefix, "q").throughput) > 300
    now = int((await redis.time())[0])

    # Whole seconds only: wait for the second of the writes to be over.
    async def next_second() -> bool:
        return int((await redis.time())[0]) > now

    await wait_for(next_second, within=3, interval=0.05)
    admin = QueueAdmin(redis, prefix=prefix)
    t = (await admin.throughput(["q"]))["q"]
    assert (t.completed_1m, t.failed_1m, t.completed_5m, t.failed_5m) == (30, 5, 30, 5)
    assert (await admin.throughput(["other"]))["other"].completed_5m == 0


async def test_writes_are_batched_and_bounded(redis: Redis, prefix: str) -> None:
    events = EventStream(prefix, identity="w")
    events.attach(redis)
    for n in range(5000):
        events.on_job(JobEvent("q", Transition.STARTED, f"j{n}", 1, "w"))
    assert await events.flush()
    assert events.batches == math.ceil(5000 / DEFAULT_MAX_BATCH)  # at most max_batch a call
    assert await redis.xlen(QueueKeys(prefix, "q").events) == 5000


async def test_events_wait_for_redis_and_are_capped_in_memory(prefix: str) -> None:
    down = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    events = EventStream(prefix, identity="w", max_pending=50)
    try:
        events.attach(down)
        for n in range(80):
            events.on_job(JobEvent("q", Transition.STARTED, f"j{n}", 1, "w"))
        await asyncio.sleep(0.3)
        assert events.pending == 50
        assert events.dropped == 30
        await events.close(within=0.2)
        assert events.pending == 0
        assert events.dropped == 80
        events.on_job(JobEvent("q", Transition.STARTED, "late", 1, "w"))
        assert events.pending == 0
    finally:
        await down.aclose()


async def test_hooks_hear_completed_and_failed_jobs(
    redis: Redis, prefix: str, make_config: Any, run_worker: Any
) -> None:
    config = make_config(queue_table("q", backoff_initial=0.05, backoff_jitter=0.0, max_attempts=2))
    keys = QueueKeys(prefix, "q")
    await redis.lpush(keys.wait, json.dumps({"id": "ok"}))
    await redis.lpush(keys.wait, json.dumps({"id": "bad", "fail_until_attempt": -1}))
    hooks = EventHooks()
    completed: list[str | None] = []
    failed: list[tuple[str | None, str]] = []
    awaited: list[str | None] = []

    @hooks.on_completed
    def note(event: JobEvent) -> None:
        completed.append(event.job_id)

    @hooks.on_failed
    async def note_failure(event: JobEvent) -> None:
        await asyncio.sleep(0)
        failed.append((event.job_id, str(event.transition)))

    @hooks.on_completed
    def broken(event: JobEvent) -> None:
        raise RuntimeError("hook bug")

    async def later(event: JobEvent) -> None:
        awaited.append(event.job_id)
        raise RuntimeError("async hook bug")

    hooks.on_completed(later)
    run_worker(config, observers=[hooks])
    await wait_for(lambda: len(failed) == 2 and completed == ["ok"])
    await hooks.wait_idle()
    assert failed == [("bad", "retrying"), ("bad", "dead")]
    assert awaited == ["ok"]
    hooks.remove(note)
    hooks.on_job(JobEvent("q", Transition.COMPLETED, "again", 1, "w"))
    assert completed == ["ok"]
    hooks.clear()
    hooks.on_job(JobEvent("q", Transition.DEAD, "again", 1, "w"))
    assert len(failed) == 2


async def test_per_minute_counts_keep_one_hour(redis: Redis, prefix: str) -> None:
    keys = QueueKeys(prefix, "q")
    now, _ = await redis.time()
    minute = int(now) // 60
    stale = {f"{minute - back}:c": 1 for back in range(60, 200)}  # older than the hour
    await redis.hset(keys.per_minute, mapping={**stale, f"{minute - 5}:c": 7})
    stream = EventStream(prefix, identity="w")
    stream.attach(redis)
    stream.on_job(JobEvent("q", Transition.COMPLETED, "a", 1, "w", 0.01))
    stream.on_job(JobEvent("q", Transition.RETRYING, "b", 1, "w", 0.01))
    stream.on_job(JobEvent("q", Transition.PROGRESS, "c", 1, "w", progress=0.5, step="s"))
    assert await stream.flush()
    counts = {k.decode(): int(v) for k, v in (await redis.hgetall(keys.per_minute)).items()}
    written = int(now) // 60
    assert counts == {f"{minute - 5}:c": 7, f"{written}:c": 1, f"{written}:f": 1}
    assert 3600 < await redis.ttl(keys.per_minute) <= 3660
    [minutes] = (await QueueBrowser(redis, prefix=prefix).per_minute(["q"])).values()
    assert (minutes.completed[-1], minutes.failed[-1], minutes.completed[-6]) == (1, 1, 7)
    assert sum(minutes.completed) == 8
