"""What the ledger needs from providers: ``send`` returns every reply the API answered
(and billed), with its usage and request id, the failure of an unusable one alongside;
the ledger's call id goes out as ``X-Alchemy-Call``; replies are cleaned of what
PostgreSQL refuses."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from alchemy.errors import RetryableError
from alchemy.providers.base import (
    CALL_HEADER,
    ImageRequest,
    OutputInvalidError,
    ProviderRefusedError,
)
from alchemy.providers.registry import Providers
from alchemy.providers.structured import generate_structured, parse_output
from tests.fakes.ai_server import FakeAI, Reply, png_bytes
from tests.providers.support import ENDPOINT, GOOD, MODEL, Pitch, providers_for, request


async def test_send_carries_the_call_id_and_returns_usage_and_request_id(
    fake_ai: FakeAI, providers: Providers, name: str
) -> None:
    fake_ai.script(ENDPOINT[name], Reply.good(GOOD))
    sent = replace(request(MODEL[name]), call_id="0b6c9e1e-0000-4000-8000-000000000001")
    result = await providers.text(name).send(sent)
    assert result.failure is None
    assert result.usage.input_tokens == 100
    assert result.request_id
    assert result.request_id.startswith("req_")
    assert fake_ai.call_ids() == ["0b6c9e1e-0000-4000-8000-000000000001"]
    assert CALL_HEADER == "X-Alchemy-Call"


async def test_no_call_id_no_header(fake_ai: FakeAI, providers: Providers, name: str) -> None:
    await providers.text(name).send(request(MODEL[name]))
    assert fake_ai.call_ids() == [""]


async def test_a_refusal_is_a_paid_reply_with_its_failure(
    fake_ai: FakeAI, providers: Providers, name: str
) -> None:
    fake_ai.script(ENDPOINT[name], Reply.refusal("No."))
    result = await providers.text(name).send(request(MODEL[name]))
    assert isinstance(result.failure, ProviderRefusedError)
    assert result.usage.input_tokens == 100  # billed all the same
    fake_ai.script(ENDPOINT[name], Reply.refusal("No."))
    with pytest.raises(ProviderRefusedError):
        await providers.text(name).generate(request(MODEL[name]))


async def test_a_cut_off_reply_is_a_paid_reply_with_its_failure(
    fake_ai: FakeAI, providers: Providers
) -> None:
    fake_ai.script("messages", Reply.text('{"headline": "a', stop_reason="max_tokens"))
    result = await providers.text("anthropic").send(request(MODEL["anthropic"]))
    assert isinstance(result.failure, OutputInvalidError)
    assert result.usage.output_tokens > 0


async def test_an_unreadable_image_is_a_paid_reply_with_its_failure(fake_ai: FakeAI) -> None:
    providers = providers_for(fake_ai)
    fake_ai.script("images", Reply.image_b64(b"not an image"), Reply.image_b64(png_bytes()))
    try:
        images = providers.images()
        bad = await images.send(ImageRequest("x", "gpt-image-1.5", call_id="c-1"))
        good = await images.send(ImageRequest("y", "gpt-image-1.5", call_id="c-2"))
    finally:
        await providers.aclose()
    assert isinstance(bad.failure, RetryableError)
    assert (bad.images, bad.usage.output_tokens, bad.data) == (1, 1056, b"")
    assert good.failure is None
    assert (good.images, good.usage.input_tokens, good.mime_type) == (1, 50, "image/png")
    assert fake_ai.call_ids() == ["c-1", "c-2"]


async def test_a_reply_holding_nul_is_stored_clean(fake_ai: FakeAI, providers: Providers) -> None:
    fake_ai.script("messages", Reply.good({**GOOD, "headline": "Warm\u0000 homes"}))
    result = await generate_structured(providers.text("anthropic"), request(MODEL["anthropic"]))
    assert result.value.headline == "Warm homes"
    assert fake_ai.count("messages") == 1


def test_nan_or_infinity_in_a_reply_is_not_valid_json() -> None:
    for text in ('{"headline": "a", "score": NaN, "tags": []}', '{"score": Infinity}'):
        with pytest.raises(ValueError, match="not valid JSON"):
            parse_output(Pitch, text)
    lone = parse_output(Pitch, '{"headline": "a\\ud800b", "score": 1, "tags": []}')
    assert lone.headline == "a\ufffdb"


def test_a_worker_that_calls_no_provider_never_imports_the_sdks() -> None:
    """The services (and their paid-work machinery) load no SDK: a worker of no-op or
    engine-only queues stays small (bench: peak RSS)."""
    code = (
        "import sys, alchemy.services, alchemy.process, alchemy.handlers.content;"
        " print(sorted(m for m in ('anthropic', 'openai') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
