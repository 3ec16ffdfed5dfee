"""What happens to a job after its handler returns or raises, read from Redis itself."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from alchemy.config import Config, parse_config
from alchemy.queue.keys import QueueKeys
from alchemy.queue.topology import RedisClient
from alchemy.worker import consumer as consumer_module
from tests.conftest import build_config_dict, queue_table, wait_for

# Retries and dead letters on a single Redis and on a Redis Cluster (issue 10).
ON_BOTH = pytest.mark.parametrize("redis_topology", ["single", "cluster"], indirect=True)


async def push(redis: RedisClient, prefix: str, queue: str, raw: bytes | str) -> bytes:
    data = raw.encode() if isinstance(raw, str) else raw
    await redis.lpush(QueueKeys(prefix, queue).wait, data)
    return data


async def dead_entries(redis: RedisClient, prefix: str, queue: str) -> list[dict[str, Any]]:
    return [json.loads(e) for e in await redis.lrange(QueueKeys(prefix, queue).dead, 0, -1)]


async def records(redis: Redis, key: str) -> list[dict[str, Any]]:
    return [json.loads(e) for e in await redis.lrange(key, 0, -1)]


def job(prefix: str, job_id: str, **data: Any) -> str:
    return json.dumps({"id": job_id, "record": f"{prefix}:rec", **data})


@ON_BOTH
async def test_failing_job_is_retried_with_backoff_then_dead_lettered(
    redis: Redis, queue_redis: RedisClient, prefix: str, make_config: Any, run_worker: Any
) -> None:
    config: Config = make_config(
        queue_table(
            "q", max_attempts=3, backoff_initial=0.3, backoff_multiplier=2.0, backoff_jitter=0.0
        )
    )
    failing = job(prefix, "j1", fail_until_attempt=-1, extra=[1, 2])
    raw = await push(queue_redis, prefix, "q", failing)
    run_worker(config)
    keys = QueueKeys(prefix, "q")

    # After the first failure the job waits in the delayed set as an envelope.
    await wait_for(lambda: queue_redis.zcard(keys.delayed))
    [(member, due)] = await queue_redis.zrange(keys.delayed, 0, -1, withscores=True)
    envelope = json.loads(member)
    assert envelope["job"].encode() == raw
    assert envelope["_alchemy"]["attempt"] == 2
    assert envelope["_alchemy"]["last_error"] == {"type": "ValueError", "message": "told to fail"}
    assert due > time.time() * 1000 - 1000

    await wait_for(lambda: queue_redis.llen(keys.dead), within=10)
    [entry] = await dead_entries(queue_redis, prefix, "q")
    assert entry["reason"] == "max_attempts"
    assert entry["attempts"] == 3
    assert entry["id"] == "j1"
    assert entry["queue"] == "q"
    assert entry["error"] == {"type": "ValueError", "message": "told to fail"}
    assert entry["job"].encode() == raw
    assert entry["first_attempt_ms"] <= entry["dead_at_ms"]

    starts = await records(redis, f"{prefix}:rec")
    assert [s["attempt"] for s in starts] == [1, 2, 3]
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= 0.3 - 0.02  # backoff_initial
    assert gaps[1] >= 0.6 - 0.02  # backoff_initial * multiplier
    assert await queue_redis.zcard(keys.delayed) == 0
    assert await queue_redis.llen(keys.wait) == 0


@ON_BOTH
async def test_permanent_error_goes_straight_to_dead_letter(
    redis: Redis, queue_redis: RedisClient, prefix: str, make_config: Any, run_worker: Any
) -> None:
    config = make_config(queue_table("q", max_attempts=5))
    raw = await push(
        queue_redis, prefix, "q", job(prefix, "p1", fail_until_attempt=-1, error="permanent")
    )
    run_worker(config)
    await wait_for(lambda: queue_redis.llen(QueueKeys(prefix, "q").dead))
    [entry] = await dead_entries(queue_redis, prefix, "q")
    assert entry["reason"] == "permanent_error"
    assert entry["attempts"] == 1
    assert entry["error"]["type"] == "PermanentError"
    assert entry["job"].encode() == raw
    assert len(await records(redis, f"{prefix}:rec")) == 1


async def test_retryable_error_names_its_own_delay(
    redis: Redis, prefix: str, make_config: Any, run_worker: Any
) -> None:
    config = make_config(queue_table("q", backoff_initial=60.0, backoff_max=60.0))
    await push(
        redis,
        prefix,
        "q",
        job(prefix, "r1", fail_until_attempt=2, error="retryable", delay=0.4),
    )
    run_worker(config)
    await wait_for(lambda: redis.llen(f"{prefix}:rec:done"), within=5)
    starts = await records(redis, f"{prefix}:rec")
    assert [s["attempt"] for s in starts] == [1, 2]
    gap = starts[1]["t"] - starts[0]["t"]
    assert 0.4 - 0.02 <= gap < 5.0  # the handler's delay, not the queue's 60 s backoff
    assert await redis.llen(QueueKeys(prefix, "q").dead) == 0


async def test_handler_past_its_timeout_is_cancelled_and_retried(
    redis: Redis, prefix: str, make_config: Any, run_worker: Any
) -> None:
    config = make_config(
        queue_table("q", timeout=0.3, backoff_initial=0.1, backoff_jitter=0.0, max_attempts=3)
    )
    await push(redis, prefix, "q", job(prefix, "t1", sleep=30, sleep_until_attempt=2))
    run_worker(config)
    keys = QueueKeys(prefix, "q")
    await wait_for(lambda: redis.zcard(keys.delayed), within=5)
    [member] = await redis.zrange(keys.delayed, 0, -1)
    meta = json.loads(member)["_alchemy"]
    assert meta["attempt"] == 2
    assert meta["last_error"]["type"] == "JobTimeout"
    await wait_for(lambda: redis.llen(f"{prefix}:rec:done"), within=5)
    done = await records(redis, f"{prefix}:rec:done")
    assert [d["attempt"] for d in done] == [2]  # the first run never finished


async def test_a_handler_that_ignores_the_timeout_completes_and_its_own_timeouts_are_errors(
    redis: Redis, prefix: str, make_config: Any, run_worker: Any
) -> None:
    config = make_config(queue_table("q", timeout=0.3, max_attempts=1))
    await push(redis, prefix, "q", job(prefix, "stubborn", sleep=30, ignore_cancel=True))
    await push(redis, prefix, "q", job(prefix, "own", fail_until_attempt=-1, error="timeout"))
    await push(redis, prefix, "q", job(prefix, "after"))
    run_worker(config)
    keys = QueueKeys(prefix, "q")
    await wait_for(lambda: _count(redis, f"{prefix}:rec:done", 2), within=5)
    done = await records(redis, f"{prefix}:rec:done")
    assert sorted(d["id"] for d in done) == ["after", "stubborn"]
    await wait_for(lambda: redis.llen(keys.dead), within=5)
    [dead] = await redis.lrange(keys.dead, 0, -1)
    entry = json.loads(dead)
    assert entry["id"] == "own"
    assert entry["error"] == {"type": "TimeoutError", "message": "told to time out"}
    # Nothing left behind: the stubborn job was acknowledged like any completed one.
    await wait_for(lambda: _is_zero(redis.llen(keys.processing(config.worker.identity))))
    assert await redis.zcard(keys.delayed) == 0


async def _count(redis: Redis, key: str, n: int) -> bool:
    return bool(await redis.llen(key) >= n)


async def _is_zero(value: Any) -> bool:
    return bool(await value == 0)


async def test_bad_input_is_dead_lettered_raw_and_the_consumer_goes_on(
    redis: Redis, prefix: str, make_config: Any, run_worker: Any
) -> None:
    config = make_config(
        {
            **queue_table("q", max_payload_bytes=1024),
            "nohandler": {"handler": "tests.support.no_such_module:handle"},
        }
    )
    bad: dict[bytes, str] = {
        b'{"id": "x1", "unterminated": ': "invalid_json",
        b"[1, 2, 3]": "not_an_object",
        b'"just a string"': "not_an_object",
        b"\xff\xfe\x00not utf-8": "invalid_encoding",
        b'{"id": 42}': "invalid_field",
        b'{"id": "x2", "enqueued_at": "yesterday"}': "invalid_field",
        b'{"id": "x3", "_alchemy": {"attempt": 1}}': "invalid_field",
        json.dumps({"id": "big", "pad": "x" * 2000}).encode(): "too_large",
    }
    for raw in bad:
        await push(redis, prefix, "q", raw)
    good = await push(redis, prefix, "q", job(prefix, "good"))
    orphan = await push(redis, prefix, "nohandler", b'{"id": "n1", "k": "v"}')
    run_worker(config)

    await wait_for(lambda: redis.llen(f"{prefix}:rec:done"))
    await wait_for(lambda: redis.llen(QueueKeys(prefix, "nohandler").dead))
    await wait_for(lambda: _llen_is(redis, QueueKeys(prefix, "q").dead, len(bad)), within=5)
    entries = await dead_entries(redis, prefix, "q")
    by_raw = {_raw_job(e): e for e in entries}
    assert set(by_raw) == set(bad)
    for raw, reason in bad.items():
        assert by_raw[raw]["reason"] == reason, raw
        assert by_raw[raw]["error"]["type"] == "BadJob"
        assert by_raw[raw]["error"]["message"]
    assert "job_b64" in by_raw[b"\xff\xfe\x00not utf-8"]
    assert [d["id"] for d in await records(redis, f"{prefix}:rec:done")] == ["good"]
    assert good  # the good job came after every bad one and still ran

    [entry] = await dead_entries(redis, prefix, "nohandler")
    assert entry["reason"] == "no_handler"
    assert "no_such_module" in entry["error"]["message"]
    assert _raw_job(entry) == orphan


async def test_job_from_a_lost_fetch_reply_is_returned_by_reconcile(
    redis: Redis, prefix: str, make_config: Any, run_worker: Any
) -> None:
    # reconcile_interval must exceed block_timeout + socket_timeout (a reply on its way).
    raw_config = build_config_dict(
        prefix,
        queue_table("q"),
        {"reconcile_interval": 0.7},
        redis={"block_timeout": 0.1, "socket_timeout": 0.5},
    )
    config = parse_config(raw_config)
    supervisor = run_worker(config)
    keys = QueueKeys(prefix, "q")
    await wait_for(lambda: redis.zscore(keys.consumers, config.worker.identity))
    # A BRPOPLPUSH whose reply never arrived leaves the job in our processing list
    # with nobody running it; this puts one there the same way.
    raw = job(prefix, "lost").encode()
    await redis.lpush(keys.processing(config.worker.identity), raw)
    await wait_for(lambda: redis.llen(f"{prefix}:rec:done"), within=5)
    assert [d["id"] for d in await records(redis, f"{prefix}:rec:done")] == ["lost"]
    assert await redis.llen(keys.processing(config.worker.identity)) == 0
    assert supervisor is not None


async def _llen_is(redis: Redis, key: str, n: int) -> bool:
    return int(await redis.llen(key)) == n


def _raw_job(entry: dict[str, Any]) -> bytes:
    if "job_b64" in entry:
        return base64.b64decode(entry["job_b64"])
    return str(entry["job"]).encode()


async def test_handler_raising_cancelled_error_itself_is_a_failed_attempt(
    redis: Redis, prefix: str, make_config: Any, run_worker: Any
) -> None:
    config = make_config(
        {"q": {"handler": "tests.support.handlers:raises_cancelled", "backoff_initial": 0.1}}
    )
    await push(redis, prefix, "q", job(prefix, "c1"))
    run_worker(config)
    await wait_for(lambda: _llen_is(redis, f"{prefix}:rec", 2), within=5)
    assert [r["attempt"] for r in await records(redis, f"{prefix}:rec")] == [1, 2]
    keys = QueueKeys(prefix, "q")
    await wait_for(lambda: _llen_is(redis, keys.processing(config.worker.identity), 0))
    assert await redis.llen(keys.dead) == 0


async def test_anything_raised_before_the_handler_dead_letters_the_item_once(
    redis: Redis,
    prefix: str,
    make_config: Any,
    run_worker: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Left in the processing list, such an item would come back through reconcile forever.
    real = consumer_module.decode_item
    calls: list[bytes] = []

    def flaky(item: bytes, **kwargs: Any) -> Any:
        calls.append(item)
        if b"explode" in item:
            raise RuntimeError("nobody foresaw this")
        return real(item, **kwargs)

    monkeypatch.setattr(consumer_module, "decode_item", flaky)
    # reconcile_interval must exceed block_timeout + socket_timeout (a reply on its way).
    raw_config = build_config_dict(
        prefix,
        queue_table("q"),
        {"reconcile_interval": 0.7},
        redis={"block_timeout": 0.1, "socket_timeout": 0.5},
    )
    config = parse_config(raw_config)
    boom = await push(redis, prefix, "q", job(prefix, "explode"))
    # A producer's enqueued_at of 400 digits is a JSON number, but no float: it used to
    # raise while the pickup time was computed.
    huge = await push(redis, prefix, "q", b'{"id":"huge","enqueued_at":' + b"9" * 400 + b"}")
    await push(redis, prefix, "q", job(prefix, "after"))
    run_worker(config)
    keys = QueueKeys(prefix, "q")
    await wait_for(lambda: redis.llen(f"{prefix}:rec:done"), within=5)
    await wait_for(lambda: _llen_is(redis, keys.dead, 2), within=5)
    await asyncio.sleep(1.6)  # two reconcile passes: nothing comes back
    entries = {_raw_job(e): e for e in await dead_entries(redis, prefix, "q")}
    assert set(entries) == {boom, huge}
    assert entries[boom]["reason"] == "invalid_json"
    assert entries[boom]["error"] == {
        "type": "BadJob",
        "message": "could not be read: RuntimeError: nobody foresaw this",
    }
    assert entries[huge]["reason"] == "invalid_field"
    assert "enqueued_at" in entries[huge]["error"]["message"]
    assert calls.count(boom) == 1
    assert await redis.llen(keys.processing(config.worker.identity)) == 0
    assert await redis.llen(keys.wait) == 0
