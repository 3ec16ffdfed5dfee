"""A 429 that never ends does not hold a job forever (issue 9, item 5): the real content
handler, the real Anthropic SDK, and a fake that answers every call with 429."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
from redis.asyncio import Redis

from tests.fakes.ai_server import FakeAI, Reply
from tests.handlers.support import create_brand, create_idea, create_request, push, wait_dead

Q = "content-generation"


async def test_a_429_forever_is_dead_lettered_as_deferred_too_long(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    brand_id = await create_brand(db)
    row_id = await create_request(db, brand_id, await create_idea(db, brand_id))
    # retry-after 0.2 s is raised to the 1 s floor: a tight loop of paid-for refusals is
    # impossible even against a misbehaving upstream.
    too_many = Reply.error(429, "rate_limit_error", "slow down", headers={"retry-after": "0.2"})
    fake_ai.script("messages", *[too_many] * 20)
    run_worker(make_app_config(queues={"max_deferrals": 3, "max_attempts": 3}))
    started = time.monotonic()
    await push(redis, prefix, Q, "forever", content_queue_id=str(row_id))

    [entry] = await wait_dead(redis, prefix, Q)
    took = time.monotonic() - started
    assert entry["reason"] == "deferred_too_long"
    assert entry["error"]["type"] == "DeferredTooLong"
    assert "deferred 4 times" in entry["error"]["message"]
    assert "429" in entry["error"]["message"]  # the last error is kept
    assert entry["attempts"] == 1, "a deferral spends no attempt"
    # 3 deferrals of at least the 1 s floor each, then the 4th refusal is the last call.
    assert fake_ai.count("messages") == 4
    assert took >= 3.0
