"""``[log] level = "debug"`` does what docs/configuration.md says: the AI SDKs' and their HTTP
client's debug lines are written (each request, each response), keys masked, while the other
libraries stay at info; at ``info`` none of the SDKs' debug lines are."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from alchemy.logs import DEBUG_LIBRARIES, configure_logging, flush_logs, register_secrets
from alchemy.providers.registry import Providers
from alchemy.providers.structured import generate_structured
from tests.fakes.ai_server import FakeAI, Reply
from tests.fakes.fixtures import ANTHROPIC_KEY, OPENAI_KEY
from tests.providers.support import ENDPOINT, GOOD, MODEL, request


@pytest.fixture
def logged() -> Iterator[tuple[io.BytesIO, Any]]:
    stream = io.BytesIO()

    def configure(level: str) -> io.BytesIO:
        register_secrets([ANTHROPIC_KEY, OPENAI_KEY])
        configure_logging(level=level, fmt="json", stream=stream)
        return stream

    yield stream, configure
    register_secrets(())
    configure_logging(level="info", fmt="json")


def sdk_lines(stream: io.BytesIO) -> list[dict[str, Any]]:
    flush_logs()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in lines if line.get("level") == "debug"]


@pytest.mark.parametrize("level", ["debug", "info"])
async def test_debug_opens_the_sdks_debug_lines_with_keys_masked(
    level: str,
    fake_ai: FakeAI,
    providers: Providers,
    name: str,
    logged: tuple[io.BytesIO, Any],
) -> None:
    stream = logged[1](level)
    fake_ai.script(ENDPOINT[name], Reply.good(GOOD))
    await generate_structured(providers.text(name), request(MODEL[name]))
    debug = sdk_lines(stream)
    text = stream.getvalue().decode()
    assert ANTHROPIC_KEY not in text
    assert OPENAI_KEY not in text
    if level == "info":
        assert debug == []
        return
    events = [line["event"] for line in debug]
    assert any(event.startswith("HTTP Response: POST") for event in events), events
    assert logging.getLogger("asyncio").getEffectiveLevel() == logging.INFO
    assert logging.getLogger("redis").getEffectiveLevel() == logging.INFO
    for library in DEBUG_LIBRARIES:
        assert logging.getLogger(library).getEffectiveLevel() == logging.DEBUG
