"""A piece of paid work as a handler holds it::

    async with services.paid.piece(job, "content:<row id>") as piece:   # the lease
        ...                                    # already committed? return
        result = await generate_structured(piece.text(provider), request)  # ledgered
        async with piece.commit() as conn:     # fenced: only while we hold the lease
            ...                                # write the result

Every provider call of the piece goes through :meth:`Piece.text` or :meth:`Piece.image`
(:mod:`alchemy.paid.calls`): a stored reply to the same request is reused, otherwise the
call is written to the ledger, sent (with its ledger id as ``X-Alchemy-Call``), and its
reply recorded before anything is done with it.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import structlog

from alchemy.config import Config
from alchemy.errors import PermanentError
from alchemy.paid.budgets import Budgets
from alchemy.paid.calls import PaidImage, PaidText, call_image, settle
from alchemy.paid.leases import Lease, LeaseLostError, Leases, Owner, lease_seconds
from alchemy.paid.ledger import CallEnd, CallStart, Ledger
from alchemy.paid.observe import PaidObserver, ProviderCall
from alchemy.paid.stash import ReplyStash
from alchemy.providers.base import (
    ImageProvider,
    ImageRequest,
    TextProvider,
)
from alchemy.providers.prices import shipped_prices
from alchemy.queue.identity import IdentityClaims
from alchemy.queue.job import Job
from alchemy.queue.topology import RedisClient
from alchemy.storage.stores import MediaStores

log = structlog.get_logger("alchemy.paid")

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


class PaidWork:
    """The paid-work machinery of one process: its leases, the ledger, the Redis stash of
    replies, the price table, the media stores image bytes go to, and who hears of calls
    (the metrics)."""

    def __init__(
        self,
        config: Config,
        redis: RedisClient,
        db: Callable[[], Awaitable[Any]],
        media: MediaStores,
        observer: PaidObserver | None = None,
    ) -> None:
        self.lease_seconds = lease_seconds(config.providers, config.media)
        self.leases = Leases(IdentityClaims(redis, prefix=config.redis.prefix), self.lease_seconds)
        self.ledger = Ledger()
        self.budgets = Budgets(config.budgets, self.lease_seconds)
        self.max_tokens = config.providers.max_tokens
        self.stash = ReplyStash(redis, prefix=config.redis.prefix)
        self.prices = shipped_prices()
        self.media = media
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
            if not piece.committed and not await settle(piece.release_lease(), "release_lease"):
                # PostgreSQL is away: say in Redis that this run has ended, so that the next
                # run, in any process, takes the lease over at once instead of waiting.
                await settle(self.leases.note_ended(owner), "note_ended")
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

    def text(self, provider: TextProvider) -> PaidText:
        """``provider`` as a text provider whose every call goes through this piece."""
        return PaidText(self, provider)

    async def image(self, provider: ImageProvider, request: ImageRequest) -> PaidImage:
        """One image: a stored one for the same request, or a ledgered call whose bytes go
        to the media store before the reply is recorded."""
        return await call_image(self, provider, request)

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


async def _release(pool: Any, conn: Any) -> None:
    """Back to the pool; a connection the server dropped is closed by the pool itself."""
    try:
        await pool.release(conn)
    except Exception as exc:
        log.warning("paid_step_failed", step="release_connection", error=type(exc).__name__)
