"""media-generation: an image or thumbnail for a content row or a brand.

Job data (docs/schema.md, "Job data")::

    {"content_id": "<uuid>" | "brand_id": "<uuid>",     one of them is required
     "kind": "image|thumbnail",                          default image
     "prompt": "...",        required with brand_id; default: the content's image prompt
     "size": "...", "quality": "...", "style": "...", "model": "..."   optional overrides
     "source_media_id": "<uuid>"}   thumbnail only: downscale that image, no API call

A thumbnail without a source is generated at the smallest size the model supports. The
bytes go to the media store (:mod:`alchemy.content.storage`, named by sha256, written
atomically) and the ``media`` row keyed by the job id records where and what they are.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import asyncpg
import structlog

from alchemy.content.storage import dimensions_sync, downscale_sync, store_bytes
from alchemy.errors import PermanentError
from alchemy.handlers.common import (
    fail_rows_the_engine_gives_up_on,
    run_or_mark_failed,
    str_field,
    uuid_field,
)
from alchemy.providers.base import ImageRequest, ImageResult
from alchemy.providers.image_models import image_family
from alchemy.queue.job import Job
from alchemy.services import Services, current_services

log = structlog.get_logger("alchemy.handlers.media")

KINDS: Final = ("image", "thumbnail")
OPTIONS: Final = ("size", "quality", "style", "model")

UPSERT_PROCESSING = """
INSERT INTO media (content_id, brand_id, source_media_id, kind, prompt, job_id, status)
VALUES ($1, $2, $3, $4, $5, $6, 'processing')
ON CONFLICT (job_id) DO UPDATE
SET status = 'processing', error = NULL, error_detail = NULL, updated_at = now()
RETURNING id
"""
MARK_COMPLETED = """
UPDATE media
SET status = 'completed', provider = $2, model = $3, size = $4, quality = $5,
    revised_prompt = $6, mime_type = $7, bytes = $8, width = $9, height = $10, sha256 = $11,
    storage_path = $12, error = NULL, error_detail = NULL, completed_at = now(),
    updated_at = now()
WHERE id = $1
"""
MARK_FAILED = """
UPDATE media SET status = 'failed', error = $2, error_detail = $3, updated_at = now()
WHERE job_id = $1 AND status <> 'completed'
"""

MARK_FAILED_BY_ENGINE = """
UPDATE media SET status = 'failed', error = $2, error_detail = $3, updated_at = now()
WHERE job_id = $1 AND status = 'processing'
"""


@dataclass(frozen=True, slots=True)
class MediaJob:
    content_id: uuid.UUID | None
    brand_id: uuid.UUID | None
    kind: str
    prompt: str | None
    source_media_id: uuid.UUID | None
    options: Mapping[str, str]

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> MediaJob:
        content_id = uuid_field(data, "content_id", required=False)
        brand_id = uuid_field(data, "brand_id", required=False)
        if content_id is None and brand_id is None:
            raise PermanentError("job data needs 'content_id' or 'brand_id' (a UUID)")
        prompt = str_field(data, "prompt")
        if content_id is None and not prompt:
            raise PermanentError("job data needs a 'prompt' for a brand image")
        source = uuid_field(data, "source_media_id", required=False)
        kind = str_field(data, "kind", KINDS) or "image"
        if source is not None and kind != "thumbnail":
            raise PermanentError("'source_media_id' is for kind 'thumbnail' only")
        options = {key: value for key in OPTIONS if (value := str_field(data, key))}
        return cls(content_id, brand_id, kind, prompt, source, options)


@dataclass(frozen=True, slots=True)
class Owner:
    content_id: uuid.UUID | None
    brand_id: uuid.UUID
    prompt: str


async def handle(job: Job) -> None:
    services = current_services()
    request = MediaJob.parse(job.data)

    async def mark_failed(message: str, detail: dict[str, Any]) -> None:
        pool = await services.db()
        await pool.execute(MARK_FAILED, job.id, message, detail)

    await run_or_mark_failed(
        job,
        services.config,
        lambda: make_media(job, request, services),
        mark_failed,
        what="mark_media_failed",
    )


fail_rows_the_engine_gives_up_on(
    f"{__name__}:handle", MARK_FAILED_BY_ENGINE, what="mark_media_failed_by_engine"
)


async def make_media(job: Job, request: MediaJob, services: Services) -> None:
    pool = await services.db()
    status = await pool.fetchval("SELECT status FROM media WHERE job_id = $1", job.id)
    if status == "completed":
        log.info("media_already_saved")
        return
    owner = await load_owner(pool, request)
    media_id = await pool.fetchval(
        UPSERT_PROCESSING,
        owner.content_id,
        owner.brand_id,
        request.source_media_id,
        request.kind,
        owner.prompt,
        job.id,
    )
    directory = Path(services.config.media.directory)
    if request.source_media_id is not None:
        result = await downscaled(pool, request.source_media_id, directory, services)
    else:
        result = await services.providers.images().generate(image_request(request, owner, services))
    stored = await store_bytes(directory, result.data, result.mime_type)
    width, height = await asyncio.to_thread(dimensions_sync, result.data) or (None, None)
    await pool.execute(
        MARK_COMPLETED,
        media_id,
        result.provider,
        result.model,
        result.size,
        result.quality or None,
        result.revised_prompt,
        result.mime_type,
        stored.bytes,
        width,
        height,
        stored.sha256,
        stored.path,
    )
    log.info("media_saved", media_id=str(media_id), sha256=stored.sha256, bytes=stored.bytes)


async def load_owner(pool: asyncpg.Pool, request: MediaJob) -> Owner:
    if request.content_id is not None:
        row = await pool.fetchrow(
            "SELECT brand_id, title, extras FROM contents WHERE id = $1", request.content_id
        )
        if row is None:
            raise PermanentError(f"content {request.content_id} not found")
        extras = row["extras"] or {}
        prompt = request.prompt or extras.get("image_prompt") or row["title"]
        return Owner(request.content_id, row["brand_id"], str(prompt))
    assert request.brand_id is not None
    assert request.prompt is not None
    if not await pool.fetchval("SELECT 1 FROM brands WHERE id = $1", request.brand_id):
        raise PermanentError(f"brand {request.brand_id} not found")
    return Owner(None, request.brand_id, request.prompt)


def image_request(request: MediaJob, owner: Owner, services: Services) -> ImageRequest:
    cfg = services.config.providers
    model = request.options.get("model") or cfg.image_model
    family = image_family(model)
    size = request.options.get("size")
    quality = request.options.get("quality")
    if request.kind == "thumbnail":
        size = size or family.smallest_size
        quality = quality or ("low" if "low" in family.qualities else "")
    same_model = model == cfg.image_model
    return ImageRequest(
        prompt=owner.prompt,
        model=model,
        size=size or (cfg.image_size if same_model else ""),
        quality=quality if quality is not None else (cfg.image_quality if same_model else ""),
        style=request.options.get("style") or (cfg.image_style if same_model else ""),
    )


async def downscaled(
    pool: asyncpg.Pool, source_id: uuid.UUID, directory: Path, services: Services
) -> ImageResult:
    source = await pool.fetchrow(
        "SELECT storage_path, status, model FROM media WHERE id = $1", source_id
    )
    if source is None or source["status"] != "completed":
        raise PermanentError(f"source media {source_id} not found or not completed")
    try:
        data = await asyncio.to_thread((directory / source["storage_path"]).read_bytes)
    except FileNotFoundError:
        raise PermanentError(f"source media file {source['storage_path']} is missing") from None
    edge = services.config.media.thumbnail_size
    png, width, height = await asyncio.to_thread(downscale_sync, data, edge)
    return ImageResult(png, "image/png", "local", source["model"] or "", f"{width}x{height}", "")
