"""End-to-end fixtures: a worker running the real handlers in this event loop, against
the session's test database, real Redis, and the fake AI server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from alchemy.config import Config, parse_config
from tests.conftest import build_config_dict
from tests.fakes.ai_server import FakeAI
from tests.fakes.fixtures import database_url, db, fake_ai, provider_settings, sdk_env
from tests.handlers.support import queue_tables

__all__ = ["database_url", "db", "fake_ai", "sdk_env"]


@pytest.fixture
def media_dir(tmp_path: Path) -> Path:
    return tmp_path / "media"


@pytest.fixture
def make_app_config(
    prefix: str, fake_ai: FakeAI, database_url: str, media_dir: Path
) -> Callable[..., Config]:
    """The worker's config: every queue, providers on the fake, media in tmp_path."""

    def make(
        providers: dict[str, Any] | None = None,
        queues: dict[str, Any] | None = None,
        database: dict[str, Any] | None = None,
        media: dict[str, Any] | None = None,
        budgets: dict[str, Any] | None = None,
    ) -> Config:
        raw = build_config_dict(
            prefix,
            queue_tables(**(queues or {})),
            redis={"block_timeout": 0.2},
            database={"url": database_url, "pool_size": 4, **(database or {})},
            providers=provider_settings(fake_ai, **(providers or {})),
            media={"directory": str(media_dir), "allowed_hosts": [fake_ai.origin], **(media or {})},
            budgets=budgets or {},
        )
        return parse_config(raw)

    return make
