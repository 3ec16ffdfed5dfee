"""Contract tests of the dead-letter list's steps: the cap, the bounded scan, and retry and
purge by id through it, asserted on the Redis contents."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from redis.asyncio import Redis

from alchemy.config import parse_config
from alchemy.queue import admin as admin_module
from alchemy.queue.admin import DeadRetry, QueueAdmin
from alchemy.queue.job import (
    DeadReason,
    ErrorInfo,
    Meta,
    dead_entry_id_needles,
    encode_dead_entry,
)
from alchemy.queue.job import _cjson_string as cjson_string
from alchemy.queue.store import DEFAULT_MAX_DEAD, QueueStore

ME = "host:me"


def store(redis: Redis, prefix: str, max_dead: int = 100_000) -> QueueStore:
    return QueueStore(redis, prefix=prefix, queue="q", identity=ME, max_dead=max_dead)


def entry_of(job_id: str | None, n: int = 0) -> bytes:
    job = json.dumps({"id": job_id, "n": n} if job_id else {"n": n}).encode()
    return encode_dead_entry(
        queue="q",
        raw_job=job,
        reason=DeadReason.MAX_ATTEMPTS,
        error=ErrorInfo("ValueError", "told to fail"),
        meta=Meta(id=job_id or "", attempt=3),
        dead_at_ms=n,
    )


async def dead_letter_all(redis: Redis, s: QueueStore, entries: list[bytes]) -> None:
    """Through the engine's own step: each item taken, then dead-lettered."""
    for n, entry in enumerate(entries):
        item = f"item-{n}".encode()
        await redis.lpush(s.processing, item)
        assert await s.dead_letter(item, entry)


# -- the cap ----------------------------------------------------------------------------------
async def test_dead_letter_trims_the_oldest_beyond_the_cap_and_counts_them(
    redis: Redis, prefix: str
) -> None:
    s = store(redis, prefix, max_dead=3)
    entries = [entry_of(f"j{n}", n) for n in range(5)]
    await dead_letter_all(redis, s, entries)
    assert await redis.lrange(s.keys.dead, 0, -1) == entries[:1:-1]  # the newest three
    assert await redis.get(s.keys.dead_trimmed) == b"2"
    # Re-sent after a lost reply, the step does nothing, and trims nothing either.
    await redis.lpush(s.processing, b"item-x")
    assert await s.dead_letter(b"item-x", entry_of("x"))
    assert not await s.dead_letter(b"item-x", entry_of("x"))
    assert await redis.get(s.keys.dead_trimmed) == b"3"
    status = await QueueAdmin(redis, prefix=prefix).status("q")
    assert (status.dead, status.dead_trimmed) == (3, 3)
    assert status.to_json()["dead_trimmed"] == 3


async def test_a_lowered_cap_is_reached_in_bounded_steps(redis: Redis, prefix: str) -> None:
    s = store(redis, prefix, max_dead=100)
    await redis.lpush(s.keys.dead, *[entry_of(f"old{n}", n) for n in range(25_000)])
    await dead_letter_all(redis, s, [entry_of("new")])
    assert await redis.llen(s.keys.dead) == 25_001 - 10_000  # at most 10,000 a step
    await dead_letter_all(redis, s, [entry_of("new1"), entry_of("new2")])
    assert await redis.llen(s.keys.dead) == 100
    assert await redis.get(s.keys.dead_trimmed) == str(25_003 - 100).encode()
    assert json.loads(await redis.lindex(s.keys.dead, 0))["id"] == "new2"


async def test_poison_entries_of_a_recovery_keep_the_cap(redis: Redis, prefix: str) -> None:
    s = store(redis, prefix, max_dead=2)
    for n in range(3):
        meta = {"v": 1, "id": f"p{n}", "attempt": 1, "recoveries": 2}
        job = json.dumps({"id": f"p{n}"})
        await redis.rpush(s.processing, json.dumps({"_alchemy": meta, "job": job}))
    jobs = await s.recover(ME, max_recoveries=2, require_dead=False)
    assert jobs is not None
    assert [job.poisoned for job in jobs] == [True, True, True]
    assert [json.loads(e)["id"] for e in await redis.lrange(s.keys.dead, 0, -1)] == ["p2", "p1"]
    assert await redis.get(s.keys.dead_trimmed) == b"1"


# -- the scan ---------------------------------------------------------------------------------
async def test_the_scan_reads_oldest_first_in_bounded_steps(redis: Redis, prefix: str) -> None:
    s = store(redis, prefix)
    entries = [entry_of(f"j{n}", n) for n in range(20)]
    await redis.lpush(s.keys.dead, *entries)  # j0 is the oldest
    first = await s.scan_dead(0, 0, max_entries=5, max_bytes=10**6)
    assert first.found == [(n, entries[n]) for n in range(5)]
    assert (first.position, first.length, first.done) == (5, 20, False)
    by_id = await s.scan_dead(
        5, 0, max_entries=100, max_bytes=10**6, job_id="j7", needles=dead_entry_id_needles("j7")
    )
    assert by_id.found == [(7, entries[7])]
    assert (by_id.position, by_id.done) == (20, True)
    # A step reads at most max_bytes of entries (and at least one).
    size = len(entries[0])
    budget = await s.scan_dead(0, 0, max_entries=100, max_bytes=size * 3 - 1)
    assert [p for p, _ in budget.found] == [0, 1, 2]
    one = await s.scan_dead(0, 0, max_entries=100, max_bytes=1)
    assert [p for p, _ in one.found] == [0]


async def test_the_scan_makes_good_entries_trimmed_between_steps(redis: Redis, prefix: str) -> None:
    s = store(redis, prefix, max_dead=20)
    entries = [entry_of(f"j{n}", n) for n in range(20)]
    await redis.lpush(s.keys.dead, *entries)
    first = await s.scan_dead(0, 0, max_entries=5, max_bytes=10**6)
    assert first.trimmed == 0
    # Three dead letters meanwhile push three entries and trim the three oldest.
    await dead_letter_all(redis, s, [entry_of(f"new{n}") for n in range(3)])
    after = await s.scan_dead(first.position, first.trimmed, max_entries=5, max_bytes=10**6)
    assert after.trimmed == 3
    assert after.found[0] == (2, entries[5])  # nothing skipped
    assert [e for _, e in after.found] == entries[5:10]


async def test_needles_spell_ids_as_python_and_cjson_do(redis: Redis) -> None:
    for job_id in ("plain", "a/b", "é ☃", 'q"uote\\back', "tab\there\x7f\x01"):
        spelled = await redis.eval("return cjson.encode(ARGV[1])", 0, job_id)
        assert spelled == cjson_string(job_id).encode(), job_id
        needles = dead_entry_id_needles(job_id)
        assert b'"id":' + spelled in needles
        python = json.dumps({"v": 1, "id": job_id}, ensure_ascii=False, separators=(",", ":"))
        assert any(n in python.encode() for n in needles)


# -- retry and purge by id --------------------------------------------------------------------
@pytest.fixture
def small_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps of 7 entries, so that a few dozen entries take several."""
    monkeypatch.setattr(admin_module, "ID_STEP_ENTRIES", 7)
    monkeypatch.setattr(admin_module, "ALL_STEP_ENTRIES", 7)


async def test_retry_and_purge_by_id_find_every_entry_anywhere(
    redis: Redis, prefix: str, small_steps: None
) -> None:
    s = store(redis, prefix)
    admin = QueueAdmin(redis, prefix=prefix)
    ids = [f"j{n}" if n % 10 else "twice" for n in range(50)]  # "twice": five entries
    await redis.lpush(s.keys.dead, *[entry_of(job_id, n) for n, job_id in enumerate(ids)])
    assert await admin.dead_retry("q", "twice") == DeadRetry(retried=5)
    waiting = [json.loads(raw) for raw in reversed(await redis.lrange(s.keys.wait, 0, -1))]
    assert [w["n"] for w in waiting] == [0, 10, 20, 30, 40]  # oldest first
    assert await admin.dead_retry("q", "j49") == DeadRetry(retried=1)
    assert await admin.dead_purge("q", "j1") == 1
    assert await admin.dead_purge("q", "j1") == 0
    left = [json.loads(e)["id"] for e in reversed(await redis.lrange(s.keys.dead, 0, -1))]
    assert left == [i for i in ids if i not in ("twice", "j49", "j1")]
    assert await admin.dead_retry_all("q") == DeadRetry(retried=len(left))
    assert await redis.llen(s.keys.dead) == 0


async def test_entries_written_by_recovery_are_found_by_id(
    redis: Redis, prefix: str, small_steps: None
) -> None:
    s = store(redis, prefix)
    admin = QueueAdmin(redis, prefix=prefix)
    await redis.lpush(s.keys.dead, *[entry_of(f"j{n}", n) for n in range(20)])
    raw = b'{"id":"a/b \xc3\xa9","bytes":"\xff\xfe"}'  # not UTF-8
    meta = {"v": 1, "id": "a/b é", "attempt": 1, "recoveries": 2}
    envelope = b'{"_alchemy":' + json.dumps(meta, ensure_ascii=False).encode() + b',"job":"'
    await redis.lpush(s.processing, envelope + raw.replace(b'"', b'\\"') + b'"}')
    assert await s.recover(ME, max_recoveries=2, require_dead=False)
    [listed] = await admin.dead_list("q", limit=1)
    assert listed.fields["reason"] == "poison"
    assert listed.fields["job_b64"] == base64.b64encode(raw).decode()
    assert "job" not in listed.fields
    await redis.lpush(s.keys.dead, *[entry_of(f"k{n}", n) for n in range(20)])
    assert await admin.dead_retry("q", "a/b é") == DeadRetry(retried=1)
    assert await redis.lrange(s.keys.wait, 0, -1) == [raw]  # byte for byte


async def test_truncated_entries_are_never_retried(
    redis: Redis, prefix: str, small_steps: None
) -> None:
    s = store(redis, prefix)
    admin = QueueAdmin(redis, prefix=prefix)
    big = encode_dead_entry(
        queue="q",
        raw_job=b'{"id":"big","pad":"' + b"x" * 100_000 + b'"}',
        reason=DeadReason.TOO_LARGE,
        error=ErrorInfo("BadJob", "too big"),
        meta=Meta(id="big"),
        dead_at_ms=1,
    )
    await redis.lpush(s.keys.dead, entry_of("a"), big, entry_of("big"), entry_of("b"))
    assert await admin.dead_retry("q", "big") == DeadRetry(retried=1, truncated=1)
    assert await admin.dead_retry("q", "big") == DeadRetry(truncated=1)
    assert await admin.dead_retry_all("q") == DeadRetry(retried=2, truncated=1)
    assert await redis.lrange(s.keys.dead, 0, -1) == [big]
    assert all(b"x" * 1000 not in job for job in await redis.lrange(s.keys.wait, 0, -1))
    assert await admin.dead_purge("q", "big") == 1


async def test_an_id_redis_cannot_be_sent_matches_nothing(redis: Redis, prefix: str) -> None:
    admin = QueueAdmin(redis, prefix=prefix)
    await redis.lpush(store(redis, prefix).keys.dead, entry_of("x"))
    assert await admin.dead_retry("q", "\ud800") == DeadRetry()
    assert await admin.dead_purge("q", "\ud800") == 0


def test_the_store_and_the_config_agree_on_the_default_cap() -> None:
    config = parse_config({"queues": {"q": {"handler": "m:f"}}})
    assert config.queues[0].max_dead == DEFAULT_MAX_DEAD


async def test_a_walk_leaves_entries_pushed_meanwhile_alone(
    redis: Redis, prefix: str, small_steps: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = store(redis, prefix)
    admin = QueueAdmin(redis, prefix=prefix)
    await redis.lpush(s.keys.dead, *[entry_of(f"j{n}", n) for n in range(20)])
    real = QueueStore.retry_dead

    async def failing_again(self: QueueStore, moves: Any) -> int:
        moved = await real(self, moves)
        for _, _, job in moves:  # each retried job is dead-lettered again at once
            await redis.lpush(s.keys.dead, entry_of(json.loads(job)["id"], 99))
        return moved

    monkeypatch.setattr(QueueStore, "retry_dead", failing_again)
    assert await admin.dead_retry_all("q") == DeadRetry(retried=20)
    assert await redis.llen(s.keys.dead) == 20  # the new ones, for the next retry
    assert await admin.dead_retry("q", "j3") == DeadRetry(retried=1)
    assert await redis.llen(s.keys.dead) == 20
