"""Fixtures shared by tests/providers, tests/db and tests/handlers: the fake AI server, a
clean SDK environment, and the session's test database. Each of those conftests imports
what it needs from here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from alchemy.db import init_connection
from tests.fakes.ai_server import FakeAI
from tests.fakes.postgres import SessionDatabase, truncate_all

SDK_ENVIRONMENT = (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_CUSTOM_HEADERS",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)
ANTHROPIC_KEY = "sk-ant-test-key-0123456789"
OPENAI_KEY = "sk-openai-test-key-0123456789"


@pytest.fixture
def sdk_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy for 127.0.0.1 (httpx2 would send even loopback through one) and none of
    the variables the SDKs read behind our back."""
    for name in SDK_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
async def fake_ai(sdk_env: None) -> AsyncIterator[FakeAI]:
    fake = FakeAI()
    await fake.start()
    yield fake
    await fake.stop()
    assert not fake.problems, f"requests the real API would refuse: {fake.problems}"


def provider_settings(fake: FakeAI, **overrides: Any) -> dict[str, Any]:
    """A ``[providers]`` table pointing both SDKs at the fake, strict, no SDK retries."""
    return {
        "anthropic_api_key": ANTHROPIC_KEY,
        "openai_api_key": OPENAI_KEY,
        "anthropic_base_url": fake.anthropic_base_url,
        "openai_base_url": fake.openai_base_url,
        "text_provider": "anthropic",
        "image_provider": "openai",
        "strict_responses": True,
        "max_retries": 0,
        "timeout": 5.0,
        **overrides,
    }


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    url = SessionDatabase.acquire()
    yield url
    SessionDatabase.release()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the session database, every table emptied first."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4, init=init_connection)
    async with pool.acquire() as conn:
        await truncate_all(conn)
    yield pool
    await pool.close()
