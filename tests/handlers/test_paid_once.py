"""Every paid call once, in one worker process: the ledger row of each call, the lease that
makes a job delivered twice pay once, follow-ups pushed once, and job data or replies that
PostgreSQL would refuse dealt with before (or without) paying again."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from alchemy.providers.prices import shipped_prices
from alchemy.queue.keys import QueueKeys
from tests.conftest import wait_for
from tests.fakes.ai_server import FakeAI, Reply
from tests.handlers.support import (
    CONTENT_REPLY,
    create_content_request,
    drained,
    push,
    wait_dead,
    wait_status,
)

Q = "content-generation"
MEDIA = "media-generation"


async def test_each_call_is_in_the_ledger_with_its_usage_cost_and_request_id(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    row_id = await create_content_request(db)
    fake_ai.script("messages", Reply.text("{oops"), Reply.good(CONTENT_REPLY))
    run_worker(make_app_config())
    await push(redis, prefix, Q, "job-l", content_queue_id=str(row_id))
    await wait_status(db, "content_queue", row_id, ("completed",))
    calls = await db.fetch("SELECT * FROM provider_calls ORDER BY started_at")
    assert [str(c["id"]) for c in calls] == fake_ai.call_ids()  # the header is the row's id
    content = await db.fetchrow("SELECT * FROM contents WHERE job_id = 'job-l'")
    price = shipped_prices().price_of("claude-sonnet-5-5")
    assert price is not None
    for call in calls:
        assert (call["job_id"], call["work_key"], call["queue"]) == (
            "job-l",
            f"content:{row_id}",
            Q,
        )
        assert (call["provider"], call["model"], call["outcome"]) == (
            "anthropic",
            "claude-sonnet-5-5",
            "ok",
        )
        assert call["brand_id"] == content["brand_id"]
        assert call["request_id"].startswith("req_fake")
        assert call["cost_usd"] == price.cost(call["input_tokens"], call["output_tokens"], 0)
        assert call["consumed_by"] == "job-l"  # used up by the committed content
        assert call["finished_at"] >= call["started_at"]
    assert [c["reply"]["text"] for c in calls] == ["{oops", json.dumps(CONTENT_REPLY)]
    assert sum(c["input_tokens"] for c in calls) == content["input_tokens"] == 200
    assert sum(c["output_tokens"] for c in calls) == content["output_tokens"]
    lease = await db.fetchrow("SELECT * FROM work_leases WHERE work_key = $1", f"content:{row_id}")
    assert lease["owner_token"] is None  # released with the commit
    assert lease["job_id"] == "job-l"


async def test_the_same_job_twice_at_once_in_one_process_pays_once(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    row_id = await create_content_request(db)
    fake_ai.delay = 0.5
    # A lease shorter than the worst case (warned), but far longer than this call.
    config = make_app_config(providers={"work_lease": 3.0}, queues={"concurrency": 2})
    run_worker(config)
    payload = json.dumps({"id": "job-2x", "content_queue_id": str(row_id)})
    # The second copy finds the lease held by the first (a live run of this process) and is
    # deferred; it comes back after the commit and finds the content saved. Watched from
    # the push on: on a loaded machine the deferral may be over before the commit is seen.
    deferred = asyncio.create_task(
        wait_for(lambda: redis.zcard(QueueKeys(prefix, Q).delayed), within=20)
    )
    await redis.lpush(QueueKeys(prefix, Q).wait, payload, payload)
    await wait_status(db, "content_queue", row_id, ("completed",))
    await deferred
    await wait_for(lambda: drained(redis, prefix, Q), within=20, interval=0.2)
    assert fake_ai.count("messages") == 1
    assert await db.fetchval("SELECT count(*) FROM contents") == 1
    assert await db.fetchval("SELECT count(*) FROM provider_calls") == 1
    assert await redis.llen(QueueKeys(prefix, Q).dead) == 0


async def test_a_committed_content_job_run_again_pushes_its_media_job_once(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    """While the media job waits (its queue paused), the content job runs twice more: under
    its own id and under another. Neither pays nor pushes the media job again."""
    row_id = await create_content_request(db)
    media_keys = QueueKeys(prefix, MEDIA)
    await redis.set(media_keys.paused, 1)
    run_worker(make_app_config())
    await push(redis, prefix, Q, "job-f", content_queue_id=str(row_id), media=True)
    await wait_status(db, "content_queue", row_id, ("completed",))
    await wait_for(lambda: redis.llen(media_keys.wait))
    await push(redis, prefix, Q, "job-f", content_queue_id=str(row_id), media=True)
    await push(redis, prefix, Q, "job-f-again", content_queue_id=str(row_id), media=True)
    await wait_for(lambda: drained(redis, prefix, Q), within=10, interval=0.1)
    assert await redis.llen(media_keys.wait) == 1
    assert await redis.exists(media_keys.enqueued("job-f:media")) == 1
    await redis.delete(media_keys.paused)
    media = await wait_status(db, "media", "job-f:media", ("completed", "failed"))
    assert media["status"] == "completed", media["error"]
    await wait_for(lambda: drained(redis, prefix, MEDIA), within=10, interval=0.1)
    assert (fake_ai.count("messages"), fake_ai.count("images")) == (1, 1)
    assert await db.fetchval("SELECT count(*) FROM media") == 1
    assert await db.fetchval("SELECT count(*) FROM contents") == 1


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"model": "claude-sonnet-5-5\u0000"}, "job data: model holds a NUL character"),
        ({"media": {"kind": "image", "prompt": "a\u0000b"}}, "media.prompt holds a NUL character"),
        ({"media": {"size": float("nan")}}, "media.size is nan"),
        ({"words": float("inf")}, "words is inf"),
        ({"media": 5}, "'media' must be true, false or an object"),
        ({"media": {"kind": ["image"]}}, "'media.kind' must be a string"),
        ({"media": {"kind": "poster"}}, "'media.kind' must be one of image, thumbnail"),
        ({"media": True, "id": "x" * 252}, "over the 256-character limit"),
    ],
)
async def test_job_data_that_cannot_be_stored_or_used_is_refused_before_any_call(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
    data: dict[str, Any],
    words: str,
) -> None:
    row_id = await create_content_request(db)
    run_worker(make_app_config())
    job = {"id": "job-bad", "content_queue_id": str(row_id), **data}
    # json.dumps writes NaN and Infinity as the bare words, as a careless producer would.
    await redis.lpush(QueueKeys(prefix, Q).wait, json.dumps(job))
    [entry] = await wait_dead(redis, prefix, Q)
    assert entry["reason"] == "permanent_error"
    assert words in entry["error"]["message"]
    row = await wait_status(db, "content_queue", row_id, ("failed",))
    assert words in row["error"]
    assert fake_ai.calls == []
    assert await db.fetchval("SELECT count(*) FROM provider_calls") == 0


async def test_a_reply_holding_nul_is_stored_cleaned_after_one_call(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    row_id = await create_content_request(db)
    reply = {**CONTENT_REPLY, "title": "Heat\u0000 pumps", "hook": "\u0000Still cold?"}
    fake_ai.script("messages", Reply.good(reply))
    run_worker(make_app_config())
    await push(redis, prefix, Q, "job-nul", content_queue_id=str(row_id))
    row = await wait_status(db, "content_queue", row_id, ("completed", "failed"))
    assert row["status"] == "completed", row["error"]
    content = await db.fetchrow("SELECT title, extras FROM contents WHERE job_id = 'job-nul'")
    assert content["title"] == "Heat pumps"
    assert content["extras"]["hook"] == "Still cold?"
    assert fake_ai.count("messages") == 1
    [call] = await db.fetch("SELECT outcome, reply FROM provider_calls")
    assert call["outcome"] == "ok"
    assert "\\u0000" in call["reply"]["text"]  # the JSON escape, kept as text: storable


async def test_a_refusal_is_recorded_as_paid_and_not_paid_again(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    row_id = await create_content_request(db)
    fake_ai.script("messages", Reply.refusal("Not this."))
    run_worker(make_app_config())
    await push(redis, prefix, Q, "job-no", content_queue_id=str(row_id))
    await wait_dead(redis, prefix, Q)
    [call] = await db.fetch("SELECT * FROM provider_calls")
    assert (call["outcome"], call["input_tokens"]) == ("refused", 100)
    assert call["cost_usd"] > Decimal(0)
    assert "refused: Not this." in call["error"]
    assert fake_ai.count("messages") == 1


async def test_an_offline_call_is_in_the_ledger_at_no_cost(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    """The offline provider answers in-process and is free: its call gets one ledger row,
    written with its reply."""
    row_id = await create_content_request(db)
    offline = {"text_provider": "offline", "anthropic_api_key": "", "openai_api_key": ""}
    run_worker(make_app_config(providers={**offline, "image_provider": "offline"}))
    await push(redis, prefix, Q, "job-off", content_queue_id=str(row_id))
    await wait_status(db, "content_queue", row_id, ("completed",))
    [call] = await db.fetch("SELECT * FROM provider_calls")
    assert (call["provider"], call["model"], call["outcome"]) == ("offline", "offline-1", "ok")
    assert call["cost_usd"] == 0
    assert call["consumed_by"] == "job-off"
    assert call["reply"]["text"].startswith("{")
    assert fake_ai.calls == []
