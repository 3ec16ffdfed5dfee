"""The shipped handlers' warm hooks build, before any job, what a first job would: both
SDK clients (both keys are set), the image provider, the paid-work machinery, the
syllable table and the database pool's connections; without touching the network."""

from __future__ import annotations

from collections.abc import Callable

from redis.asyncio import Redis

from alchemy.config import Config
from alchemy.content import readability
from alchemy.handlers import content, media, research
from alchemy.paid import budgets, leases, ledger, piece
from alchemy.services import open_services
from tests.fakes.ai_server import FakeAI


async def test_the_three_warm_hooks_build_what_a_first_job_needs(
    redis: Redis, make_app_config: Callable[..., Config], fake_ai: FakeAI
) -> None:
    config = make_app_config()
    async with open_services(config, redis) as services:
        for hook in (content.warm, research.warm, media.warm):
            await hook()
        providers = services.providers
        assert sorted(providers._clients) == ["anthropic", "openai"]
        assert {"anthropic", "openai"} <= set(providers._text)
        assert "openai" in providers._images
        assert services._paid is not None
        assert services._db is not None
        assert services._db.get_size() == min(
            config.database.pool_size, sum(q.concurrency for q in config.queues)
        )
        assert readability._table is not None
    assert fake_ai.calls == []


async def test_warm_leaves_out_a_provider_without_a_key(
    redis: Redis, make_app_config: Callable[..., Config]
) -> None:
    config = make_app_config(providers={"text_provider": "openai", "anthropic_api_key": ""})
    async with open_services(config, redis) as services:
        await research.warm()
        assert sorted(services.providers._clients) == ["openai"]


async def test_warm_follows_the_auto_choice_of_the_shipped_config(
    redis: Redis, make_app_config: Callable[..., Config], fake_ai: FakeAI
) -> None:
    """``auto`` (the shipped default) warms the providers it resolves to: with both keys,
    Anthropic's and OpenAI's clients; with none, the offline provider (nothing to build)."""
    config = make_app_config(providers={"text_provider": "auto", "image_provider": "auto"})
    async with open_services(config, redis) as services:
        for hook in (content.warm, research.warm, media.warm):
            await hook()
        assert sorted(services.providers._clients) == ["anthropic", "openai"]
        assert "openai" in services.providers._images
    keyless = make_app_config(
        providers={
            "text_provider": "auto",
            "image_provider": "auto",
            "anthropic_api_key": "",
            "openai_api_key": "",
        }
    )
    async with open_services(keyless, redis) as services:
        for hook in (content.warm, research.warm, media.warm):
            await hook()
        assert services.providers._clients == {}
    assert fake_ai.calls == []


async def test_every_pooled_connection_has_the_handlers_statements_prepared_before_a_job(
    redis: Redis, make_app_config: Callable[..., Config]
) -> None:
    """The server's own list of each connection's prepared statements
    (``pg_prepared_statements``) holds, after the hooks and before any job, what a content,
    research and media job and their paid piece run first: asyncpg would otherwise prepare
    each on its first run on each connection (a round trip and type lookups)."""
    config = make_app_config()
    first_runs = [
        content.LOAD_ROW,
        content.INSERT_CONTENT,
        research.LOAD_IDEA,
        media.UPSERT_PROCESSING,
        leases.CLAIM,
        ledger.BEGIN,
        budgets.USE,
        piece.FENCE_AND_CONSUME,
    ]
    async with open_services(config, redis) as services:
        for hook in (content.warm, research.warm, media.warm):
            await hook()
        pool = await services.db()
        size = pool.get_size()
        assert size == min(config.database.pool_size, sum(q.concurrency for q in config.queues))
        held = [await pool.acquire() for _ in range(size)]
        try:
            for connection in held:
                rows = await connection.fetch("SELECT statement FROM pg_prepared_statements")
                prepared = {row["statement"] for row in rows}
                missing = [sql.strip()[:60] for sql in first_runs if sql not in prepared]
                assert not missing, f"not prepared on one connection: {missing}"
            assert pool.get_size() == size  # the same connections, none opened since
        finally:
            for connection in held:
                await pool.release(connection)


async def test_without_the_warm_up_a_connection_has_nothing_prepared(
    redis: Redis, make_app_config: Callable[..., Config]
) -> None:
    """The control for the test above: the same check on a pool nobody warmed finds
    none of the statements, so that test sees the warm-up's work, not asyncpg's."""
    config = make_app_config()
    async with open_services(config, redis) as services:
        pool = await services.db()
        async with pool.acquire() as connection:
            rows = await connection.fetch("SELECT statement FROM pg_prepared_statements")
        assert content.LOAD_ROW not in {row["statement"] for row in rows}
        assert ledger.BEGIN not in {row["statement"] for row in rows}
