"""What handlers share inside one worker process: the configuration, Redis, a producer for
follow-up jobs, the media stores (:mod:`alchemy.storage`), (opened on first use) one
asyncpg pool and the AI provider clients, and the paid-work machinery (:mod:`alchemy.paid`:
leases, the ledger of provider calls).

The supervisor opens the services once and makes them current for every job task it starts;
a handler reads them with :func:`current_services`. Tests open their own with
:func:`open_services`.

Opening them imports and builds nothing heavy: the providers (pydantic, the SDKs), the
paid-work machinery (the price table, the ledger) and asyncpg are loaded the first time a
handler asks, or before the first fetch by a handler module's ``warm`` hook
(:mod:`alchemy.worker.handlers`). A worker whose queues never use them (the no-op handler)
never holds them in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final

import structlog

from alchemy.config import Config
from alchemy.db.statements import prepare_on, sql_constants
from alchemy.paid.leases import lease_seconds, worst_call_seconds
from alchemy.paid.observe import PaidObserver
from alchemy.queue.producer import Producer
from alchemy.queue.topology import RedisClient
from alchemy.storage.stores import MediaStores, open_stores

if TYPE_CHECKING:
    from alchemy.paid.piece import PaidWork
    from alchemy.providers.registry import Providers

log = structlog.get_logger("alchemy.services")

_current: ContextVar[Services] = ContextVar("alchemy_services")
PING_TIMEOUT: Final = 3.0  # seconds for the database to answer a probe
PREPARE_TIMEOUT: Final = 10.0  # seconds for a warm-up to prepare its statements
# The modules whose SQL every paid piece runs (the lease, the ledger, the budget, the fence)
PAID_SQL: Final = (
    "alchemy.paid.leases",
    "alchemy.paid.ledger",
    "alchemy.paid.budgets",
    "alchemy.paid.piece",
)


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
        self.paid_observer = paid_observer
        self._providers: Providers | None = None
        self._paid: PaidWork | None = None
        self._db: Any = None
        self._db_lock = asyncio.Lock()
        # Tried once per process, whatever the outcome (None: not yet)
        self._connections_warmed: bool | None = None
        self._prepared: set[str] = set()  # on every connection the warm-up opened

    @property
    def providers(self) -> Providers:
        """The provider clients (each built on first use), imported on first access."""
        if self._providers is None:
            from alchemy.providers.registry import Providers

            self._providers = Providers(self.config.providers, self.config.media)
        return self._providers

    @property
    def paid(self) -> PaidWork:
        """The paid-work machinery (leases, ledger, prices), built on first access."""
        if self._paid is None:
            from alchemy.paid.piece import PaidWork

            self._paid = PaidWork(self.config, self.redis, self.db, self.media, self.paid_observer)
        return self._paid

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

    async def warm(
        self,
        *,
        text: bool = False,
        images: bool = False,
        load: Sequence[Callable[[], object]] = (),
        statements_of: Sequence[str] = (),
    ) -> None:
        """Load before the first job what it would load on the event loop (a handler
        module's ``warm`` hook calls this): the paid-work machinery, the SDK clients of the
        text providers a job may use (``text``) and of the image provider (``images``),
        whatever ``load`` loads (a dictionary), the database pool's connections, and on
        each of them the SQL constants of the modules named in ``statements_of`` and of the
        paid-work modules (alchemy.db.statements).

        The imports and ``load`` run in a thread (the SDKs take about a second), the rest
        on the loop. A database that does not answer within ``PING_TIMEOUT`` is left for
        the first job (and the dependency probe) to report."""
        modules = ["alchemy.paid.piece", *self.providers.modules(text=text, images=images)]

        def load_all() -> None:
            for name in modules:
                importlib.import_module(name)
            for step in load:
                step()

        await asyncio.to_thread(load_all)
        _ = self.paid
        self.providers.warm(text=text, images=images)
        if self._connections_warmed is None:
            try:
                async with asyncio.timeout(PING_TIMEOUT):
                    await self.open_connections()
                self._connections_warmed = True
            except Exception as exc:  # warming is best effort; the first job reports it
                self._connections_warmed = False
                log.warning("database_not_warmed", error=f"{type(exc).__name__}: {exc}")
        if not self._connections_warmed:
            return  # no database now: the first jobs prepare what they run
        sql_modules = [importlib.import_module(name) for name in (*PAID_SQL, *statements_of)]
        statements = [sql for sql in sql_constants(sql_modules) if sql not in self._prepared]
        try:
            async with asyncio.timeout(PREPARE_TIMEOUT):
                await self.prepare_statements(statements)
        except Exception as exc:
            log.warning("statements_not_prepared", error=f"{type(exc).__name__}: {exc}")

    async def prepare_statements(self, statements: Sequence[str]) -> None:
        """Prepare ``statements`` on each connection the warm-up opened, all held at once
        (so each is a different one)."""
        if not statements:
            return
        pool = await self.db()
        held = await asyncio.gather(*(pool.acquire() for _ in range(self._warm_connections())))
        try:
            await asyncio.gather(*(prepare_on(connection, statements) for connection in held))
        finally:
            for connection in held:
                await pool.release(connection)
        self._prepared.update(statements)

    async def open_connections(self) -> None:
        """Open as many pooled connections as the queues' jobs can use at once (at most
        ``pool_size``), so the first jobs do not each wait for a connection of their own."""
        pool = await self.db()
        held = await asyncio.gather(*(pool.acquire() for _ in range(self._warm_connections())))
        for connection in held:
            await pool.release(connection)

    def _warm_connections(self) -> int:
        running = sum(queue.concurrency for queue in self.config.queues if queue.enabled)
        return max(1, min(self.config.database.pool_size, running))

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
        if self._providers is not None:
            await self._providers.aclose()
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
        warn_if_the_lease_is_short(config, lease_seconds(config.providers, config.media))
        token = _current.set(services)
        try:
            yield services
        finally:
            _current.reset(token)
            await services.aclose()
