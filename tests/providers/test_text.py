"""Text generation through the real SDKs against the fake: request shape, structured
output with one repair, refusals, and every error kind mapped into the engine's tree."""

from __future__ import annotations

import json

import pytest

from alchemy.errors import PermanentError, ProviderPausedError, RateLimitedError, RetryableError
from alchemy.providers.base import OutputInvalidError, ProviderRefusedError
from alchemy.providers.errors import DEFAULT_RETRY_AFTER
from alchemy.providers.registry import Providers
from alchemy.providers.structured import generate_structured
from tests.fakes.ai_server import FakeAI, Reply
from tests.fakes.fixtures import ANTHROPIC_KEY, OPENAI_KEY
from tests.providers.support import ENDPOINT, GOOD, MODEL, Pitch, providers_for, request


async def generate(providers: Providers, name: str) -> Pitch:
    result = await generate_structured(providers.text(name), request(MODEL[name]))
    value: Pitch = result.value
    return value


async def test_good_structured_reply(fake_ai: FakeAI, providers: Providers, name: str) -> None:
    fake_ai.script(ENDPOINT[name], Reply.good(GOOD))
    result = await generate_structured(providers.text(name), request(MODEL[name]))
    assert result.value == Pitch(**GOOD)
    assert (result.provider, result.model, result.repaired) == (name, MODEL[name], False)
    assert result.usage.input_tokens == 100
    [call] = fake_ai.calls
    assert (
        call.headers["Authorization"]
        == f"Bearer {ANTHROPIC_KEY if name == 'anthropic' else OPENAI_KEY}"
    )
    assert call.headers["x-stainless-retry-count"] == "0"
    body = call.body
    assert body["model"] == MODEL[name]
    if name == "anthropic":
        assert call.headers["anthropic-version"]
        assert body["system"] == "You write pitches."
        assert body["messages"] == [{"role": "user", "content": "Pitch heat pumps."}]
        schema = body["output_config"]["format"]["schema"]
        assert body["max_tokens"] == 4096
    else:
        assert body["messages"][0] == {"role": "system", "content": "You write pitches."}
        schema = body["response_format"]["json_schema"]["schema"]
        assert body["response_format"]["json_schema"]["strict"] is True
        assert body["max_completion_tokens"] == 4096
    assert schema["required"] == ["headline", "score", "tags"]
    assert schema["additionalProperties"] is False
    assert "minimum: 0" in schema["properties"]["score"]["description"]


async def test_malformed_json_gets_one_repair(
    fake_ai: FakeAI, providers: Providers, name: str
) -> None:
    fake_ai.script(ENDPOINT[name], Reply.text('{"headline": "cut off'), Reply.good(GOOD))
    result = await generate_structured(providers.text(name), request(MODEL[name]))
    assert result.value == Pitch(**GOOD)
    assert result.repaired is True
    assert result.usage.input_tokens == 200  # both rounds counted
    second = fake_ai.bodies(ENDPOINT[name])[1]["messages"]
    assert second[-2] == {"role": "assistant", "content": '{"headline": "cut off'}
    assert second[-1]["role"] == "user"
    assert "not valid JSON" in second[-1]["content"]


async def test_invalid_twice_is_permanent_and_keeps_the_raw_text(
    fake_ai: FakeAI, providers: Providers, name: str
) -> None:
    bad = json.dumps({"headline": "", "score": 140, "tags": []})
    fake_ai.script(ENDPOINT[name], Reply.text("not json at all"), Reply.text(bad))
    with pytest.raises(OutputInvalidError) as caught:
        await generate(providers, name)
    assert caught.value.raw_text == bad
    assert "score" in str(caught.value)
    assert "headline" in str(caught.value)
    assert isinstance(caught.value, PermanentError)
    assert fake_ai.count(ENDPOINT[name]) == 2


async def test_a_fenced_reply_is_accepted(fake_ai: FakeAI, providers: Providers) -> None:
    fake_ai.script("messages", Reply.text(f"```json\n{json.dumps(GOOD)}\n```"))
    assert await generate(providers, "anthropic") == Pitch(**GOOD)


async def test_refusal_is_permanent(fake_ai: FakeAI, providers: Providers, name: str) -> None:
    fake_ai.script(ENDPOINT[name], Reply.refusal("That would be harmful."))
    with pytest.raises(ProviderRefusedError, match="refused: That would be harmful"):
        await generate(providers, name)
    assert fake_ai.count(ENDPOINT[name]) == 1  # no repair round for a refusal


async def test_cut_off_reply_is_permanent(fake_ai: FakeAI, providers: Providers) -> None:
    fake_ai.script("messages", Reply.text('{"headline": "a', stop_reason="max_tokens"))
    with pytest.raises(OutputInvalidError, match="max_tokens") as caught:
        await generate(providers, "anthropic")
    assert caught.value.raw_text == '{"headline": "a'


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after-ms": "2500"}, 2.5),
        ({}, DEFAULT_RETRY_AFTER),
    ],
)
async def test_429_is_rate_limited_with_the_servers_retry_after(
    fake_ai: FakeAI,
    providers: Providers,
    name: str,
    headers: dict[str, str],
    expected: float,
) -> None:
    fake_ai.script(
        ENDPOINT[name],
        Reply.error(
            429, "rate_limit_error", "slow down", code="rate_limit_exceeded", headers=headers
        ),
    )
    with pytest.raises(RateLimitedError) as caught:
        await generate(providers, name)
    assert caught.value.retry_after == expected
    assert "429" in str(caught.value)
    assert "slow down" in str(caught.value)
    assert fake_ai.count(ENDPOINT[name]) == 1  # max_retries=0: the queue pauses instead


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(529, "overloaded_error"), (500, "api_error"), (503, "api_error"), (408, "timeout")],
)
async def test_server_errors_are_retryable(
    fake_ai: FakeAI, providers: Providers, name: str, status: int, error_type: str
) -> None:
    fake_ai.script(ENDPOINT[name], Reply.error(status, error_type, "try later"))
    with pytest.raises(RetryableError) as caught:
        await generate(providers, name)
    assert not isinstance(caught.value, RateLimitedError)
    assert str(status) in str(caught.value)
    assert fake_ai.count(ENDPOINT[name]) == 1


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
    ],
)
async def test_client_errors_are_permanent(
    fake_ai: FakeAI, providers: Providers, name: str, status: int, error_type: str
) -> None:
    fake_ai.script(ENDPOINT[name], Reply.error(status, error_type, "no good"))
    with pytest.raises(PermanentError) as caught:
        await generate(providers, name)
    assert str(caught.value) == f"{name} {status} {error_type}: no good"


async def test_error_messages_never_carry_the_key(
    fake_ai: FakeAI, providers: Providers, name: str
) -> None:
    key = ANTHROPIC_KEY if name == "anthropic" else OPENAI_KEY
    fake_ai.script(
        ENDPOINT[name], Reply.error(401, "authentication_error", f"invalid api key {key}")
    )
    with pytest.raises(PermanentError) as caught:
        await generate(providers, name)
    assert key not in str(caught.value)
    assert "invalid api key ***" in str(caught.value)


async def test_the_providers_own_spend_limit_pauses_the_provider(
    fake_ai: FakeAI, providers: Providers, name: str
) -> None:
    """OpenAI's insufficient_quota and Anthropic's spend-limit refusal are neither a rate
    limit nor a permanent failure: the provider is paused (issue 13)."""
    fake_ai.script(ENDPOINT[name], Reply.spend_limit(name))
    with pytest.raises(ProviderPausedError, match="spend limit") as caught:
        await generate(providers, name)
    assert caught.value.dependency == f"provider:{name}"
    assert caught.value.provider == name


# Anthropic's two refusals for money, word for word as its API users have posted them
# (public issue threads of anthropics/claude-code and anthropics/claude-quickstarts).
ANTHROPIC_MONEY_REFUSALS = [
    "You have reached your specified API usage limits. You will regain access on 2026-04-01"
    " at 00:00 UTC.",
    "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing"
    " to upgrade or purchase credits.",
]


@pytest.mark.parametrize("message", ANTHROPIC_MONEY_REFUSALS)
async def test_anthropics_reported_spend_limit_wordings_pause_the_provider(
    fake_ai: FakeAI, providers: Providers, message: str
) -> None:
    fake_ai.script(ENDPOINT["anthropic"], Reply.error(400, "invalid_request_error", message))
    with pytest.raises(ProviderPausedError, match="spend limit"):
        await generate(providers, "anthropic")


async def test_slow_reply_past_the_timeout_is_retryable(fake_ai: FakeAI, name: str) -> None:
    providers = providers_for(fake_ai, timeout=0.3)
    fake_ai.script(ENDPOINT[name], Reply.slow(0.8))
    try:
        with pytest.raises(RetryableError, match="timed out"):
            await generate(providers, name)
    finally:
        await providers.aclose()


async def test_connection_refused_is_retryable(fake_ai: FakeAI, name: str) -> None:
    providers = providers_for(fake_ai)
    await fake_ai.stop()
    try:
        with pytest.raises(RetryableError, match="connection failed"):
            await generate(providers, name)
    finally:
        await providers.aclose()


async def test_sdk_retries_are_bounded_by_max_retries(fake_ai: FakeAI, name: str) -> None:
    providers = providers_for(fake_ai, max_retries=1)
    quick = {"retry-after-ms": "10"}
    fake_ai.script(
        ENDPOINT[name],
        Reply.error(529, "overloaded_error", "busy", headers=quick),
        Reply.error(529, "overloaded_error", "busy", headers=quick),
        Reply.good(GOOD),
    )
    try:
        with pytest.raises(RetryableError):
            await generate(providers, name)
        assert [c.headers["x-stainless-retry-count"] for c in fake_ai.calls] == ["0", "1"]
        assert await generate(providers, name) == Pitch(**GOOD)  # the third answer
    finally:
        await providers.aclose()


async def test_a_reply_that_drifted_from_the_schema_fails_strict_validation(
    fake_ai: FakeAI, providers: Providers, name: str
) -> None:
    fake_ai.script(ENDPOINT[name], Reply.raw({"id": "x", "surprise": True}))
    with pytest.raises(PermanentError, match="did not match the SDK's schema"):
        await generate(providers, name)


async def test_a_provider_without_its_key_is_a_permanent_error(fake_ai: FakeAI) -> None:
    providers = providers_for(fake_ai, anthropic_api_key="", text_provider="openai")
    with pytest.raises(PermanentError, match="anthropic_api_key is not set"):
        providers.text("anthropic")
    await providers.aclose()
