"""What handlers share inside one worker process: the configuration, Redis, a producer for
follow-up jobs, the media stores (:mod:`alchemy.storage`), (opened on first use) one
asyncpg pool and the AI provider clients, and the paid-work machinery (:mod:`alchemy.paid`:
leases, the ledger of provider calls).

The supervisor opens the services once and makes them current for every job task it starts;
a handler reads them with :func:`current_services`. Tests open their own with
:func:`open_services`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any, Final

import structlog

from alchemy.config import Config
from alchemy.paid.leases import worst_call_seconds
from alchemy.paid.observe import PaidObserver
from alchemy.paid.piece import PaidWork
from alchemy.providers.registry import Providers
from alchemy.queue.producer import Producer
from alchemy.queue.topology import RedisClient
from alchemy.storage.stores import MediaStores, open_stores

log = structlog.get_logger("alchemy.services")

_current: ContextVar[Services] = ContextVar("alchemy_services")
PING_TIMEOUT: Final = 3.0  # seconds for the database to answer a probe


class Services:
    def __init__(
        self,
        config: Config,
        redis: RedisClient,
        media: MediaStores,
        *,
        paid_observer: PaidObserver | None = None,
    ) -> None:
        self.config = config
        self.redis = redis
        self.media = media
        self.producer = Producer(redis, prefix=config.redis.prefix)
        self.providers = Providers(config.providers, config.media)
        self.paid = PaidWork(config, redis, self.db, media, paid_observer)
        self._db: Any = None
        self._db_lock = asyncio.Lock()
        self._closers: list[Any] = []

    async def db(self) -> Any:
        """The process's asyncpg pool, created on first use."""
        if self._db is None:
            async with self._db_lock:
                if self._db is None:
                    import asyncpg

                    from alchemy.db import init_connection

                    self._db = await asyncpg.create_pool(
                        self.config.database.url.reveal(),
                        min_size=1,
                        max_size=self.config.database.pool_size,
                        init=init_connection,
                    )
        return self._db

    async def ping_database(self) -> None:
        """Return when PostgreSQL answers ``SELECT 1`` through the pool within
        ``PING_TIMEOUT`` seconds; raise what went wrong otherwise (the probe of the ``postgres``
        dependency). A pooled connection the server dropped (it restarted) fails once:
        then every idle connection is replaced and the ping is tried again."""
        async with asyncio.timeout(PING_TIMEOUT):
            pool = await self.db()
            try:
                await pool.fetchval("SELECT 1")
            except Exception:
                await pool.expire_connections()
                await pool.fetchval("SELECT 1")

    async def aclose(self) -> None:
        await self.providers.aclose()
        if self._db is not None:
            await self._db.close()
            self._db = None


def current_services() -> Services:
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("no alchemy services are open in this context") from None


def warn_if_the_lease_is_short(config: Config, lease: float) -> None:
    """A lease shorter than the worst a piece's calls can take lets a slow (not dead)
    owner lose its piece to another runner, which then pays for it again."""
    worst = worst_call_seconds(config.providers, config.media)
    if lease < worst:
        log.warning(
            "work_lease_short",
            work_lease_s=lease,
            worst_call_s=worst,
            consequence=(
                "a provider call slower than the lease lets another process take the work"
                " over and pay for it again; raise providers.work_lease or set it to 0"
            ),
        )


OFFLINE_CONSEQUENCE: Final = (
    "no model is called: text is drafts marked [OFFLINE DRAFT], images are placeholders, and"
    " every row written is flagged offline (docs/schema.md); set ANTHROPIC_API_KEY /"
    " OPENAI_API_KEY, and providers.forbid_offline = true where placeholders must never go out"
)


def log_providers(config: Config) -> None:
    """Say once at startup which providers serve by default: a warning, loud, when the
    offline provider does (``offline_provider_in_use``), else ``providers_in_use``."""
    providers = config.providers
    chosen = {
        "text_provider": f"{providers.text_provider} -> {providers.text}",
        "image_provider": f"{providers.image_provider} -> {providers.image}",
    }
    uses = providers.offline_uses
    if not uses:
        log.info("providers_in_use", **chosen)
        return
    keys = [
        name
        for name, key in (
            ("ANTHROPIC_API_KEY", providers.anthropic_api_key),
            ("OPENAI_API_KEY", providers.openai_api_key),
        )
        if key
    ]
    log.warning(
        "offline_provider_in_use",
        provider="offline",
        uses=list(uses),
        keys_set=keys,
        consequence=OFFLINE_CONSEQUENCE,
        **chosen,
    )


@contextlib.asynccontextmanager
async def open_services(
    config: Config, redis: RedisClient, *, paid_observer: PaidObserver | None = None
) -> AsyncIterator[Services]:
    """The services of a worker process. Its media stores are opened first: a store that
    refuses its credentials raises :class:`~alchemy.errors.ConfigError` here, at startup."""
    async with open_stores(config) as media:
        services = Services(config, redis, media, paid_observer=paid_observer)
        log_providers(config)
        warn_if_the_lease_is_short(config, services.paid.lease_seconds)
        token = _current.set(services)
        try:
            yield services
        finally:
            _current.reset(token)
            await services.aclose()
