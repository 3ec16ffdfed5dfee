"""Building provider objects from a config that points at the fake."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from alchemy.config import parse_config
from alchemy.providers.base import TextRequest
from alchemy.providers.registry import Providers
from tests.fakes.ai_server import FakeAI
from tests.fakes.fixtures import provider_settings


class Pitch(BaseModel):
    headline: str = Field(min_length=1, description="a short headline")
    score: int = Field(ge=0, le=100)
    tags: list[str]


def providers_for(fake: FakeAI, media: dict[str, Any] | None = None, **overrides: Any) -> Providers:
    raw: dict[str, Any] = {
        "providers": provider_settings(fake, **overrides),
        "media": {"allowed_hosts": [fake.origin], **(media or {})},
    }
    config = parse_config(raw)
    return Providers(config.providers, config.media)


def request(model: str, output: type[BaseModel] = Pitch, **kwargs: Any) -> TextRequest:
    return TextRequest(
        system="You write pitches.",
        prompt="Pitch heat pumps.",
        output=output,
        model=model,
        subject="heat pumps",
        **kwargs,
    )


ENDPOINT = {"anthropic": "messages", "openai": "chat"}
MODEL = {"anthropic": "claude-sonnet-5-5", "openai": "gpt-5.5"}
GOOD = {"headline": "Warm homes, small bills", "score": 80, "tags": ["energy", "home"]}
