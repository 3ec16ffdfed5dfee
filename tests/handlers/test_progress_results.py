"""Each real handler's steps and result, as an operator sees them: in the job's record, in
the queue's events stream, and in ``alchemy job`` (docs/schema.md, "Progress and results")."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis

from alchemy.ops.events import EventStream
from alchemy.ops.records import JobRecords
from alchemy.queue.admin import JobRecord, QueueAdmin
from alchemy.queue.keys import QueueKeys
from alchemy.storage.tokens import LinkSigner
from tests.conftest import wait_for
from tests.fakes.ai_server import FakeAI, Reply, png_bytes
from tests.handlers.support import (
    CONTENT_REPLY,
    create_brand,
    create_content_request,
    create_idea,
    push,
)
from tests.handlers.test_research import KEYWORDS
from tests.support.cli import alchemy_job

STEPS = ["loaded", "prompt built", "provider called", "saved"]


def start(run_worker: Any, config: Any, prefix: str) -> None:
    events = EventStream(prefix, identity=config.worker.identity)
    records = JobRecords(prefix)
    run_worker(config, observers=[events, records], extensions=[events, records])


async def finished(redis: Redis, prefix: str, queue: str, job_id: str) -> JobRecord:
    admin = QueueAdmin(redis, prefix=prefix)

    async def completed() -> JobRecord | None:
        record = await admin.record(queue, job_id)
        return record if record is not None and record["state"] == "completed" else None

    record: JobRecord = await wait_for(completed, within=20)
    return record


async def steps_in_stream(redis: Redis, prefix: str, queue: str, job_id: str) -> list[str]:
    async def written() -> list[dict[bytes, bytes]] | None:
        entries = [f for _, f in await redis.xrange(QueueKeys(prefix, queue).events)]
        mine = [f for f in entries if f.get(b"job_id") == job_id.encode()]
        return mine if any(f[b"event"] == b"completed" for f in mine) else None

    mine = await wait_for(written)
    done = next(f for f in mine if f[b"event"] == b"completed")
    assert b"result" in done
    return [f[b"step"].decode() for f in mine if f[b"event"] == b"progress"]


async def shown_by_cli(tmp_path: Path, prefix: str, queue: str, job_id: str) -> dict[str, str]:
    status, text = await alchemy_job(tmp_path, prefix, queue, job_id)
    assert status == 0, text
    lines = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key and not line.startswith(" "):
            lines[key] = value.strip()
    return lines


async def test_content_reports_its_steps_and_returns_its_ids(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
    tmp_path: Path,
) -> None:
    row_id = await create_content_request(db)
    fake_ai.script("messages", Reply.good(CONTENT_REPLY))
    start(run_worker, make_app_config(), prefix)
    await push(redis, prefix, "content-generation", "c-steps", content_queue_id=str(row_id))

    record = await finished(redis, prefix, "content-generation", "c-steps")
    content = await db.fetchrow("SELECT id, quality_score FROM contents WHERE job_id = 'c-steps'")
    result = record["result"]
    assert result == {
        "content_id": str(content["id"]),
        "media_job_id": None,
        "quality_score": content["quality_score"],
        "provider": "anthropic",
        "model": "claude-sonnet-5-5",
        "already_saved": False,
    }
    assert (record["progress"], record["step"]) == (0.9, "saved")
    assert await steps_in_stream(redis, prefix, "content-generation", "c-steps") == STEPS
    shown = await shown_by_cli(tmp_path, prefix, "content-generation", "c-steps")
    assert (shown["state"], shown["progress"], shown["step"]) == ("completed", "0.9", "saved")
    assert json.loads(shown["result"])["content_id"] == str(content["id"])

    # Pushed again: nothing is written or paid twice, and the result says whose it is.
    await push(redis, prefix, "content-generation", "c-steps", content_queue_id=str(row_id))

    async def again() -> JobRecord | None:
        record = await QueueAdmin(redis, prefix=prefix).record("content-generation", "c-steps")
        done = record is not None and record["state"] == "completed"
        return record if done and record["result"]["already_saved"] else None

    rerun = await wait_for(again, within=20)
    assert rerun["result"]["content_id"] == str(content["id"])
    assert rerun["step"] == "loaded"
    assert len(fake_ai.bodies("messages")) == 1


async def test_research_reports_its_steps_and_returns_its_scores(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
    tmp_path: Path,
) -> None:
    idea_id = await create_idea(db, await create_brand(db))
    fake_ai.script("messages", Reply.good(KEYWORDS))
    start(run_worker, make_app_config(), prefix)
    await push(redis, prefix, "research", "r-steps", idea_id=str(idea_id), type="keywords")

    record = await finished(redis, prefix, "research", "r-steps")
    run = await db.fetchrow("SELECT scores FROM research_runs WHERE job_id = 'r-steps'")
    result = record["result"]
    assert (result["idea_id"], result["research_type"]) == (str(idea_id), "keywords")
    assert result["scores"] == run["scores"]
    assert set(result["scores"]) == {"virality", "relevance", "competition", "parts"}
    assert result["already_saved"] is False
    assert (record["progress"], record["step"]) == (0.9, "saved")
    assert await steps_in_stream(redis, prefix, "research", "r-steps") == STEPS
    shown = await shown_by_cli(tmp_path, prefix, "research", "r-steps")
    assert (shown["state"], shown["step"]) == ("completed", "saved")
    assert json.loads(shown["result"])["scores"] == run["scores"]


async def test_media_reports_its_steps_and_returns_its_file(
    db: asyncpg.Pool,
    redis: Redis,
    prefix: str,
    fake_ai: FakeAI,
    make_app_config: Any,
    run_worker: Any,
    tmp_path: Path,
    media_dir: Path,
) -> None:
    brand_id = await create_brand(db)
    image = png_bytes(40, 30)
    fake_ai.script("images", Reply.image_b64(image))
    secret = "a-media-url-secret-0123456789"
    media = {"url_secret": secret, "public_url": "https://media.example/alchemy"}
    start(run_worker, make_app_config(media=media), prefix)
    await push(redis, prefix, "media-generation", "m-steps", brand_id=str(brand_id), prompt="a fox")

    record = await finished(redis, prefix, "media-generation", "m-steps")
    row = await db.fetchrow("SELECT id, storage_path FROM media WHERE job_id = 'm-steps'")
    result = record["result"]
    assert result == {
        "media_id": str(row["id"]),
        "kind": "image",
        "store": "local",
        "storage_path": row["storage_path"],
        "url": result["url"],
        "mime_type": "image/png",
        "bytes": len(image),
        "width": 40,
        "height": 30,
        "already_saved": False,
    }
    # A signed link to the listener's /media/{token} route (tests/http/test_media_route.py).
    base, _, token = result["url"].rpartition("/")
    assert base == "https://media.example/alchemy/media"
    link = LinkSigner(secret, "").check(token)
    assert (link.store, link.key) == ("local", row["storage_path"])
    assert uuid.UUID(result["media_id"])
    assert (media_dir / result["storage_path"]).read_bytes() == image
    assert await steps_in_stream(redis, prefix, "media-generation", "m-steps") == STEPS
    events = [f for _, f in await redis.xrange(QueueKeys(prefix, "media-generation").events)]
    [done] = [f for f in events if f[b"event"] == b"completed"]
    assert json.loads(done[b"result"])["url"] == result["url"]  # the events carry it too
    shown = await shown_by_cli(tmp_path, prefix, "media-generation", "m-steps")
    assert (shown["state"], shown["step"]) == ("completed", "saved")
    assert json.loads(shown["result"])["media_id"] == str(row["id"])
