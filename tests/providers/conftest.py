from collections.abc import AsyncIterator

import pytest

from alchemy.providers.registry import Providers
from tests.fakes.ai_server import FakeAI
from tests.fakes.fixtures import fake_ai, sdk_env
from tests.providers.support import providers_for

__all__ = ["fake_ai", "sdk_env"]


@pytest.fixture
async def providers(fake_ai: FakeAI) -> AsyncIterator[Providers]:
    registry = providers_for(fake_ai)
    yield registry
    await registry.aclose()


@pytest.fixture(params=["anthropic", "openai"])
def name(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value
