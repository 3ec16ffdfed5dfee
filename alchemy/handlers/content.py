"""content-generation: write one piece of content for a ``content_queue`` row.

Job data (docs/schema.md, "Job data")::

    {"content_queue_id": "<uuid>",          required: the row the API created
     "provider": "anthropic|openai|offline", optional: overrides row, brand and config
     "model": "<model id>",                  optional
     "media": true | {"kind": "image|thumbnail", "size": "...", "prompt": "..."}}
                                             optional: enqueue a media job for the result

The job id is the idempotency key: a job whose content is already saved (``contents.job_id``)
finishes without calling the provider again, and a row that already has content is never
written twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from alchemy.content.platforms import Platform, platform_for
from alchemy.content.prompts import Brand, Idea, content_prompt
from alchemy.content.quality import Draft, Quality, quality_score
from alchemy.content.schemas import ContentDraft
from alchemy.errors import PermanentError
from alchemy.handlers.common import (
    fail_rows_the_engine_gives_up_on,
    run_or_mark_failed,
    str_field,
    uuid_field,
)
from alchemy.providers.base import TEXT_PROVIDERS, TextRequest
from alchemy.providers.registry import choose_text
from alchemy.providers.structured import Structured, generate_structured
from alchemy.queue.job import Job
from alchemy.services import Services, current_services

log = structlog.get_logger("alchemy.handlers.content")

MEDIA_QUEUE = "media-generation"

LOAD_ROW = """
SELECT q.id, q.status, q.platform, q.provider, q.model, q.options, q.idea_id,
       b.id AS brand_id, b.name, b.voice, b.tone, b.audience, b.guidelines,
       b.banned_phrases, b.default_provider, b.default_model,
       i.title, i.description, i.keywords, i.research
FROM content_queue q
JOIN brands b ON b.id = q.brand_id
LEFT JOIN ideas i ON i.id = q.idea_id
WHERE q.id = $1
"""
MARK_PROCESSING = """
UPDATE content_queue
SET status = 'processing', attempts = attempts + 1, job_id = $2, error = NULL,
    error_detail = NULL, started_at = coalesce(started_at, now()), updated_at = now()
WHERE id = $1
"""
INSERT_CONTENT = """
INSERT INTO contents (content_queue_id, brand_id, idea_id, platform, title, body, hashtags,
                      call_to_action, extras, quality_score, quality_breakdown, provider,
                      model, input_tokens, output_tokens, job_id, media_job_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
ON CONFLICT DO NOTHING
RETURNING id
"""
MARK_COMPLETED = """
UPDATE content_queue
SET status = 'completed', error = NULL, error_detail = NULL, completed_at = now(),
    updated_at = now()
WHERE id = $1
"""
MARK_FAILED = """
UPDATE content_queue
SET status = 'failed', error = $2, error_detail = $3, updated_at = now()
WHERE id = $1 AND status <> 'completed'
"""
MARK_FAILED_BY_ENGINE = """
UPDATE content_queue
SET status = 'failed', error = $2, error_detail = $3, updated_at = now()
WHERE job_id = $1 AND status = 'processing'
"""
EXISTING = """
SELECT id, media_job_id, extras FROM contents WHERE job_id = $1 OR content_queue_id = $2
ORDER BY (job_id = $1) DESC LIMIT 1
"""


@dataclass(frozen=True, slots=True)
class ContentJob:
    row_id: uuid.UUID
    provider: str | None
    model: str | None
    media: Mapping[str, Any] | None

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> ContentJob:
        row_id = uuid_field(data, "content_queue_id")
        assert row_id is not None
        return cls(
            row_id=row_id,
            provider=str_field(data, "provider", TEXT_PROVIDERS),
            model=str_field(data, "model"),
            media=media_request(data.get("media")),
        )


def media_request(value: Any) -> Mapping[str, Any] | None:
    if value is None or value is False:
        return None
    if value is True:
        return {"kind": "image"}
    if isinstance(value, Mapping):
        return {"kind": "image", **value}
    raise PermanentError("job data 'media' must be true or an object")


async def handle(job: Job) -> None:
    services = current_services()
    request = ContentJob.parse(job.data)

    async def mark_failed(message: str, detail: dict[str, Any]) -> None:
        pool = await services.db()
        await pool.execute(MARK_FAILED, request.row_id, message, detail)

    await run_or_mark_failed(
        job,
        services.config,
        lambda: generate_content(job, request, services),
        mark_failed,
        what="mark_content_failed",
    )


fail_rows_the_engine_gives_up_on(
    f"{__name__}:handle", MARK_FAILED_BY_ENGINE, what="mark_content_failed_by_engine"
)


async def generate_content(job: Job, request: ContentJob, services: Services) -> None:
    pool = await services.db()
    existing = await pool.fetchrow(EXISTING, job.id, request.row_id)
    if existing is not None:
        log.info("content_already_saved", content_id=str(existing["id"]))
        await pool.execute(MARK_COMPLETED, request.row_id)
        await enqueue_media_if_missing(services, pool, existing)
        return
    row = await pool.fetchrow(LOAD_ROW, request.row_id)
    if row is None:
        raise PermanentError(f"content_queue row {request.row_id} not found")
    if row["title"] is None:
        raise PermanentError(f"content_queue row {request.row_id}: its idea is missing")
    platform = platform_for(row["platform"])
    options = row["options"] or {}
    media = request.media or media_request(options.get("media"))
    await pool.execute(MARK_PROCESSING, request.row_id, job.id)

    brand, idea = brand_of(row), idea_of(row)
    result = await write(services, request, row, brand, idea, platform, options)
    quality = score(result.value, platform, idea, brand)
    media_job_id = f"{job.id}:media" if media else None
    content_id = await save(pool, job, row, platform, result, quality, media, media_job_id)
    log.info("content_saved", content_id=str(content_id), quality=quality.score)
    if media and media_job_id:
        await services.producer.enqueue(
            MEDIA_QUEUE, {**media, "content_id": str(content_id)}, id=media_job_id
        )


async def write(
    services: Services,
    request: ContentJob,
    row: asyncpg.Record,
    brand: Brand,
    idea: Idea,
    platform: Platform,
    options: Mapping[str, Any],
) -> Structured[Any]:
    choice = choose_text(
        [
            ("job", {"provider": request.provider, "model": request.model}),
            ("content_queue row", {"provider": row["provider"], "model": row["model"]}),
            ("brand", {"provider": row["default_provider"], "model": row["default_model"]}),
        ],
        services.config.providers,
    )
    system, prompt = content_prompt(brand, idea, platform, options)
    text_request = TextRequest(system, prompt, ContentDraft, choice.model, subject=idea.title)
    return await generate_structured(services.providers.text(choice.provider), text_request)


def brand_of(row: asyncpg.Record) -> Brand:
    return Brand(
        name=row["name"],
        voice=row["voice"],
        tone=row["tone"],
        audience=row["audience"],
        guidelines=row["guidelines"],
        banned_phrases=tuple(row["banned_phrases"] or ()),
    )


def idea_of(row: asyncpg.Record) -> Idea:
    return Idea(
        title=row["title"],
        description=row["description"] or "",
        keywords=tuple(row["keywords"] or ()),
        research=row["research"] or {},
    )


def clean_hashtags(tags: list[str]) -> list[str]:
    cleaned = (tag.strip().lstrip("#").replace(" ", "") for tag in tags)
    return list(dict.fromkeys(tag for tag in cleaned if tag))


def score(draft: ContentDraft, platform: Platform, idea: Idea, brand: Brand) -> Quality:
    return quality_score(
        Draft(draft.title, draft.body, clean_hashtags(draft.hashtags), draft.call_to_action),
        platform,
        idea.keywords,
        brand.banned_phrases,
    )


async def save(
    pool: asyncpg.Pool,
    job: Job,
    row: asyncpg.Record,
    platform: Platform,
    result: Structured[Any],
    quality: Quality,
    media: Mapping[str, Any] | None,
    media_job_id: str | None,
) -> uuid.UUID:
    """The content and the row's completion, in one transaction."""
    draft: ContentDraft = result.value
    extras: dict[str, Any] = {
        "hook": draft.hook,
        "image_prompt": draft.image_prompt,
        "repaired": result.repaired,
    }
    if media:
        extras["media_request"] = dict(media)
    async with pool.acquire() as conn, conn.transaction():
        content_id = await conn.fetchval(
            INSERT_CONTENT,
            row["id"],
            row["brand_id"],
            row["idea_id"],
            platform.name,
            draft.title,
            draft.body,
            clean_hashtags(draft.hashtags),
            draft.call_to_action,
            extras,
            quality.score,
            quality.breakdown,
            result.provider,
            result.model,
            result.usage.input_tokens,
            result.usage.output_tokens,
            job.id,
            media_job_id,
        )
        if content_id is None:  # a concurrent run of the same job or row saved first
            content_id = await conn.fetchval(EXISTING_ID, job.id, row["id"])
        await conn.execute(MARK_COMPLETED, row["id"])
    saved: uuid.UUID = content_id
    return saved


EXISTING_ID = "SELECT id FROM contents WHERE job_id = $1 OR content_queue_id = $2 LIMIT 1"


async def enqueue_media_if_missing(
    services: Services, pool: asyncpg.Pool, content: asyncpg.Record
) -> None:
    """After a crash between commit and enqueue, the retried job enqueues the media job
    (same id) unless its media row exists already."""
    media_job_id = content["media_job_id"]
    if not media_job_id:
        return
    if await pool.fetchval("SELECT 1 FROM media WHERE job_id = $1", media_job_id):
        return
    media = (content["extras"] or {}).get("media_request") or {"kind": "image"}
    await services.producer.enqueue(
        MEDIA_QUEUE, {**media, "content_id": str(content["id"])}, id=media_job_id
    )
