"""A piece of paid work as a handler holds it::

    async with services.paid.piece(job, "content:<row id>") as piece:   # the lease
        ...                                    # already committed? return
        result = await generate_structured(piece.text(provider), request)  # ledgered
        async with piece.commit() as conn:     # fenced: only while we hold the lease
            ...                                # write the result

Every provider call of the piece goes through :meth:`Piece.call_text` or
:meth:`Piece.image`: a stored reply to the same request is reused, otherwise the call is
written to the ledger, sent (with its ledger id as ``X-Alchemy-Call``), and its reply
recorded before anything is done with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, TypeVar, cast

import structlog
from redis.asyncio import Redis

from alchemy.config import Config
from alchemy.content.storage import Stored, store_bytes
from alchemy.db import DEPENDENCY, TRANSIENT_DB_ERRORS, job_error_for
from alchemy.errors import DependencyUnavailableError, JobError, PermanentError, RetryableError
from alchemy.paid.leases import Lease, LeaseLostError, Leases, Owner, lease_seconds
from alchemy.paid.ledger import CallEnd, CallStart, Ledger
from alchemy.paid.observe import PaidObserver, ProviderCall
from alchemy.paid.stash import ReplyStash
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
from alchemy.providers.prices import shipped_prices
from alchemy.queue.identity import IdentityClaims
from alchemy.queue.job import Job
from alchemy.storable import storable

log = structlog.get_logger("alchemy.paid")
R = TypeVar("R", TextResult, ImageResult)

SETTLE_TIMEOUT: Final = 5.0  # seconds a bookkeeping step may take after a cancellation
# The fence of a result's transaction, in one statement: release the lease if this owner
# ($2) still holds it (the row stays locked until the commit), and then mark the piece's
# stored replies used by this job ($3). Returns 1, or 0 when the lease was lost.
FENCE_AND_CONSUME: Final = """
WITH released AS (
    UPDATE work_leases SET owner_token = NULL, released_at = now(), expires_at = now()
    WHERE work_key = $1 AND owner_token = $2
    RETURNING work_key
), used AS (
    UPDATE provider_calls SET consumed_at = now(), consumed_by = $3
    WHERE work_key IN (SELECT work_key FROM released) AND outcome = 'ok'
      AND consumed_at IS NULL
)
SELECT count(*) FROM released
"""


async def settle(step: Coroutine[Any, Any, object], what: str) -> None:
    """Run a bookkeeping step to its end even if the job is cancelled meanwhile (it goes
    on in the background then, and the cancellation goes on too), bounded in time; log
    instead of raising (the job's own outcome is what matters)."""
    try:
        async with asyncio.timeout(SETTLE_TIMEOUT):
            await asyncio.shield(step)
    except Exception as exc:
        log.warning("paid_step_failed", step=what, error=f"{type(exc).__name__}: {exc}")


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


class PaidWork:
    """The paid-work machinery of one process: its leases, the ledger, the Redis stash of
    replies, the price table, and who hears of calls (the metrics)."""

    def __init__(
        self,
        config: Config,
        redis: Redis,
        db: Callable[[], Awaitable[Any]],
        observer: PaidObserver | None = None,
    ) -> None:
        self.lease_seconds = lease_seconds(config.providers, config.media)
        self.leases = Leases(IdentityClaims(redis, prefix=config.redis.prefix), self.lease_seconds)
        self.ledger = Ledger()
        self.stash = ReplyStash(redis, prefix=config.redis.prefix)
        self.prices = shipped_prices()
        self.media_directory = Path(config.media.directory)
        self._db = db
        self.observer = observer

    @property
    def observer(self) -> PaidObserver | None:
        return self._observer

    @observer.setter
    def observer(self, observer: PaidObserver | None) -> None:
        self._observer = observer
        self.leases.observer = observer

    @contextlib.asynccontextmanager
    async def piece(self, job: Job, work_key: str) -> AsyncIterator[Piece]:
        """Hold the lease of ``work_key`` for this run of ``job`` (or raise
        :class:`~alchemy.errors.DeferredError`), and give it up on the way out unless a
        commit released it."""
        pool = await self._db()
        owner = Owner.of(job)
        conn = await pool.acquire()
        try:
            lease = await self.leases.acquire(conn, work_key, owner)
        except BaseException:
            await _release(pool, conn)
            raise
        piece = Piece(self, pool, conn, job, lease)
        try:
            if not lease.fresh:
                await piece.recover()
            yield piece
        except LeaseLostError:
            await settle(piece.set_aside("lease_lost"), "set_aside")
            raise
        except PermanentError as exc:
            # A retry by hand (dead retry) pays for a fresh reply, not this run's again.
            await settle(piece.set_aside(f"failed: {type(exc).__name__}"), "set_aside")
            raise
        finally:
            if not piece.committed:
                await settle(piece.release_lease(), "release_lease")
            await piece.let_go()
            self.leases.forget(owner)

    def report(self, start: CallStart, end: CallEnd) -> None:
        if self.observer is None:
            return
        self.observer.on_provider_call(
            ProviderCall(
                start.provider,
                start.model,
                end.outcome,
                end.input_tokens,
                end.output_tokens,
                end.images,
                end.cost_usd,
            )
        )


class Piece:
    """One run's hold on a piece of paid work (see the module docstring).

    The run's statements go through one pooled connection (:meth:`db`), given back to the
    pool while a provider call is out (seconds, for a real one) and taken again after."""

    def __init__(self, work: PaidWork, pool: Any, conn: Any, job: Job, lease: Lease) -> None:
        self.work = work
        self.pool = pool
        self._conn = conn
        self.job = job
        self.lease = lease
        self.brand_id: uuid.UUID | None = None  # for spend by brand, once the handler knows it
        self.committed = False

    @property
    def key(self) -> str:
        return self.lease.work_key

    async def db(self) -> Any:
        """The run's connection (taken from the pool when it has none)."""
        if self._conn is None:
            self._conn = await self.pool.acquire()
        return self._conn

    async def let_go(self) -> None:
        """Give the connection back to the pool (before a provider call, and at the end)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await _release(self.pool, conn)

    async def release_lease(self) -> None:
        await self.work.leases.release(self._conn or self.pool, self.lease)

    async def recover(self) -> None:
        """Before the first call on a piece that was leased before: write the replies kept
        in Redis while PostgreSQL was away, and mark the calls earlier owners left in
        flight as interrupted."""
        db = await self.db()
        try:
            kept = await self.work.stash.take(self.key)
        except Exception as exc:  # Redis away: the ledger alone decides, as without a stash
            log.warning("paid_stash_unreadable", work_key=self.key, error=f"{type(exc).__name__}")
            kept = {}
        for start, end in kept.values():
            await self.work.ledger.finish_late(db, start, end)
            log.info("paid_reply_recorded_late", work_key=self.key, call_id=str(start.id))
        if kept:
            with contextlib.suppress(Exception):
                await self.work.stash.drop(self.key, kept)
        interrupted = await self.work.ledger.interrupt(db, self.key, self.lease.owner.token)
        if interrupted:
            log.warning("provider_calls_interrupted", work_key=self.key, calls=interrupted)

    async def set_aside(self, why: str) -> None:
        owner = self.lease.owner.token
        await self.work.ledger.set_aside(self._conn or self.pool, self.key, owner, why)

    @contextlib.asynccontextmanager
    async def commit(self) -> AsyncIterator[Any]:
        """A transaction that commits the result only while this run holds the lease
        (:class:`LeaseLostError` otherwise), uses up the piece's stored replies, and
        releases the lease with the commit."""
        conn = await self.db()
        async with conn.transaction():
            owner = self.lease.owner.token
            if not await conn.fetchval(FENCE_AND_CONSUME, self.key, owner, self.job.id):
                await self.work.leases.lost(conn, self.lease)
            yield conn
        self.committed = True

    # -- text ---------------------------------------------------------------------------
    def text(self, provider: TextProvider) -> PaidText:
        """``provider`` as a text provider whose every call goes through this piece."""
        return PaidText(self, provider)

    async def call_text(self, provider: TextProvider, request: TextRequest) -> TextResult:
        """One text call: a stored reply to the same request, or a ledgered call. A reply
        that cannot be used (a refusal, cut off) is recorded, then its failure raised."""
        fingerprint = text_fingerprint(provider.name, request)
        if not self.lease.fresh:
            stored = await self.work.ledger.reply_for(await self.db(), self.key, fingerprint)
            if stored is not None:
                log.info("paid_reply_reused", work_key=self.key, call_id=str(stored.call_id))
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
        start = self._start(provider.name, request.model, fingerprint)

        async def send() -> TextResult:
            return await provider.send(replace(request, call_id=str(start.id)))

        result = await self._paid(start, send, self._text_end, local=provider.local)
        raise_failure(result)
        return result

    def _reply_end(self, result: TextResult | ImageResult, images: int) -> CallEnd:
        """A call that got a reply: billed, usable (``ok``) or not."""
        usage = result.usage
        return CallEnd(
            outcome=_failure_outcome(result.failure),
            request_id=result.request_id,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            images=images,
            cost_usd=self.work.prices.cost(
                result.model, usage.input_tokens, usage.output_tokens, images
            ),
            error=str(result.failure) if result.failure else None,
        )

    async def _text_end(self, result: TextResult) -> CallEnd:
        end = self._reply_end(result, 0)
        if result.failure:
            return end
        reply = {"text": storable(result.text), "model": result.model}
        return replace(end, reply={**reply, "stop_reason": result.stop_reason})

    # -- images -------------------------------------------------------------------------
    async def image(self, provider: ImageProvider, request: ImageRequest) -> PaidImage:
        """One image: a stored one for the same request, or a ledgered call whose bytes go
        to the media store before the reply is recorded."""
        fingerprint = image_fingerprint(provider.name, request)
        if not self.lease.fresh:
            reused = await self._stored_image(fingerprint, provider.name)
            if reused is not None:
                return reused
        start = self._start(provider.name, request.model, fingerprint)
        stored: list[Stored] = []

        async def send() -> ImageResult:
            return await provider.send(replace(request, call_id=str(start.id)))

        async def end_of(result: ImageResult) -> CallEnd:
            return await self._image_end(result, stored)

        result = await self._paid(start, send, end_of, local=provider.local)
        raise_failure(result)
        if not stored:  # the media store refused the bytes: recorded as an error
            raise RetryableError("media store: the image could not be written (logged)")
        return PaidImage(result, stored[0])

    async def _image_end(self, result: ImageResult, stored: list[Stored]) -> CallEnd:
        end = self._reply_end(result, result.images)
        if result.failure:
            return end
        try:
            kept = await store_bytes(self.work.media_directory, result.data, result.mime_type)
        except OSError as exc:
            log.error("media_store_failed", error=f"{type(exc).__name__}: {exc}")
            return replace(end, outcome="error", error=f"media store: {exc}")
        stored.append(kept)
        reply = {
            "storage_path": kept.path,
            "sha256": kept.sha256,
            "bytes": kept.bytes,
            "mime_type": result.mime_type,
            "size": result.size,
            "quality": result.quality,
            "revised_prompt": result.revised_prompt,
            "model": result.model,
        }
        return replace(end, reply=cast(dict[str, Any], storable(reply)))

    async def _stored_image(self, fingerprint: str, provider: str) -> PaidImage | None:
        stored = await self.work.ledger.reply_for(await self.db(), self.key, fingerprint)
        if stored is None:
            return None
        reply = stored.reply
        path = self.work.media_directory / reply["storage_path"]
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError:
            data = b""
        if hashlib.sha256(data).hexdigest() != reply["sha256"]:
            log.warning("paid_image_missing", work_key=self.key, path=reply["storage_path"])
            await self.set_aside("file_missing")
            return None
        log.info("paid_reply_reused", work_key=self.key, call_id=str(stored.call_id))
        result = ImageResult(
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
        return PaidImage(result, Stored(reply["storage_path"], reply["sha256"], len(data)))

    # -- the ledgered call ----------------------------------------------------------------
    def _start(self, provider: str, model: str, fingerprint: str) -> CallStart:
        return CallStart(
            id=uuid.uuid4(),
            job_id=self.job.id,
            work_key=self.key,
            queue=self.job.queue,
            brand_id=self.brand_id,
            owner_token=self.lease.owner.token,
            provider=provider,
            model=model,
            fingerprint=fingerprint,
        )

    async def _paid(
        self,
        start: CallStart,
        send: Callable[[], Awaitable[R]],
        end_of: Callable[[R], Awaitable[CallEnd]],
        *,
        local: bool,
    ) -> R:
        """Ledger row, request, reply recorded: in that order, so no paid call goes
        unrecorded (a kill between the first two leaves a row that is later marked
        interrupted, counted although the request may never have left). A ``local``
        provider (offline: in-process, free, never cut off mid-request) gets its row once,
        with its reply."""
        ledger = self.work.ledger
        begun = not local
        if begun:
            await ledger.begin(await self.db(), start)
            await self.let_go()  # not held for the seconds a provider works
        try:
            result = await send()
        except asyncio.CancelledError:
            end = CallEnd("interrupted", error="cancelled while waiting for the reply")
            write = ledger.finish if begun else ledger.finish_late
            await settle(write(self.pool, start, end), "record_interrupted_call")
            self.work.report(start, end)
            raise
        except Exception as exc:
            # Here only, so a process that never calls a provider never imports the SDKs.
            from alchemy.providers.errors import answered_with_an_error, call_outcome

            outcome = call_outcome(exc) if isinstance(exc, JobError) else "error"
            # An error answer is not billed; a call that timed out or lost its connection
            # may have been: its cost is unknown (NULL), never counted as nothing.
            cost = self.work.prices.cost(start.model, 0, 0, 0)
            unbilled = answered_with_an_error(exc) and cost is not None
            end = CallEnd(outcome, cost_usd=cost if unbilled else None, error=str(exc))
            await self._record_failure(start, end, begun=begun)
            raise
        await self._record_reply(start, await end_of(result), begun=begun)
        return result

    async def _record_failure(self, start: CallStart, end: CallEnd, *, begun: bool) -> None:
        """A call that got no reply: what went wrong is the job's error; a ledger that
        cannot hear of it now leaves the row in flight, marked interrupted later."""
        self.work.report(start, end)
        ledger = self.work.ledger
        write = ledger.finish if begun else ledger.finish_late
        try:
            await write(await self.db(), start, end)
        except TRANSIENT_DB_ERRORS as exc:
            log.warning("provider_call_unrecorded", call_id=str(start.id), error=type(exc).__name__)

    async def _record_reply(self, start: CallStart, end: CallEnd, *, begun: bool) -> None:
        """A paid reply goes to the ledger before anything else is done with it; with
        PostgreSQL away it is kept in Redis and the job is held until the database is
        back (:mod:`alchemy.paid.stash`)."""
        self.work.report(start, end)
        ledger = self.work.ledger
        write = ledger.finish if begun else ledger.finish_late
        try:
            await write(await self.db(), start, end)
            return
        except TRANSIENT_DB_ERRORS as exc:
            problem = job_error_for(exc)
            cause: BaseException = exc
        try:
            await self.work.stash.keep(start, end)
            kept = "kept in Redis for the next run"
        except Exception as stash_exc:
            kept = f"and Redis refused it too ({type(stash_exc).__name__}): it is lost"
            log.error("paid_reply_lost", work_key=self.key, call_id=str(start.id))
        message = f"the paid reply of call {start.id} could not be recorded, {kept}: {problem}"
        log.warning("paid_reply_stashed", work_key=self.key, call_id=str(start.id))
        raise DependencyUnavailableError(DEPENDENCY, message) from cause


class PaidText:
    """A text provider whose calls are the piece's ledgered calls."""

    def __init__(self, piece: Piece, provider: TextProvider) -> None:
        self.piece = piece
        self.provider = provider
        self.name = provider.name
        self.local = provider.local

    async def send(self, request: TextRequest) -> TextResult:
        return await self.piece.call_text(self.provider, request)

    async def generate(self, request: TextRequest) -> TextResult:
        return await self.piece.call_text(self.provider, request)


async def _release(pool: Any, conn: Any) -> None:
    """Back to the pool; a connection the server dropped is closed by the pool itself."""
    try:
        await pool.release(conn)
    except Exception as exc:
        log.warning("paid_step_failed", step="release_connection", error=type(exc).__name__)


def _failure_outcome(failure: JobError | None) -> str:
    if failure is None:
        return "ok"
    return "refused" if isinstance(failure, ProviderRefusedError) else "error"
