"""research end to end: merged research JSON, scores, idempotency, failures."""

from __future__ import annotations

from typing import Any

import asyncpg
from redis.asyncio import Redis

from tests.conftest import plant_dying_job
from tests.fakes.ai_server import FakeAI, Reply
from tests.handlers.support import create_brand, create_idea, push, wait_dead, wait_status

Q = "research"

KEYWORDS = {
    "keywords": [
        {
            "keyword": "heat pumps",
            "monthly_searches": 1000,
            "difficulty": 60,
            "relevance": 90,
            "intent": "informational",
        },
        {
            "keyword": "cold climate heat pump",
            "monthly_searches": 100,
            "difficulty": 40,
            "relevance": 70,
            "intent": "commercial",
        },
    ]
}
TRENDS = {
    "trends": [
        {"topic": "heat pump grants", "momentum": 60, "relevance": 80, "evidence": "news"},
        {"topic": "gas boiler bans", "momentum": 20, "relevance": 60, "evidence": "laws"},
    ]
}
COMPETITORS = {
    "competitors": [
        {"name": "A", "url": "https://a.example", "strength": 80, "angle": "x", "gap": "y"},
    ],
    "saturation": 50,
}


async def until_researched(db: asyncpg.Pool, idea_id: Any, job_id: str) -> asyncpg.Record:
    async def done() -> bool:
        return bool(await db.fetchval("SELECT 1 FROM research_runs WHERE job_id = $1", job_id))

    from tests.conftest import wait_for

    await wait_for(done, within=15)
    row: asyncpg.Record = await db.fetchrow("SELECT * FROM ideas WHERE id = $1", idea_id)
    return row


async def test_keywords_then_trends_are_merged_and_scored(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    brand_id = await create_brand(db)
    idea_id = await create_idea(db, brand_id)
    fake_ai.script("messages", Reply.good(KEYWORDS), Reply.good(TRENDS))
    run_worker(make_app_config())
    await push(redis, prefix, Q, "r-kw", idea_id=str(idea_id), type="keywords")
    idea = await until_researched(db, idea_id, "r-kw")
    assert idea["status"] == "researched"
    assert set(idea["research"]) == {"keywords"}
    assert idea["research"]["keywords"]["data"] == KEYWORDS
    assert idea["research"]["keywords"]["job_id"] == "r-kw"
    # keywords only: demand = 20*log10(1+550) = 54.8 -> virality 55; fit = 80 and
    # overlap = 50 (1 of the idea's 2 keywords) -> relevance 71; difficulty 50 -> 50.
    assert (idea["virality_score"], idea["relevance_score"], idea["competition_score"]) == (
        55,
        71,
        50,
    )
    first_at = idea["researched_at"]

    await push(redis, prefix, Q, "r-tr", idea_id=str(idea_id), type="trends")
    idea = await until_researched(db, idea_id, "r-tr")
    assert set(idea["research"]) == {"keywords", "trends"}  # keywords kept
    assert idea["research"]["trends"]["data"] == TRENDS
    # momentum = mean(80, 60) = 70 -> virality 0.6*70 + 0.4*54.8 = 63.9 -> 64;
    # fit = mean(90, 70, 80, 60) = 75 -> relevance 0.7*75 + 0.3*50 = 67.5 -> 68.
    assert (idea["virality_score"], idea["relevance_score"]) == (64, 68)
    assert idea["researched_at"] >= first_at
    runs = await db.fetch("SELECT research_type, scores FROM research_runs ORDER BY created_at")
    assert [r["research_type"] for r in runs] == ["keywords", "trends"]
    assert runs[1]["scores"]["virality"] == 64
    first = fake_ai.bodies("messages")[0]
    assert "Heat pumps in cold climates" in first["messages"][0]["content"]
    assert "keywords" in first["output_config"]["format"]["schema"]["properties"]


async def test_full_research_fills_every_section_in_one_call(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    brand_id = await create_brand(db, default_provider="openai")
    idea_id = await create_idea(db, brand_id)
    fake_ai.script("chat", Reply.good({**KEYWORDS, **TRENDS, **COMPETITORS}))
    run_worker(make_app_config())
    await push(redis, prefix, Q, "r-full", idea_id=str(idea_id), type="full")
    idea = await until_researched(db, idea_id, "r-full")
    assert set(idea["research"]) == {"keywords", "competitors", "trends"}
    assert idea["research"]["competitors"]["data"] == COMPETITORS
    assert idea["research"]["competitors"]["provider"] == "openai"
    # difficulty 50, pressure 80 * min(1, 1/5) = 16, saturation 50 -> 0.4*50+0.4*16+0.2*50
    assert idea["competition_score"] == 36
    assert fake_ai.count("chat") == 1


async def test_a_retried_research_job_calls_nobody(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    brand_id = await create_brand(db)
    idea_id = await create_idea(db, brand_id)
    other = await create_idea(db, brand_id, title="Another idea")
    fake_ai.script("messages", Reply.good(KEYWORDS), Reply.good(TRENDS))
    run_worker(make_app_config())
    await push(redis, prefix, Q, "r-once", idea_id=str(idea_id), type="keywords")
    await until_researched(db, idea_id, "r-once")
    await push(redis, prefix, Q, "r-once", idea_id=str(idea_id), type="keywords")
    await push(redis, prefix, Q, "r-other", idea_id=str(other), type="trends")
    await until_researched(db, other, "r-other")
    assert fake_ai.count("messages") == 2
    assert await db.fetchval("SELECT count(*) FROM research_runs") == 2


async def test_a_failed_research_marks_the_idea(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    brand_id = await create_brand(db)
    idea_id = await create_idea(db, brand_id)
    fake_ai.script("messages", Reply.error(400, "invalid_request_error", "bad schema"))
    run_worker(make_app_config())
    await push(redis, prefix, Q, "r-bad", idea_id=str(idea_id), type="trends")
    idea = await wait_status(db, "ideas", idea_id, ("failed",))
    assert idea["error"] == "anthropic 400 invalid_request_error: bad schema"
    assert idea["researched_at"] is None
    await push(redis, prefix, Q, "r-type", idea_id=str(idea_id), type="vibes")
    entries = await wait_dead(redis, prefix, Q, count=2)
    assert {e["id"]: e["reason"] for e in entries} == {
        "r-bad": "permanent_error",
        "r-type": "permanent_error",
    }


async def test_a_research_job_whose_processes_keep_dying_fails_its_idea(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    brand_id = await create_brand(db)
    idea_id = await create_idea(db, brand_id)
    # The idea as a process left it when it died in the middle of the job ...
    await db.execute(
        "UPDATE ideas SET status = 'researching', research_job_id = 'r-killer' WHERE id = $1",
        idea_id,
    )
    # ... for the last time it may: the next recovery dead-letters the job as poison.
    config = make_app_config()
    job = {"id": "r-killer", "idea_id": str(idea_id), "type": "trends"}
    deaths = await plant_dying_job(redis, config, Q, job)
    # An idea another job is researching now is left alone.
    other = await create_idea(db, brand_id, title="Another idea")
    await db.execute(
        "UPDATE ideas SET status = 'researching', research_job_id = 'r-other' WHERE id = $1",
        other,
    )
    run_worker(config)
    idea = await wait_status(db, "ideas", idea_id, ("failed",))
    assert idea["error"] == f"the process running this job died {deaths + 1} times (limit {deaths})"
    assert idea["error_detail"] == {"type": "ProcessDied", "reason": "poison", "attempt": 1}
    [entry] = await wait_dead(redis, prefix, Q)
    assert entry["reason"] == "poison"
    assert fake_ai.count("messages") == 0
    assert await db.fetchval("SELECT status FROM ideas WHERE id = $1", other) == "researching"


async def test_a_last_research_attempt_past_the_queue_timeout_fails_the_idea(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    brand_id = await create_brand(db)
    idea_id = await create_idea(db, brand_id)
    fake_ai.script("messages", Reply.slow(3.0))
    config = make_app_config(
        providers={"timeout": 10.0}, queues={"timeout": 0.5, "max_attempts": 1}
    )
    run_worker(config)
    await push(redis, prefix, Q, "r-slow", idea_id=str(idea_id), type="keywords")
    idea = await wait_status(db, "ideas", idea_id, ("failed", "researched"))
    assert idea["status"] == "failed"
    assert idea["error"] == "handler ran past the queue timeout of 0.5s"
    assert idea["error_detail"] == {"type": "JobTimeout", "reason": "max_attempts", "attempt": 1}
    assert idea["research_job_id"] == "r-slow"
    # The call it was waiting for is in the ledger as interrupted: it may have been paid.
    [call] = await db.fetch("SELECT outcome FROM provider_calls")
    assert call["outcome"] == "interrupted"


async def test_a_failed_re_research_keeps_the_earlier_research_and_scores(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
) -> None:
    brand_id = await create_brand(db)
    idea_id = await create_idea(db, brand_id)
    fake_ai.script(
        "messages",
        Reply.good(KEYWORDS),
        Reply.error(500, "api_error", "Internal server error"),
        Reply.error(500, "api_error", "Internal server error"),
    )
    run_worker(make_app_config(queues={"max_attempts": 2}))
    await push(redis, prefix, Q, "r-first", idea_id=str(idea_id), type="keywords")
    before = await until_researched(db, idea_id, "r-first")
    # Researched again with a new job id: it pays anew (the first reply was used up) and
    # fails for good.
    await push(redis, prefix, Q, "r-again", idea_id=str(idea_id), type="keywords")
    after = await wait_status(db, "ideas", idea_id, ("failed",))
    assert after["error"] == "anthropic 500 api_error: Internal server error"
    assert after["error_detail"]["reason"] == "max_attempts"
    assert after["research"] == before["research"]
    scores = ("virality_score", "relevance_score", "competition_score", "researched_at")
    assert [after[s] for s in scores] == [before[s] for s in scores]
    assert fake_ai.count("messages") == 3
