"""content-generation: write one piece of content for a ``content_queue`` row.

Job data (docs/schema.md, "Job data")::

    {"content_queue_id": "<uuid>",          required: the row the API created
     "provider": "anthropic|openai|offline", optional: overrides row, brand and config
     "model": "<model id>",                  optional
     "media": true | {"kind": "image|thumbnail", "size": "...", "prompt": "..."}}
                                             optional: enqueue a media job for the result

The piece of paid work is the row (work key ``content:<content_queue_id>``): its lease is
held from the "already saved?" check to the commit of the content, and its provider calls
go through the ledger (:mod:`alchemy.paid`). A run that finds the row's content saved
completes without calling anyone, whatever its job id; one that finds the row held by a
live runner defers. The media follow-up (id ``<job id>:media``) is recorded with the
content and pushed at most once (:meth:`~alchemy.queue.producer.Producer.enqueue_once`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import structlog

from alchemy.content import readability
from alchemy.content.platforms import Platform, platform_for
from alchemy.content.prompts import Brand, Idea, content_prompt
from alchemy.content.quality import Draft, Quality, quality_score
from alchemy.content.schemas import ContentDraft
from alchemy.errors import PermanentError
from alchemy.handlers.common import (
    check_storable,
    mark_dead,
    mark_row,
    run_work,
    str_field,
    uuid_field,
)
from alchemy.handlers.media import media_fields
from alchemy.paid.piece import Piece
from alchemy.providers.base import TEXT_PROVIDERS, TextRequest
from alchemy.providers.registry import choose_text
from alchemy.providers.structured import Structured, generate_structured, strict_schema
from alchemy.queue.job import MAX_ID_LENGTH, Death, Job
from alchemy.services import Services, current_services

log = structlog.get_logger("alchemy.handlers.content")

REQUIRES: Final = ("postgres",)
MEDIA_QUEUE: Final = "media-generation"
FOLLOW_UP_SUFFIX: Final = ":media"

# The row ($1) and, when it has one already, its content (or this job's, $2): the "already
# saved?" check and the load in one statement.
LOAD_ROW = """
SELECT q.id, q.status, q.platform, q.provider, q.model, q.options, q.idea_id,
       b.id AS brand_id, b.name, b.voice, b.tone, b.audience, b.guidelines,
       b.banned_phrases, b.default_provider, b.default_model,
       i.title, i.description, i.keywords, i.research,
       c.id AS content_id, c.media_job_id, c.extras AS content_extras
FROM content_queue q
JOIN brands b ON b.id = q.brand_id
LEFT JOIN ideas i ON i.id = q.idea_id
LEFT JOIN LATERAL (
    SELECT id, media_job_id, extras FROM contents
    WHERE content_queue_id = q.id OR job_id = $2
    ORDER BY (job_id = $2) DESC
    LIMIT 1
) c ON true
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
# This job's content, for a row that is gone (its content keeps job_id).
SAVED_BY_JOB = """
SELECT id AS content_id, media_job_id, extras AS content_extras FROM contents WHERE job_id = $1
"""


@dataclass(frozen=True, slots=True)
class ContentJob:
    row_id: uuid.UUID
    provider: str | None
    model: str | None
    media: Mapping[str, str] | None

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> ContentJob:
        row_id = uuid_field(data, "content_queue_id")
        assert row_id is not None
        check_storable(data)
        return cls(
            row_id=row_id,
            provider=str_field(data, "provider", TEXT_PROVIDERS),
            model=str_field(data, "model"),
            media=media_request(data.get("media"), "media"),
        )


def media_request(value: Any, where: str) -> dict[str, str] | None:
    """The follow-up media job's fields, checked now, before anything is paid for."""
    if value is None or value is False:
        return None
    if value is True:
        return {"kind": "image"}
    if isinstance(value, Mapping):
        return {"kind": "image", **media_fields(value, where)}
    raise PermanentError(f"job data {where!r} must be true, false or an object")


def follow_up_id(job_id: str) -> str:
    """The media follow-up's id, which must fit the protocol's id limit."""
    follow_up = f"{job_id}{FOLLOW_UP_SUFFIX}"
    if len(follow_up) > MAX_ID_LENGTH:
        raise PermanentError(
            f"the job id has {len(job_id)} characters: its media follow-up's id would have"
            f" {len(follow_up)}, over the {MAX_ID_LENGTH}-character limit"
        )
    return follow_up


@dataclass(frozen=True, slots=True)
class FollowUp:
    """A media job recorded with a saved content, pushed at most once."""

    content_id: uuid.UUID
    job_id: str
    request: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Written:
    """What one run wrote for a row, ready to be saved."""

    platform: Platform
    result: Structured[Any]
    quality: Quality
    media: Mapping[str, str] | None
    media_job_id: str | None


async def handle(job: Job) -> dict[str, Any] | None:
    """Steps reported: loaded, prompt built, provider called, saved. Returns the content's
    id, its quality score, the provider and model, and the media follow-up's job id."""
    services = current_services()
    row_id = uuid_field(job.data, "content_queue_id")
    return await run_work(lambda: generate_content(job, services), mark_row(MARK_FAILED, row_id))


async def on_dead(job: Job, death: Death) -> None:
    """The engine gave the job up (attempts spent, cancelled at the queue timeout on its
    last attempt, poison...): the row it left ``processing`` is ``failed``."""
    await mark_dead(job, death, MARK_FAILED_BY_ENGINE)


async def warm() -> None:
    """Before the first job: the text providers' SDK clients, the reply schema, the
    syllable table and hyphenation dictionary of the quality score, the database pool
    and, on each of its connections, this module's SQL."""
    await current_services().warm(text=True, load=[readability.load], statements_of=[__name__])
    strict_schema(ContentDraft)


async def generate_content(job: Job, services: Services) -> dict[str, Any]:
    request = ContentJob.parse(job.data)
    async with services.paid.piece(job, f"content:{request.row_id}") as piece:
        db = await piece.db()  # until the provider call: after it, the commit takes its own
        row = await db.fetchrow(LOAD_ROW, request.row_id, job.id)
        saved = row if row is not None else await db.fetchrow(SAVED_BY_JOB, job.id)
        await job.progress(0.1, step="loaded")
        made: dict[str, Any] = {"already_saved": True}
        if saved is not None and saved["content_id"] is not None:
            follow_up = await already_saved(db, request.row_id, saved)
        elif row is None:
            raise PermanentError(f"content_queue row {request.row_id} not found")
        else:
            follow_up, made = await write_and_save(piece, db, job, request, row, services)
    await enqueue_follow_up(services, follow_up)
    return {
        "content_id": str(follow_up.content_id),
        "media_job_id": follow_up.job_id or None,
        **made,
    }


async def already_saved(db: Any, row_id: uuid.UUID, saved: asyncpg.Record) -> FollowUp:
    """The row has its content (a run before this one committed it): mark the row completed
    and return the follow-up the content recorded, to be pushed (at most once)."""
    log.info("content_already_saved", content_id=str(saved["content_id"]))
    await db.execute(MARK_COMPLETED, row_id)
    if not saved["media_job_id"]:
        return FollowUp(saved["content_id"], "", {})
    media = (saved["content_extras"] or {}).get("media_request") or {"kind": "image"}
    return FollowUp(saved["content_id"], saved["media_job_id"], media)


async def write_and_save(
    piece: Piece,
    db: Any,
    job: Job,
    request: ContentJob,
    row: asyncpg.Record,
    services: Services,
) -> tuple[FollowUp, dict[str, Any]]:
    """The content written and saved; its follow-up, and what the result tells of it."""
    if row["title"] is None:
        raise PermanentError(f"content_queue row {request.row_id}: its idea is missing")
    platform = platform_for(row["platform"])
    options = row["options"] or {}
    media = request.media or media_request(options.get("media"), "content_queue options.media")
    media_job_id = follow_up_id(job.id) if media else None
    piece.brand_id = row["brand_id"]
    await db.execute(MARK_PROCESSING, request.row_id, job.id)

    brief = Brief(row, brand_of(row), idea_of(row), platform, options)
    result = await write(piece, services, request, brief, job)
    await job.progress(0.7, step="provider called")
    quality = score(result.value, platform, brief.idea, brief.brand)
    written = Written(platform, result, quality, media, media_job_id)
    content_id = await save(piece, job, row, written)
    await job.progress(0.9, step="saved")
    log.info("content_saved", content_id=str(content_id), quality=written.quality.score)
    made = {
        "already_saved": False,
        "quality_score": quality.score,
        "provider": result.provider,
        "model": result.model,
    }
    return FollowUp(content_id, media_job_id or "", media or {}), made


async def enqueue_follow_up(services: Services, follow_up: FollowUp) -> None:
    """Push the media job a saved content recorded, unless it was pushed already: a run
    after a crash between the commit and the push pushes it; any other run does not."""
    if not follow_up.job_id:
        return
    data = {**follow_up.request, "content_id": str(follow_up.content_id)}
    pushed = await services.producer.enqueue_once(MEDIA_QUEUE, data, id=follow_up.job_id)
    if pushed:
        log.info("media_job_enqueued", media_job_id=follow_up.job_id)


@dataclass(frozen=True, slots=True)
class Brief:
    """What a draft is written from: the row, its brand and idea, platform and options."""

    row: asyncpg.Record
    brand: Brand
    idea: Idea
    platform: Platform
    options: Mapping[str, Any]


async def write(
    piece: Piece, services: Services, request: ContentJob, brief: Brief, job: Job
) -> Structured[Any]:
    row, idea = brief.row, brief.idea
    choice = choose_text(
        [
            ("job", {"provider": request.provider, "model": request.model}),
            ("content_queue row", {"provider": row["provider"], "model": row["model"]}),
            ("brand", {"provider": row["default_provider"], "model": row["default_model"]}),
        ],
        services.config.providers,
    )
    system, prompt = content_prompt(brief.brand, idea, brief.platform, brief.options)
    text_request = TextRequest(system, prompt, ContentDraft, choice.model, subject=idea.title)
    await job.progress(0.3, step="prompt built")
    provider = piece.text(services.providers.text(choice.provider))
    return await generate_structured(provider, text_request)


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


async def save(piece: Piece, job: Job, row: asyncpg.Record, written: Written) -> uuid.UUID:
    """The content, the row's completion and the follow-up it records, in one
    transaction, committed only while this run holds the row's lease."""
    result = written.result
    draft: ContentDraft = result.value
    extras: dict[str, Any] = {
        "hook": draft.hook,
        "image_prompt": draft.image_prompt,
        "repaired": result.repaired,
    }
    if written.media:
        extras["media_request"] = dict(written.media)
    async with piece.commit() as conn:
        content_id = await conn.fetchval(
            INSERT_CONTENT,
            row["id"],
            row["brand_id"],
            row["idea_id"],
            written.platform.name,
            draft.title,
            draft.body,
            clean_hashtags(draft.hashtags),
            draft.call_to_action,
            extras,
            written.quality.score,
            written.quality.breakdown,
            result.provider,
            result.model,
            result.usage.input_tokens,
            result.usage.output_tokens,
            job.id,
            written.media_job_id,
        )
        if content_id is None:  # the job id was used for another row's content
            raise PermanentError(f"job {job.id} already saved the content of another row")
        await conn.execute(MARK_COMPLETED, row["id"])
    saved: uuid.UUID = content_id
    return saved
