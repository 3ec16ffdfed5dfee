"""One provider call of a piece of paid work: a stored reply to the same request, or a
ledgered call.

    no stored reply (or a fresh lease: nothing can be stored)
    ├── ledger row in_flight with the call's worst-case cost reserved against the budgets
    │   (a remote provider; :mod:`alchemy.paid.budgets`: no room holds the job instead;
    │   the connection goes back to the pool)
    ├── the request, with the row's id as X-Alchemy-Call
    ├── the reply recorded: usage, request id, cost, the reply itself (an image: its bytes
    │   go to the media store first); PostgreSQL away: kept in Redis, the job held
    └── the reply's failure raised if it cannot be used (a refusal, cut off...)

A local provider (offline: in-process, free, never cut off mid-request) gets one row, with
its reply.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import structlog

from alchemy.db import DEPENDENCY, TRANSIENT_DB_ERRORS, job_error_for
from alchemy.errors import DependencyUnavailableError, JobError, RetryableError
from alchemy.paid.estimate import worst_image_cost, worst_text_cost
from alchemy.paid.ledger import CallEnd, CallStart, StoredReply
from alchemy.providers.base import (
    ImageProvider,
    ImageRequest,
    ImageResult,
    ProviderRefusedError,
    TextProvider,
    TextRequest,
    TextResult,
    Usage,
    raise_failure,
)
from alchemy.storable import storable
from alchemy.storage import ObjectMissingError, Stored, StoreError

if TYPE_CHECKING:
    from alchemy.paid.piece import Piece

log = structlog.get_logger("alchemy.paid")
R = TypeVar("R", TextResult, ImageResult)
SETTLE_TIMEOUT: Final = 5.0  # seconds a bookkeeping step may take after a cancellation


async def settle(step: Coroutine[Any, Any, object], what: str) -> bool:
    """Run a bookkeeping step to its end even if the job is cancelled meanwhile (it goes
    on in the background then, and the cancellation goes on too), bounded in time; log
    instead of raising (the job's own outcome is what matters). False when it failed."""
    try:
        async with asyncio.timeout(SETTLE_TIMEOUT):
            await asyncio.shield(step)
    except Exception as exc:
        log.warning("paid_step_failed", step=what, error=f"{type(exc).__name__}: {exc}")
        return False
    return True


def text_fingerprint(provider: str, request: TextRequest) -> str:
    repair = request.repair
    return _digest(
        {
            "provider": provider,
            "model": request.model,
            "system": request.system,
            "prompt": request.prompt,
            "output": request.output.__name__,
            "max_tokens": request.max_tokens,
            "repair": [repair.previous_text, repair.problem] if repair else None,
        }
    )


def image_fingerprint(provider: str, request: ImageRequest) -> str:
    return _digest(
        {
            "provider": provider,
            "model": request.model,
            "prompt": request.prompt,
            "size": request.size,
            "quality": request.quality,
            "style": request.style,
        }
    )


def _digest(value: dict[str, Any]) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class PaidImage:
    """An image paid for (now or by an earlier run) and already in the media store."""

    result: ImageResult
    stored: Stored


class PaidText:
    """A text provider whose calls are the piece's ledgered calls."""

    def __init__(self, piece: Piece, provider: TextProvider) -> None:
        self.piece = piece
        self.provider = provider
        self.name = provider.name
        self.local = provider.local

    async def send(self, request: TextRequest) -> TextResult:
        return await call_text(self.piece, self.provider, request)

    async def generate(self, request: TextRequest) -> TextResult:
        return await call_text(self.piece, self.provider, request)


async def call_text(piece: Piece, provider: TextProvider, request: TextRequest) -> TextResult:
    """One text call: a stored reply to the same request, or a ledgered call. A reply
    that cannot be used (a refusal, cut off) is recorded, then its failure raised."""
    fingerprint = text_fingerprint(provider.name, request)
    if not piece.lease.fresh:
        stored = await piece.work.ledger.reply_for(await piece.db(), piece.key, fingerprint)
        if stored is not None:
            log.info("paid_reply_reused", work_key=piece.key, call_id=str(stored.call_id))
            reply = stored.reply
            usage = Usage(stored.input_tokens, stored.output_tokens)
            return TextResult(
                reply["text"],
                provider.name,
                reply["model"],
                usage,
                reply["stop_reason"],
                stored.request_id,
            )
    start = _start(piece, provider.name, request.model, fingerprint)
    work = piece.work
    worst = None if provider.local else worst_text_cost(work.prices, request, work.max_tokens)

    async def send() -> TextResult:
        return await provider.send(replace(request, call_id=str(start.id)))

    async def end_of(result: TextResult) -> CallEnd:
        return _text_end(piece, result)

    result = await _paid(piece, start, send, end_of, local=provider.local, worst=worst)
    raise_failure(result)
    return result


def _reply_end(piece: Piece, result: TextResult | ImageResult, images: int) -> CallEnd:
    """A call that got a reply: billed, usable (``ok``) or not."""
    usage = result.usage
    return CallEnd(
        outcome=_failure_outcome(result.failure),
        request_id=result.request_id,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        images=images,
        cost_usd=piece.work.prices.cost(
            result.model, usage.input_tokens, usage.output_tokens, images
        ),
        error=str(result.failure) if result.failure else None,
    )


def _text_end(piece: Piece, result: TextResult) -> CallEnd:
    end = _reply_end(piece, result, 0)
    if result.failure:
        return end
    reply = {"text": storable(result.text), "model": result.model}
    return replace(end, reply={**reply, "stop_reason": result.stop_reason})


# -- images -------------------------------------------------------------------------
async def call_image(piece: Piece, provider: ImageProvider, request: ImageRequest) -> PaidImage:
    """One image: a stored one for the same request, or a ledgered call whose bytes go
    to the media store before the reply is recorded (or, the store refusing them, to
    Redis, from where the next run stores them: a store's fault never pays twice)."""
    fingerprint = image_fingerprint(provider.name, request)
    if not piece.lease.fresh:
        reused = await _stored_image(piece, fingerprint, provider.name)
        if reused is not None:
            return reused
    start = _start(piece, provider.name, request.model, fingerprint)
    worst = None if provider.local else worst_image_cost(piece.work.prices, request)
    stored: list[Stored] = []
    kept: list[str] = []  # the store refused the image: where its bytes went instead

    async def send() -> ImageResult:
        return await provider.send(replace(request, call_id=str(start.id)))

    async def end_of(result: ImageResult) -> CallEnd:
        return await _image_end(piece, result, stored, kept)

    result = await _paid(piece, start, send, end_of, local=provider.local, worst=worst)
    raise_failure(result)
    if not stored:  # the media store refused the bytes (logged)
        where = kept[0] if kept else "lost with this run (Redis refused them too)"
        raise RetryableError(f"media store: the paid image could not be written; it is {where}")
    return PaidImage(result, stored[0])


def _image_reply(result: ImageResult, sha256: str, size: int) -> dict[str, Any]:
    return {
        "sha256": sha256,
        "bytes": size,
        "mime_type": result.mime_type,
        "size": result.size,
        "quality": result.quality,
        "revised_prompt": result.revised_prompt,
        "model": result.model,
    }


async def _image_end(
    piece: Piece, result: ImageResult, stored: list[Stored], kept: list[str]
) -> CallEnd:
    end = _reply_end(piece, result, result.images)
    if result.failure:
        return end
    try:
        put = await piece.work.media.put(result.data, result.mime_type)
    except StoreError as exc:
        log.error("media_store_failed", error=str(exc))
        return await _keep_refused_image(piece, result, end, exc, kept)
    stored.append(put)
    reply = {
        "store": put.store,
        "storage_path": put.path,
        **_image_reply(result, put.sha256, put.bytes),
    }
    return replace(end, reply=cast(dict[str, Any], storable(reply)))


async def _keep_refused_image(
    piece: Piece, result: ImageResult, end: CallEnd, refused: StoreError, kept: list[str]
) -> CallEnd:
    """The media store refused a paid image: its bytes wait in Redis for the next run,
    and the ledger records the reply as kept there. With Redis refusing too, the call is
    recorded as an error: the bytes are lost and a retry pays again."""
    sha256 = hashlib.sha256(result.data).hexdigest()
    try:
        await piece.work.stash.keep_image(piece.key, sha256, result.data)
    except Exception as exc:
        log.error("paid_image_lost", work_key=piece.key, error=type(exc).__name__)
        return replace(end, outcome="error", error=str(refused))
    log.warning("paid_image_kept", work_key=piece.key, sha256=sha256, bytes=len(result.data))
    kept.append("kept in Redis for the retry")
    reply = {"kept_in_redis": True, **_image_reply(result, sha256, len(result.data))}
    return replace(end, reply=cast(dict[str, Any], storable(reply)))


async def _stored_image(piece: Piece, fingerprint: str, provider: str) -> PaidImage | None:
    stored = await piece.work.ledger.reply_for(await piece.db(), piece.key, fingerprint)
    if stored is None:
        return None
    reply = stored.reply
    if reply.get("kept_in_redis"):
        return await _image_from_redis(piece, stored, provider)
    store = reply.get("store", "local")  # replies kept before stores had names: local
    try:
        data = await piece.work.media.get(store, reply["storage_path"])
    except ObjectMissingError:
        data = b""
    except StoreError as exc:  # the store is away: not a reason to pay again
        raise RetryableError(str(exc)) from None
    if hashlib.sha256(data).hexdigest() != reply["sha256"]:
        log.warning("paid_image_missing", work_key=piece.key, path=reply["storage_path"])
        await piece.set_aside("file_missing")
        return None
    log.info("paid_reply_reused", work_key=piece.key, call_id=str(stored.call_id))
    kept = Stored(store, reply["storage_path"], reply["sha256"], len(data))
    return PaidImage(_reused_image(stored, data, provider), kept)


async def _image_from_redis(piece: Piece, stored: StoredReply, provider: str) -> PaidImage | None:
    """A paid image the media store refused last time: from Redis into the store now."""
    reply = stored.reply
    try:
        data = await piece.work.stash.image(piece.key, reply["sha256"])
    except Exception as exc:  # Redis away: not a reason to pay again
        why = f"{type(exc).__name__}: {exc}"
        raise RetryableError(
            f"redis: the paid image kept for the retry cannot be read: {why}"
        ) from None
    if data is None or hashlib.sha256(data).hexdigest() != reply["sha256"]:
        log.warning("paid_image_missing", work_key=piece.key, path="redis")  # expired
        await piece.set_aside("file_missing")
        return None
    try:
        put = await piece.work.media.put(data, reply["mime_type"])
    except StoreError as exc:
        raise RetryableError(f"media store: the paid image is still not written: {exc}") from None
    log.info("paid_reply_reused", work_key=piece.key, call_id=str(stored.call_id), kept_in="redis")
    return PaidImage(_reused_image(stored, data, provider), put)


def _reused_image(stored: StoredReply, data: bytes, provider: str) -> ImageResult:
    reply = stored.reply
    return ImageResult(
        data,
        reply["mime_type"],
        provider,
        reply["model"],
        reply["size"],
        reply["quality"] or "",
        reply["revised_prompt"],
        stored.request_id,
        Usage(stored.input_tokens, stored.output_tokens),
    )


# -- the ledgered call ----------------------------------------------------------------
def _start(piece: Piece, provider: str, model: str, fingerprint: str) -> CallStart:
    return CallStart(
        id=uuid.uuid4(),
        job_id=piece.job.id,
        work_key=piece.key,
        queue=piece.job.queue,
        brand_id=piece.brand_id,
        owner_token=piece.lease.owner.token,
        provider=provider,
        model=model,
        fingerprint=fingerprint,
    )


async def _paid(
    piece: Piece,
    start: CallStart,
    send: Callable[[], Awaitable[R]],
    end_of: Callable[[R], Awaitable[CallEnd]],
    *,
    local: bool,
    worst: Decimal | None = None,
) -> R:
    """Ledger row (with the reservation of ``worst`` against the budgets, or the job held
    when they have no room for it), request, reply recorded: in that order, so no paid call
    goes unrecorded (a kill between the first two leaves a row that is later marked
    interrupted, counted although the request may never have left) and none starts beyond
    a budget. A ``local`` provider (offline: in-process, free, never cut off mid-request)
    gets its row once, with its reply."""
    ledger = piece.work.ledger
    begun = not local
    if begun:
        await piece.work.budgets.begin(await piece.db(), start, worst)
        await piece.let_go()  # not held for the seconds a provider works
    try:
        result = await send()
    except asyncio.CancelledError:
        end = CallEnd("interrupted", error="cancelled while waiting for the reply")
        write = ledger.finish if begun else ledger.finish_late
        await settle(write(piece.pool, start, end), "record_interrupted_call")
        piece.work.report(start, end)
        raise
    except Exception as exc:
        # Here only, so a process that never calls a provider never imports the SDKs.
        from alchemy.providers.errors import answered_with_an_error, call_outcome

        outcome = call_outcome(exc) if isinstance(exc, JobError) else "error"
        # An error answer is not billed; a call that timed out or lost its connection
        # may have been: its cost is unknown (NULL), never counted as nothing.
        cost = piece.work.prices.cost(start.model, 0, 0, 0)
        unbilled = answered_with_an_error(exc) and cost is not None
        end = CallEnd(outcome, cost_usd=cost if unbilled else None, error=str(exc))
        await _record_failure(piece, start, end, begun=begun)
        raise
    await _record_reply(piece, start, await end_of(result), begun=begun)
    return result


async def _record_failure(piece: Piece, start: CallStart, end: CallEnd, *, begun: bool) -> None:
    """A call that got no reply: what went wrong is the job's error; a ledger that
    cannot hear of it now leaves the row in flight, marked interrupted later."""
    piece.work.report(start, end)
    ledger = piece.work.ledger
    write = ledger.finish if begun else ledger.finish_late
    try:
        await write(await piece.db(), start, end)
    except TRANSIENT_DB_ERRORS as exc:
        log.warning("provider_call_unrecorded", call_id=str(start.id), error=type(exc).__name__)


async def _record_reply(piece: Piece, start: CallStart, end: CallEnd, *, begun: bool) -> None:
    """A paid reply goes to the ledger before anything else is done with it; with
    PostgreSQL away it is kept in Redis and the job is held until the database is
    back (:mod:`alchemy.paid.stash`)."""
    piece.work.report(start, end)
    ledger = piece.work.ledger
    write = ledger.finish if begun else ledger.finish_late
    try:
        await write(await piece.db(), start, end)
        return
    except TRANSIENT_DB_ERRORS as exc:
        problem = job_error_for(exc)
        cause: BaseException = exc
    try:
        await piece.work.stash.keep(start, end)
        kept = "kept in Redis for the next run"
    except Exception as stash_exc:
        kept = f"and Redis refused it too ({type(stash_exc).__name__}): it is lost"
        log.error("paid_reply_lost", work_key=piece.key, call_id=str(start.id))
    message = f"the paid reply of call {start.id} could not be recorded, {kept}: {problem}"
    log.warning("paid_reply_stashed", work_key=piece.key, call_id=str(start.id))
    raise DependencyUnavailableError(DEPENDENCY, message) from cause


def _failure_outcome(failure: JobError | None) -> str:
    if failure is None:
        return "ok"
    return "refused" if isinstance(failure, ProviderRefusedError) else "error"
