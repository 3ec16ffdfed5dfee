"""What handlers share inside one worker process: the configuration, Redis, a producer for
follow-up jobs, and (opened on first use) one asyncpg pool and the AI provider clients.

The supervisor opens the services once and makes them current for every job task it starts;
a handler reads them with :func:`current_services`. Tests open their own with
:func:`open_services`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any

from alchemy.config import Config
from alchemy.providers.registry import Providers
from alchemy.queue.producer import Producer
from alchemy.queue.topology import RedisClient

_current: ContextVar[Services] = ContextVar("alchemy_services")
PING_TIMEOUT = 3.0  # seconds for the database to answer a probe


class Services:
    def __init__(self, config: Config, redis: RedisClient) -> None:
        self.config = config
        self.redis = redis
        self.producer = Producer(redis, prefix=config.redis.prefix)
        self.providers = Providers(config.providers, config.media)
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
        """Raise unless PostgreSQL answers ``SELECT 1`` (the probe of the "postgres"
        dependency that handler modules list in ``REQUIRES``)."""
        pool = await self.db()
        await pool.fetchval("SELECT 1", timeout=PING_TIMEOUT)

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


@contextlib.asynccontextmanager
async def open_services(config: Config, redis: RedisClient) -> AsyncIterator[Services]:
    services = Services(config, redis)
    token = _current.set(services)
    try:
        yield services
    finally:
        _current.reset(token)
        await services.aclose()
