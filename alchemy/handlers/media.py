"""media-generation: an image or thumbnail for a content row or a brand.

Job data (docs/schema.md, "Job data")::

    {"content_id": "<uuid>" | "brand_id": "<uuid>",     one of them is required
     "kind": "image|thumbnail",                          default image
     "prompt": "...",        required with brand_id unless there is a source; default:
                             the content's image prompt (the source's prompt)
     "size": "...", "quality": "...", "style": "...", "model": "..."   optional overrides
     "source_media_id": "<uuid>"}   thumbnail only: downscale that image, no API call

A thumbnail is ``[media] thumbnail_size`` on its longest edge: cut locally from its source,
or from an image generated at the smallest size the model supports. The bytes go to the
media store (:mod:`alchemy.storage`, named by sha256) before the ``media`` row keyed by the
job id, which records which store, where and what they are, is committed; the result
carries a fresh URL of them.

The piece of paid work is the media row (work key ``media:<job id>``): its lease is held
from before the row is touched until the row is completed, and the image call goes through
the ledger (:mod:`alchemy.paid`), so a run that finds the row completed, or held by a live
runner, pays nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
import structlog

from alchemy.errors import PermanentError, RetryableError
from alchemy.handlers.common import (
    check_storable,
    mark_dead,
    mark_row,
    run_work,
    str_field,
    uuid_field,
)
from alchemy.paid.piece import Piece
from alchemy.providers.base import ImageRequest, ImageResult
from alchemy.providers.image_models import image_family, image_option_problem
from alchemy.queue.job import Death, Job
from alchemy.services import Services, current_services
from alchemy.storage import ObjectMissingError, Stored, StoreError, mime_type_of
from alchemy.storage.images import dimensions_sync, downscale_sync

log = structlog.get_logger("alchemy.handlers.media")

REQUIRES: Final = ("postgres",)
KINDS: Final = ("image", "thumbnail")
OPTIONS: Final = ("size", "quality", "style", "model")
REQUEST_FIELDS: Final = ("kind", "prompt", *OPTIONS)  # what a content job's `media` may set

UPSERT_PROCESSING = """
INSERT INTO media (content_id, brand_id, source_media_id, kind, prompt, job_id, status)
VALUES ($1, $2, $3, $4, $5, $6, 'processing')
ON CONFLICT (job_id) DO UPDATE
SET status = 'processing', error = NULL, error_detail = NULL, updated_at = now()
WHERE media.status <> 'completed'
RETURNING id
"""
MARK_COMPLETED = """
UPDATE media
SET status = 'completed', provider = $2, model = $3, size = $4, quality = $5,
    revised_prompt = $6, mime_type = $7, bytes = $8, width = $9, height = $10, sha256 = $11,
    storage_path = $12, store = $13, error = NULL, error_detail = NULL, completed_at = now(),
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
# A completed media row of this job (a run before this one saved it).
SAVED = """
SELECT id, kind, store, storage_path, mime_type, bytes, width, height FROM media
WHERE job_id = $1 AND status = 'completed'
"""
SOURCE = """
SELECT store, storage_path, status, model, prompt FROM media WHERE id = $1
"""


def media_fields(data: Mapping[str, Any], where: str = "") -> dict[str, str]:
    """The media request's string fields (kind, prompt, size, quality, style, model),
    checked: each a string, ``kind`` one of :data:`KINDS`."""
    fields = {key: value for key in REQUEST_FIELDS if (value := str_field(data, key, where=where))}
    if "kind" in fields and fields["kind"] not in KINDS:
        name = f"{where}.kind" if where else "kind"
        raise PermanentError(f"job data {name!r} must be one of {', '.join(KINDS)}")
    return fields


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
        check_storable(data)
        content_id = uuid_field(data, "content_id", required=False)
        brand_id = uuid_field(data, "brand_id", required=False)
        if content_id is None and brand_id is None:
            raise PermanentError("job data needs 'content_id' or 'brand_id' (a UUID)")
        fields = media_fields(data)
        prompt = fields.get("prompt")
        source = uuid_field(data, "source_media_id", required=False)
        if content_id is None and not prompt and source is None:
            raise PermanentError(
                "job data needs a 'prompt' for a brand image (or, for a thumbnail,"
                " a 'source_media_id' to cut it from)"
            )
        kind = fields.get("kind", "image")
        if source is not None and kind != "thumbnail":
            raise PermanentError("'source_media_id' is for kind 'thumbnail' only")
        options: dict[str, str] = {key: fields[key] for key in OPTIONS if key in fields}
        return cls(content_id, brand_id, kind, prompt, source, options)


@dataclass(frozen=True, slots=True)
class Owner:
    content_id: uuid.UUID | None
    brand_id: uuid.UUID
    prompt: str


async def handle(job: Job) -> dict[str, Any] | None:
    """Steps reported: loaded, prompt built and provider called (or, for a thumbnail,
    source read), saved. Returns the media row's id, its kind, its store and key, a fresh
    URL of it, and its size, type and dimensions."""
    services = current_services()
    return await run_work(lambda: make_media(job, services), mark_row(MARK_FAILED, job.id))


async def on_dead(job: Job, death: Death) -> None:
    """The engine gave the job up (attempts spent, cancelled at the queue timeout on its
    last attempt, poison...): a media row it left ``processing`` is ``failed``."""
    await mark_dead(job, death, MARK_FAILED_BY_ENGINE)


async def warm() -> None:
    """Before the first job: the image provider's SDK client and HTTP session, Pillow,
    the database pool and, on each of its connections, this module's SQL."""
    await current_services().warm(images=True, load=[load_pillow], statements_of=[__name__])


def load_pillow() -> None:
    from PIL import Image

    Image.preinit()  # the common formats' plugins, as the first Image.open would


async def make_media(job: Job, services: Services) -> dict[str, Any]:
    request = MediaJob.parse(job.data)
    async with services.paid.piece(job, f"media:{job.id}") as piece:
        db = await piece.db()  # until the provider call: after it, the commit takes its own
        done = await db.fetchrow(SAVED, job.id)
        if done is not None:
            log.info("media_already_saved")
            return await saved_result(done, services)
        source = await load_source(db, request)
        owner = await load_owner(db, request, source)
        await job.progress(0.1, step="loaded")
        piece.brand_id = owner.brand_id
        media_id = await db.fetchval(
            UPSERT_PROCESSING,
            owner.content_id,
            owner.brand_id,
            request.source_media_id,
            request.kind,
            owner.prompt,
            job.id,
        )
        if media_id is None:  # completed meanwhile (a run before our lease)
            log.info("media_already_saved")
            done = await db.fetchrow(SAVED, job.id)
            return (
                await saved_result(done, services) if done is not None else {"already_saved": True}
            )
        if source is not None:
            result = await read_source(source, services)
            await job.progress(0.6, step="source read")
        else:
            image = image_request(request, owner, services)
            await job.progress(0.3, step="prompt built")
            paid = await piece.image(services.providers.images(), image)
            result, stored = paid.result, paid.stored
            await job.progress(0.7, step="provider called")
        if request.kind == "thumbnail":
            result, stored = await thumbnail(result, services)
        width, height = await complete(piece, media_id, result, stored)
        await job.progress(0.9, step="saved")
    log.info("media_saved", media_id=str(media_id), sha256=stored.sha256, bytes=stored.bytes)
    return {
        "media_id": str(media_id),
        "kind": request.kind,
        "store": stored.store,
        "storage_path": stored.path,
        "url": await media_url(services, stored.store, stored.path),
        "mime_type": result.mime_type,
        "bytes": stored.bytes,
        "width": width,
        "height": height,
        "already_saved": False,
    }


async def media_url(services: Services, store: str, key: str) -> str | None:
    """A fresh URL of the object (None when its store gives none here); never fails the
    job, whose media is saved already."""
    try:
        return await services.media.url(store, key)
    except Exception as exc:
        log.warning("media_url_failed", store=store, error=f"{type(exc).__name__}: {exc}")
        return None


async def saved_result(row: asyncpg.Record, services: Services) -> dict[str, Any]:
    """The result of a job whose media a run before this one saved."""
    return {
        "media_id": str(row["id"]),
        "kind": row["kind"],
        "store": row["store"],
        "storage_path": row["storage_path"],
        "url": await media_url(services, row["store"], row["storage_path"]),
        "mime_type": row["mime_type"],
        "bytes": row["bytes"],
        "width": row["width"],
        "height": row["height"],
        "already_saved": True,
    }


async def complete(
    piece: Piece, media_id: uuid.UUID, result: ImageResult, stored: Stored
) -> tuple[int | None, int | None]:
    """The row completed with its object; the image's width and height when they can be
    read."""
    width, height = await asyncio.to_thread(dimensions_sync, result.data) or (None, None)
    async with piece.commit() as conn:
        await conn.execute(
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
            stored.store,
        )
    return width, height


async def load_source(db: asyncpg.Connection, request: MediaJob) -> asyncpg.Record | None:
    """The completed image a thumbnail is cut from, if the job names one."""
    if request.source_media_id is None:
        return None
    source = await db.fetchrow(SOURCE, request.source_media_id)
    if source is None or source["status"] != "completed":
        raise PermanentError(f"source media {request.source_media_id} not found or not completed")
    return source


async def load_owner(
    db: asyncpg.Connection, request: MediaJob, source: asyncpg.Record | None
) -> Owner:
    if request.content_id is not None:
        row = await db.fetchrow(
            "SELECT brand_id, title, extras FROM contents WHERE id = $1", request.content_id
        )
        if row is None:
            raise PermanentError(f"content {request.content_id} not found")
        extras = row["extras"] or {}
        prompt = request.prompt or extras.get("image_prompt") or row["title"]
        return Owner(request.content_id, row["brand_id"], str(prompt))
    assert request.brand_id is not None
    if not await db.fetchval("SELECT 1 FROM brands WHERE id = $1", request.brand_id):
        raise PermanentError(f"brand {request.brand_id} not found")
    prompt = request.prompt or (source["prompt"] if source is not None else "")
    return Owner(None, request.brand_id, prompt)


def image_request(request: MediaJob, owner: Owner, services: Services) -> ImageRequest:
    """The image to ask for; options the model does not take fail before any call."""
    cfg = services.config.providers
    model = request.options.get("model") or cfg.image_model
    family = image_family(model)
    size = request.options.get("size")
    quality = request.options.get("quality")
    if request.kind == "thumbnail":
        size = size or family.smallest_size
        quality = quality or ("low" if "low" in family.qualities else "")
    same_model = model == cfg.image_model
    image = ImageRequest(
        prompt=owner.prompt,
        model=model,
        size=size or (cfg.image_size if same_model else ""),
        quality=quality if quality is not None else (cfg.image_quality if same_model else ""),
        style=request.options.get("style") or (cfg.image_style if same_model else ""),
    )
    for option, value in (
        ("image_size", image.size),
        ("image_quality", image.quality),
        ("image_style", image.style),
    ):
        problem = image_option_problem(model, option, value)
        if problem:
            raise PermanentError(f"image request: {problem}")
    return image


async def read_source(source: asyncpg.Record, services: Services) -> ImageResult:
    """The source image's bytes, from the store its row names."""
    where = f"{source['store']}:{source['storage_path']}"
    try:
        data = await services.media.get(source["store"], source["storage_path"])
    except ObjectMissingError:
        raise PermanentError(f"source media file {where} is missing") from None
    except StoreError as exc:
        raise RetryableError(f"media store: cannot read the source {where}: {exc}") from None
    mime_type = mime_type_of(source["storage_path"])
    return ImageResult(data, mime_type, "local", source["model"] or "", "", "")


async def thumbnail(image: ImageResult, services: Services) -> tuple[ImageResult, Stored]:
    """``image`` cut down to ``[media] thumbnail_size`` on its longest edge (a PNG), in
    the media store. The row records the thumbnail; the image it was cut from keeps its
    own place (a source's row, or the ledger's reply)."""
    edge = services.config.media.thumbnail_size
    try:
        png, width, height = await asyncio.to_thread(downscale_sync, image.data, edge)
    except Exception as exc:  # Pillow: not an image it can read
        raise PermanentError(f"cannot make a thumbnail: {type(exc).__name__}: {exc}") from None
    cut = dataclasses.replace(image, data=png, mime_type="image/png", size=f"{width}x{height}")
    try:
        stored = await services.media.put(cut.data, cut.mime_type)
    except StoreError as exc:
        raise RetryableError(f"media store: cannot write the thumbnail: {exc}") from None
    return cut, stored
