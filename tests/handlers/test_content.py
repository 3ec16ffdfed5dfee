"""content-generation end to end: rows made and a job LPUSHed as the API does, a worker
running the real handler, the real SDKs talking to the fake."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from alchemy.queue.keys import QueueKeys
from tests.conftest import plant_dying_job, wait_for
from tests.fakes.ai_server import FakeAI, Reply
from tests.fakes.fixtures import ANTHROPIC_KEY
from tests.handlers.support import (
    CONTENT_REPLY,
    create_brand,
    create_idea,
    create_request,
    push,
    wait_dead,
    wait_status,
)

Q = "content-generation"


async def seed(db: asyncpg.Pool, **request: Any) -> Any:
    brand_id = await create_brand(db)
    idea_id = await create_idea(db, brand_id)
    return await create_request(db, brand_id, idea_id, **request)


async def test_a_queued_request_becomes_saved_content(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    row_id = await seed(db)
    fake_ai.script("messages", Reply.good(CONTENT_REPLY))
    run_worker(make_app_config())
    await push(redis, prefix, Q, "job-c1", content_queue_id=str(row_id))

    row = await wait_status(db, "content_queue", row_id, ("completed", "failed"))
    assert row["status"] == "completed"
    assert (row["attempts"], row["job_id"], row["error"]) == (1, "job-c1", None)
    assert row["completed_at"] is not None
    content = await db.fetchrow("SELECT * FROM contents WHERE content_queue_id = $1", row_id)
    assert content["job_id"] == "job-c1"
    assert content["title"] == CONTENT_REPLY["title"]
    assert content["body"] == CONTENT_REPLY["body"]
    assert content["hashtags"] == ["HeatPumps", "energy"]
    assert content["call_to_action"] == "Book a free home check today."
    assert content["extras"]["hook"] == CONTENT_REPLY["hook"]
    assert content["extras"]["repaired"] is False
    assert (content["provider"], content["model"]) == ("anthropic", "claude-sonnet-5-5")
    assert content["input_tokens"] == 100
    assert content["output_tokens"] > 0
    assert content["platform"] == "linkedin"
    assert 0 <= content["quality_score"] <= 100
    assert set(content["quality_breakdown"]) == {
        "readability",
        "length",
        "keywords",
        "hashtags",
        "call_to_action",
        "banned_phrases",
    }
    assert content["quality_breakdown"]["keywords"]["found"] == ["heat pumps", "energy"]
    [body] = fake_ai.bodies("messages")
    assert "plain-spoken expert" in body["system"]
    assert '"game changer"' in body["system"]
    assert "Heat pumps in cold climates" in body["messages"][0]["content"]
    assert await db.fetchval("SELECT count(*) FROM contents") == 1


@pytest.mark.parametrize(
    ("job", "row", "brand", "endpoint", "model"),
    [
        ({}, {}, {}, "messages", "claude-sonnet-5-5"),  # config
        ({}, {}, {"default_provider": "openai"}, "chat", "gpt-5.5"),  # brand
        ({}, {"model": "gpt-5.4-mini"}, {"default_provider": "anthropic"}, "chat", "gpt-5.4-mini"),
        ({"provider": "anthropic"}, {"provider": "openai"}, {}, "messages", "claude-sonnet-5-5"),
        ({"model": "claude-opus-5"}, {}, {}, "messages", "claude-opus-5"),
    ],
)
async def test_provider_is_chosen_by_job_then_row_then_brand_then_config(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
    job: dict[str, str],
    row: dict[str, str],
    brand: dict[str, str],
    endpoint: str,
    model: str,
) -> None:
    brand_id = await create_brand(db, **brand)
    idea_id = await create_idea(db, brand_id)
    row_id = await create_request(db, brand_id, idea_id, **row)
    run_worker(make_app_config())
    await push(redis, prefix, Q, "job-p", content_queue_id=str(row_id), **job)
    done = await wait_status(db, "content_queue", row_id, ("completed", "failed"))
    assert done["status"] == "completed", done["error"]
    assert [c.endpoint for c in fake_ai.calls] == [endpoint]
    assert fake_ai.calls[0].body["model"] == model
    saved = await db.fetchrow("SELECT provider, model FROM contents WHERE job_id = 'job-p'")
    assert saved["model"] == model


async def test_a_retried_job_whose_content_was_saved_calls_nobody(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    first = await seed(db)
    second = await seed(db)
    run_worker(make_app_config())
    await push(redis, prefix, Q, "job-once", content_queue_id=str(first))
    await wait_status(db, "content_queue", first, ("completed",))
    assert fake_ai.count("messages") == 1
    # The same job again, as after a crash between the commit and the acknowledgement;
    # then another job behind it (concurrency 1), to know the first has been handled.
    await push(redis, prefix, Q, "job-once", content_queue_id=str(first))
    await push(redis, prefix, Q, "job-next", content_queue_id=str(second))
    await wait_status(db, "content_queue", second, ("completed",))
    assert fake_ai.count("messages") == 2  # one for each row, none for the repeat
    assert (
        await db.fetchval("SELECT count(*) FROM contents WHERE content_queue_id = $1", first) == 1
    )
    assert await db.fetchval("SELECT count(*) FROM contents") == 2
    keys = QueueKeys(prefix, Q)
    assert await redis.llen(keys.dead) == 0


async def test_malformed_reply_is_repaired_once(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    row_id = await seed(db)
    fake_ai.script("messages", Reply.text("{oops"), Reply.good(CONTENT_REPLY))
    run_worker(make_app_config())
    await push(redis, prefix, Q, "job-r", content_queue_id=str(row_id))
    await wait_status(db, "content_queue", row_id, ("completed",))
    extras = await db.fetchval("SELECT extras FROM contents WHERE job_id = 'job-r'")
    assert extras["repaired"] is True
    assert fake_ai.count("messages") == 2


async def test_malformed_twice_fails_the_row_with_the_raw_text(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    row_id = await seed(db)
    fake_ai.script("messages", Reply.text("{oops"), Reply.text('{"title": 3}'))
    run_worker(make_app_config())
    await push(redis, prefix, Q, "job-bad", content_queue_id=str(row_id))
    row = await wait_status(db, "content_queue", row_id, ("failed",))
    assert "not valid after one repair" in row["error"]
    assert row["error_detail"]["raw_output"] == '{"title": 3}'
    assert row["error_detail"]["type"] == "OutputInvalidError"
    [entry] = await wait_dead(redis, prefix, Q)
    assert (entry["reason"], entry["attempts"]) == ("permanent_error", 1)
    assert fake_ai.count("messages") == 2
    assert await db.fetchval("SELECT count(*) FROM contents") == 0


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        (Reply.refusal("Not something I can write."), "refused: Not something I can write."),
        (
            Reply.error(400, "invalid_request_error", "max_tokens: too large"),
            "anthropic 400 invalid_request_error: max_tokens: too large",
        ),
        (
            Reply.error(401, "authentication_error", f"invalid x-api-key {ANTHROPIC_KEY}"),
            "anthropic 401 authentication_error: invalid x-api-key ***",
        ),
        (
            Reply.error(403, "permission_error", "not allowed"),
            "anthropic 403 permission_error: not allowed",
        ),
    ],
)
async def test_permanent_failures_fail_the_row_and_dead_letter_at_once(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
    reply: Reply,
    words: str,
) -> None:
    row_id = await seed(db)
    fake_ai.script("messages", reply)
    run_worker(make_app_config())
    await push(redis, prefix, Q, "job-perm", content_queue_id=str(row_id))
    row = await wait_status(db, "content_queue", row_id, ("failed",))
    assert words in row["error"]
    assert ANTHROPIC_KEY not in row["error"]
    [entry] = await wait_dead(redis, prefix, Q)
    assert entry["reason"] == "permanent_error"
    assert ANTHROPIC_KEY not in str(entry)
    assert fake_ai.count("messages") == 1


async def test_server_errors_and_timeouts_are_retried_then_succeed(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    row_id = await seed(db)
    fake_ai.script(
        "messages",
        Reply.error(529, "overloaded_error", "Overloaded"),
        Reply.slow(1.5),
        Reply.good(CONTENT_REPLY),
    )
    run_worker(make_app_config(providers={"timeout": 0.4}, queues={"max_attempts": 3}))
    await push(redis, prefix, Q, "job-flaky", content_queue_id=str(row_id))
    row = await wait_status(db, "content_queue", row_id, ("completed", "failed"))
    assert row["status"] == "completed"
    assert row["attempts"] == 3
    assert fake_ai.count("messages") == 3


async def test_server_errors_until_the_last_attempt_fail_the_row(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    row_id = await seed(db)
    fake_ai.script(
        "messages",
        Reply.error(500, "api_error", "Internal server error"),
        Reply.error(529, "overloaded_error", "Overloaded"),
    )
    run_worker(make_app_config(queues={"max_attempts": 2}))
    await push(redis, prefix, Q, "job-down", content_queue_id=str(row_id))
    [entry] = await wait_dead(redis, prefix, Q)
    assert (entry["reason"], entry["attempts"]) == ("max_attempts", 2)
    row = await wait_status(db, "content_queue", row_id, ("failed",))
    assert row["error"] == "anthropic 529 overloaded_error: Overloaded"
    assert row["attempts"] == 2


async def test_429_pauses_the_queue_then_the_job_succeeds(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    row_id = await seed(db)
    fake_ai.script(
        "messages",
        Reply.error(429, "rate_limit_error", "Too many requests", headers={"retry-after": "1"}),
        Reply.good(CONTENT_REPLY),
    )
    run_worker(make_app_config(queues={"max_attempts": 1}))
    await push(redis, prefix, Q, "job-429", content_queue_id=str(row_id))
    keys = QueueKeys(prefix, Q)
    paused_until_ms = await wait_for(lambda: redis.get(keys.paused_until), within=10)
    assert await redis.pttl(keys.paused_until) <= 1000  # the server's retry-after: 1 s
    assert int(paused_until_ms) > 0
    row = await wait_status(db, "content_queue", row_id, ("completed", "failed"))
    assert row["status"] == "completed"  # max_attempts=1: the pause spent no attempt
    calls = [c.at for c in fake_ai.calls]
    assert len(calls) == 2
    assert calls[1] - calls[0] >= 0.9


async def test_missing_row_or_idea_is_permanent_without_a_call(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    brand_id = await create_brand(db)
    orphan = await create_request(db, brand_id, None)
    run_worker(make_app_config())
    await push(redis, prefix, Q, "job-nr", content_queue_id="00000000-0000-0000-0000-000000000000")
    await push(redis, prefix, Q, "job-ni", content_queue_id=str(orphan))
    await push(redis, prefix, Q, "job-bad-id", content_queue_id="not-a-uuid")
    entries = await wait_dead(redis, prefix, Q, count=3)
    errors = {e["id"]: e["error"]["message"] for e in entries}
    assert "not found" in errors["job-nr"]
    assert "its idea is missing" in errors["job-ni"]
    assert "not a UUID" in errors["job-bad-id"]
    row = await wait_status(db, "content_queue", orphan, ("failed",))
    assert "idea is missing" in row["error"]
    assert fake_ai.calls == []


async def test_a_media_job_is_enqueued_for_the_new_content(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    row_id = await seed(db)
    fake_ai.script("messages", Reply.good(CONTENT_REPLY))
    run_worker(make_app_config())
    await push(redis, prefix, Q, "job-m", content_queue_id=str(row_id), media=True)
    media = await wait_status(db, "media", "job-m:media", ("completed", "failed"))
    assert media["status"] == "completed", media["error"]
    content_id = await db.fetchval("SELECT id FROM contents WHERE job_id = 'job-m'")
    assert media["content_id"] == content_id
    assert media["prompt"] == CONTENT_REPLY["image_prompt"]
    [image_call] = fake_ai.bodies("images")
    assert image_call["prompt"] == CONTENT_REPLY["image_prompt"]


async def test_offline_provider_needs_no_network(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    row_id = await seed(db, platform="twitter")
    config = make_app_config(
        providers={
            "text_provider": "offline",
            "image_provider": "offline",
            "anthropic_api_key": "",
            "openai_api_key": "",
        }
    )
    run_worker(config)
    await push(redis, prefix, Q, "job-off", content_queue_id=str(row_id), media=True)
    await wait_status(db, "content_queue", row_id, ("completed",))
    content = await db.fetchrow("SELECT * FROM contents WHERE job_id = 'job-off'")
    assert content["body"].startswith("[OFFLINE DRAFT]")
    assert (content["provider"], content["model"]) == ("offline", "offline-1")
    media = await wait_status(db, "media", "job-off:media", ("completed", "failed"))
    assert (media["status"], media["provider"], media["mime_type"]) == (
        "completed",
        "offline",
        "image/png",
    )
    assert fake_ai.calls == []


async def test_a_last_attempt_past_the_queue_timeout_fails_the_row(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    """The engine cancels the handler, which never sees a failure to record: the content
    module's end hook (``on_dead``), which the engine calls, marks the row instead."""
    row_id = await seed(db)
    fake_ai.script("messages", Reply.slow(3.0))
    config = make_app_config(
        providers={"timeout": 10.0}, queues={"timeout": 0.5, "max_attempts": 1}
    )
    run_worker(config)
    await push(redis, prefix, Q, "job-slow", content_queue_id=str(row_id))
    row = await wait_status(db, "content_queue", row_id, ("completed", "failed"))
    assert row["status"] == "failed"
    assert row["error"] == "handler ran past the queue timeout of 0.5s"
    assert row["error_detail"] == {"type": "JobTimeout", "reason": "max_attempts", "attempt": 1}
    [entry] = await wait_dead(redis, prefix, Q)
    assert entry["error"]["type"] == "JobTimeout"


async def test_a_job_whose_processes_keep_dying_fails_its_row(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    row_id = await seed(db)
    # The row as a process left it when it died in the middle of the job ...
    await db.execute(
        "UPDATE content_queue SET status = 'processing', job_id = 'job-killer' WHERE id = $1",
        row_id,
    )
    # ... for the last time it may: the next recovery dead-letters the job as poison.
    config = make_app_config()
    job = {"id": "job-killer", "content_queue_id": str(row_id)}
    deaths = await plant_dying_job(redis, config, Q, job)
    # A row another job is still working on is left alone.
    other = await seed(db)
    await db.execute(
        "UPDATE content_queue SET status = 'processing', job_id = 'job-other' WHERE id = $1",
        other,
    )
    run_worker(config)
    row = await wait_status(db, "content_queue", row_id, ("completed", "failed"))
    assert row["error"] == f"the process running this job died {deaths + 1} times (limit {deaths})"
    assert row["error_detail"] == {"type": "ProcessDied", "reason": "poison", "attempt": 1}
    [entry] = await wait_dead(redis, prefix, Q)
    assert entry["reason"] == "poison"
    assert fake_ai.count("messages") == 0
    assert (
        await db.fetchval("SELECT status FROM content_queue WHERE id = $1", other) == "processing"
    )
